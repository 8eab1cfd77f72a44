"""The curation graph on Ray Data: sources → probe+split → decode once → operators → decide → manifests."""

from __future__ import annotations

import logging
import platform
import subprocess
import time
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from curation.catalog import build_operator
from curation.config import OperatorSpec, PipelineConfig
from curation.decide import decide_batch
from curation.ingest import attach_views, drop_views, source_to_rows
from curation.manifest import SampleWriter, counts, finished_sources, write_json_atomic
from curation.operator import Operator
from curation.schema import base_schema, manifest_schema
from curation.sources import list_sources

log = logging.getLogger(__name__)

TRACKED_PACKAGES = ("ray", "pyarrow", "torch", "av", "decord", "opencv-python-headless", "scenedetect",
                    "rapidocr-onnxruntime", "nudenet", "open_clip_torch", "transformers", "scikit-learn")


def _source_batch_to_rows(batch: dict[str, np.ndarray], cfg: PipelineConfig) -> pa.Table:
    # One source fans out to its clips. A typed Arrow table (not a list of dicts) keeps every block's schema
    # identical, even for blocks where a column happens to be all null.
    rows: list[dict] = []
    for uri in batch["source_uri"]:
        rows.extend(source_to_rows(str(uri), cfg))
    return pa.Table.from_pylist(rows, schema=base_schema())


class _OperatorActor:
    """Ray actor wrapper: builds the operator and loads its models once, in the actor, then serves batches."""

    def __init__(self, spec: OperatorSpec) -> None:
        self.op = build_operator(spec)
        self.op.setup()
        self.op._ready = True

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        return self.op(batch)


def _finalise(batch: dict[str, np.ndarray], cfg: PipelineConfig) -> dict[str, np.ndarray]:
    return decide_batch(drop_views(batch), cfg.decide)


@dataclass
class GraphPlan:
    """The operators of a run, built and validated, and the manifest schema they imply."""

    operators: list[tuple[OperatorSpec, Operator]]
    schema: pa.Schema
    models: list[str] = field(default_factory=list)


def plan(cfg: PipelineConfig) -> GraphPlan:
    """Build every configured operator (validating parameters) and the schema of the rows they produce."""
    ops = [(spec, build_operator(spec)) for spec in cfg.operators]
    extra: dict[str, pa.DataType] = {}
    for _, op in ops:
        for col, dtype in op.produces.items():
            if col not in getattr(op, "intermediate", ()):
                extra[col] = dtype
    models = sorted({m for _, op in ops for m in op.models})
    return GraphPlan(operators=ops, schema=manifest_schema(extra), models=models)


def build_dataset(uris: list[str], cfg: PipelineConfig, graph: GraphPlan):
    """The lazy Ray Data graph for a list of source URIs."""
    import ray.data

    blocks = max(1, min(len(uris), 4096))
    ds = ray.data.from_items([{"source_uri": u} for u in uris], override_num_blocks=blocks)
    # One source per task: sources vary from one image to hours of video, so small tasks balance best.
    ds = ds.map_batches(_source_batch_to_rows, batch_size=1, batch_format="numpy", fn_kwargs={"cfg": cfg},
                        num_cpus=1)
    ds = ds.map_batches(attach_views, batch_size=4, batch_format="numpy", fn_kwargs={"cfg": cfg}, num_cpus=1)
    for spec, op in graph.operators:
        args: dict[str, Any] = dict(batch_size=op.batch_size, batch_format="numpy", **op.resources.ray_args())
        if op.stateful:
            from ray.data import ActorPoolStrategy

            size = spec.concurrency or 1
            ds = ds.map_batches(_OperatorActor, fn_constructor_kwargs={"spec": spec},
                                compute=ActorPoolStrategy(min_size=1, max_size=size), **args)
        else:
            ds = ds.map_batches(op, **args)
    ds = ds.map_batches(_finalise, batch_format="numpy", fn_kwargs={"cfg": cfg}, num_cpus=0.25)
    return ds


def conform(table: pa.Table, schema: pa.Schema) -> pa.Table:
    """Select and cast a batch to the manifest schema; columns it lacks are null."""
    cols = []
    for f in schema:
        if f.name in table.column_names:
            col = table.column(f.name)
            if col.type != f.type or pa.types.is_floating(f.type):
                col = _cast_column(col, f.type)
            cols.append(col)
        else:
            cols.append(pa.nulls(table.num_rows, f.type))
    return pa.Table.from_arrays(cols, schema=schema)


def _cast_column(col: pa.ChunkedArray, target: pa.DataType) -> pa.ChunkedArray:
    # Ray's numpy batches carry nullable integers as floats with NaN, and an all-null column of any type as
    # floats: NaN means null on the way back to Arrow.
    if pa.types.is_floating(col.type) and pa.types.is_floating(target):
        return pc.if_else(pc.is_nan(col), pa.scalar(None, col.type), col).cast(target)
    if pa.types.is_floating(col.type) and not pa.types.is_floating(target):
        col = pc.if_else(pc.is_nan(col), pa.scalar(None, col.type), col)
        if col.null_count == len(col):
            return pa.chunked_array([pa.nulls(len(col), target)])
    if pa.types.is_null(col.type):
        return pa.chunked_array([pa.nulls(len(col), target)])
    return col.cast(target)


def versions() -> dict[str, str]:
    """Versions of the packages whose behaviour shapes the scores, and the code revision."""
    out = {"python": platform.python_version()}
    for pkg in TRACKED_PACKAGES:
        try:
            out[pkg] = metadata.version(pkg)
        except metadata.PackageNotFoundError:
            pass
    try:
        here = Path(__file__).resolve().parent
        out["git_commit"] = subprocess.run(["git", "rev-parse", "HEAD"], cwd=here, capture_output=True, text=True,
                                           timeout=5).stdout.strip() or "unknown"
    except (OSError, subprocess.SubprocessError):
        out["git_commit"] = "unknown"
    return out


def run_pipeline(inputs: list[str], output: str | Path, cfg: PipelineConfig, limit: int | None = None,
                 config_path: str | None = None) -> dict[str, Any]:
    """Run the whole graph over `inputs`, writing manifests under `output`; return the run summary (run.json)."""
    output = Path(output)
    output.mkdir(parents=True, exist_ok=True)
    t0 = time.time()
    graph = plan(cfg)
    model_info = _check_models(graph.models)

    listing = list_sources(inputs, cfg.image_extensions + cfg.video_extensions, limit=limit)
    done = finished_sources(output)
    todo = [u for u in listing.uris if u not in done]
    t_list = time.time()
    log.info("%d sources listed, %d already finished, %d to process", len(listing.uris), len(listing.uris) - len(todo),
             len(todo))

    writer = SampleWriter(output, graph.schema, cfg.rows_per_file)
    stats = ""
    if todo:
        ds = build_dataset(todo, cfg, graph)
        for table in ds.iter_batches(batch_format="pyarrow", batch_size=None):
            writer.add_table(conform(table, graph.schema))
        stats = ds.stats()
    incomplete = writer.close()
    t_graph = time.time()
    if incomplete:
        raise RuntimeError(f"internal error: sources with missing clips after the graph finished: {incomplete}")
    clustering = _cluster(output, cfg)
    t_cluster = time.time()

    summary: dict[str, Any] = {
        "name": cfg.name,
        "profile": cfg.profile,
        "inputs": inputs,
        "output": str(output),
        "config_path": config_path,
        "config": cfg.to_dict(),
        "versions": versions(),
        "models": model_info,
        "operators": [spec.name for spec in cfg.operators],
        "sources_listed": len(listing.uris),
        "sources_skipped_as_finished": len(listing.uris) - len(todo),
        "sources_processed": len(todo),
        "non_media_files_skipped": len(listing.skipped),
        "non_media_examples": dict(list(listing.skipped.items())[:20]),
        "rows_written_this_run": writer.rows_written,
        "files_written_this_run": writer.files,
        "counts": counts(output),
        "clustering": clustering,
        "operator_notes": {spec.name: op.note for spec, op in graph.operators if getattr(op, "note", None)},
        "timings_s": {"listing": round(t_list - t0, 3), "graph": round(t_graph - t_list, 3),
                      "clustering": round(t_cluster - t_graph, 3), "total": round(time.time() - t0, 3)},
        "ray_data_stats": stats,
    }
    write_json_atomic(summary, output / "run.json")
    return summary


def _check_models(keys: list[str]) -> dict[str, Any]:
    """Resolve every model the run needs before touching data (DESIGN.md §7); fail at once listing what is missing."""
    if not keys:
        return {}
    from curation.models import describe, require

    require(keys)
    return describe(keys)


def _cluster(output: Path, cfg: PipelineConfig) -> dict[str, Any]:
    """Fit k-means on the written embeddings, assign every row and mark near-duplicates (a second Ray pass)."""
    c = cfg.clustering
    if not c.enabled:
        return {"enabled": False}
    from curation.clustering import cluster_manifest
    from curation.dedup import DedupConfig

    dedup = DedupConfig(cos_threshold=c.cos_threshold, hamming_threshold=c.hamming_threshold, use_phash=c.use_phash)
    return cluster_manifest(output, k=c.k, sample_size=c.sample_size, seed=c.seed, refit=c.refit, dedup=dedup,
                            reject_duplicates=c.reject_duplicates)
