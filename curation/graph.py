"""The curation graph on Ray Data: sources → probe+split → decode once → operators → decide → manifests."""

from __future__ import annotations

import logging
import os
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

from curation import outfs
from curation.catalog import build_operator, config_models
from curation.config import OperatorSpec, PipelineConfig
from curation.decide import decide_batch
from curation.ingest import attach_views, drop_views, source_to_rows
from curation.manifest import SampleWriter, counts, finished_sources, write_json_atomic
from curation.operator import Operator
from curation.progress import Progress
from curation.schema import FRAME_VIEW_COLUMNS, base_schema, manifest_schema
from curation.ingest.sources import list_sources

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


# Every stage takes Arrow batches and converts them itself (`numpy_batch`): Ray's numpy conversion turns a nullable
# integer column into float64 with NaN, which silently drops the low bits of 64-bit values (`phash`).
STAGE_BATCH_FORMAT = "pyarrow"


def numpy_batch(table: pa.Table) -> dict[str, np.ndarray]:
    """An Arrow batch as the numpy columns operators see, nullable integers kept exact: an integer column with
    nulls becomes an object array of Python ints and None (not float64 with NaN, as Ray and numpy would make it)."""
    from ray.data.block import BlockAccessor

    exact = [f.name for f in table.schema if pa.types.is_integer(f.type) and table.column(f.name).null_count]
    rest = [n for n in table.column_names if n not in exact]
    out = BlockAccessor.for_block(table.select(rest)).to_numpy(rest) if rest else {}
    for name in exact:
        col = np.empty(table.num_rows, dtype=object)
        col[:] = table.column(name).to_pylist()
        out[name] = col
    return {n: out[n] for n in table.column_names}


class _Stage:
    """Post-processing shared by every stage: drop the frame views once no later operator needs them, and apply
    `decide` in the last stage (no extra Ray stage, no extra hop through the object store)."""

    drop_views: bool = False
    decide_cfg: PipelineConfig | None = None
    schema: pa.Schema | None = None

    def _post(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        if self.drop_views or self.decide_cfg is not None:
            batch = drop_views(batch)
        if self.decide_cfg is not None:
            batch = decide_batch(batch, self.decide_cfg.decide)
        return restore_nulls(batch, self.schema) if self.schema is not None else batch


def restore_nulls(batch: dict[str, np.ndarray], schema: pa.Schema) -> dict[str, np.ndarray]:
    """Undo Ray's numpy conversion of nulls: a nullable int, string or list column comes back as floats with NaN
    (all-null as all-NaN). Left so, one block's `error` is float and another's string, and Ray cannot merge them."""
    out = dict(batch)
    for f in schema:
        col = batch.get(f.name)
        if col is None or pa.types.is_floating(f.type) or not isinstance(col, np.ndarray) or col.dtype.kind not in "fO":
            continue
        # Object columns too: an operator that copied a NaN-filled column into an object array keeps the NaNs.
        fixed = np.empty(len(col), dtype=object)
        for i, v in enumerate(col):
            if isinstance(v, (float, np.floating)):
                fixed[i] = None if np.isnan(v) else (int(v) if pa.types.is_integer(f.type) else v)
            else:
                fixed[i] = v
        out[f.name] = fixed
    return out


class _TaskChain(_Stage):
    """Consecutive stateless operators (and, first in the graph, the decode) run back to back in one Ray task, so
    frame views go from the decoder to every CPU scorer without crossing the object store."""

    def __init__(self, ops: list[Operator], cfg: PipelineConfig, decode: bool, drop: bool, decide: bool,
                 schema: pa.Schema) -> None:
        self.ops, self.cfg, self.decode, self.schema = ops, cfg, decode, schema
        self.drop_views = drop
        self.decide_cfg = cfg if decide else None

    def __call__(self, table: pa.Table) -> dict[str, np.ndarray]:
        batch = numpy_batch(table)
        if self.decode:
            batch = attach_views(batch, self.cfg)
        for op in self.ops:
            batch = op(batch)
        return self._post(batch)


class _OperatorActor(_Stage):
    """Ray actor wrapper: builds the operator and loads its models once, in the actor, then serves batches."""

    def __init__(self, spec: OperatorSpec, cfg: PipelineConfig, drop: bool, decide: bool,
                 schema: pa.Schema) -> None:
        self.schema = schema
        self.op = build_operator(spec)
        self.op.setup()
        self.op._ready = True
        self.drop_views = drop
        self.decide_cfg = cfg if decide else None

    def __call__(self, table: pa.Table) -> dict[str, np.ndarray]:
        return self._post(self.op(numpy_batch(table)))


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
        extra.update(op.produces)
    models, _ = config_models(cfg, [op for _, op in ops])  # the same list as `curation models check`
    return GraphPlan(operators=ops, schema=manifest_schema(extra), models=sorted(models))


def build_dataset(uris: list[str], cfg: PipelineConfig, graph: GraphPlan):
    """The lazy Ray Data graph for a list of source URIs."""
    import ray.data

    from ray.data import ActorPoolStrategy

    _check_actor_reservations(graph)
    blocks = max(1, min(len(uris), 4096))
    ds = ray.data.from_items([{"source_uri": u} for u in uris], override_num_blocks=blocks)
    # One source per task: sources vary from one image to hours of video, so small tasks balance best.
    ds = ds.map_batches(_source_batch_to_rows, batch_size=1, batch_format="numpy", fn_kwargs={"cfg": cfg},
                        num_cpus=1)
    # Stages: runs of stateless operators become one task stage (the first one also decodes); each stateful
    # operator is its own actor pool. Fewer stages also keep Ray Data's per-operator CPU budgets whole: with one
    # stage per cheap operator, a 2-CPU node had budgets below one CPU per stage and stalled.
    groups: list[tuple[str, list[tuple[OperatorSpec, Operator]]]] = []
    for spec, op in graph.operators:
        if op.stateful or not groups or groups[-1][0] != "tasks":
            groups.append(("actor" if op.stateful else "tasks", [(spec, op)]))
        else:
            groups[-1][1].append((spec, op))
    if not groups or groups[0][0] != "tasks":
        groups.insert(0, ("tasks", []))  # the decode needs a task stage of its own
    view_cols = set(FRAME_VIEW_COLUMNS)
    last_view_user = max((gi for gi, (_, members) in enumerate(groups)
                          if any(view_cols & set(op.needs) for _, op in members)), default=0)
    for gi, (kind, members) in enumerate(groups):
        drop, decide = gi >= last_view_user, gi == len(groups) - 1
        if kind == "tasks":
            ops = [op for _, op in members]
            cpus = max([1.0 if gi == 0 else 0.25] + [op.resources.num_cpus for op in ops])
            batch = min([4 if gi == 0 else 64] + [op.batch_size for op in ops])
            chain = _TaskChain(ops, cfg, decode=(gi == 0), drop=drop, decide=decide, schema=graph.schema)
            ds = ds.map_batches(chain, batch_size=batch, batch_format=STAGE_BATCH_FORMAT, num_cpus=cpus)
        else:
            spec, op = members[0]
            ds = ds.map_batches(_OperatorActor, fn_constructor_kwargs={"spec": spec, "cfg": cfg, "drop": drop,
                                                                       "decide": decide, "schema": graph.schema},
                                compute=ActorPoolStrategy(min_size=1, max_size=spec.concurrency or 1),
                                batch_size=op.batch_size, batch_format=STAGE_BATCH_FORMAT, **op.resources.ray_args())
    return ds


def _check_actor_reservations(graph: GraphPlan) -> None:
    """Refuse a graph whose actor pools would hold every CPU: decode tasks could never run and it would hang."""
    import ray

    total = float(ray.cluster_resources().get("CPU", 0))
    held = sum(op.resources.num_cpus for _, op in graph.operators if op.stateful)
    task_cpus = max([1.0] + [op.resources.num_cpus for _, op in graph.operators if not op.stateful])
    if total and held + task_cpus > total:
        names = ", ".join(f"{s.name}={op.resources.num_cpus:g}" for s, op in graph.operators if op.stateful)
        raise RuntimeError(
            f"actor pools reserve {held:g} of the cluster's {total:g} CPUs ({names}), leaving less than the "
            f"{task_cpus:g} CPU a decode task needs: the run would never finish. Lower `num_cpus` of these "
            f"operators in the config or add CPUs."
        )


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


def run_pipeline(inputs: list[str], output: str | os.PathLike, cfg: PipelineConfig, limit: int | None = None,
                 config_path: str | None = None, progress_interval_s: float = 30.0,
                 recompute: bool = False) -> dict[str, Any]:
    """Run the whole graph over `inputs`, writing manifests under `output`; return the run summary (run.json).

    `progress_interval_s`: log sources done / total, rows/s and an ETA this often while the graph runs (0: never).
    Resuming: rows scored with another scoring config stop the run (`curation.resume.ResumeError`) unless
    `recompute`, which re-scores them; rows decided with other thresholds are re-decided from their scores."""
    from curation.resume import check_resume, fingerprints, part_metadata, redecide_manifest, remove_stale

    output = os.fspath(output)  # a local folder or an object-store URL (curation/outfs.py)
    outfs.makedirs(output)
    t0 = time.time()
    graph = plan(cfg)
    model_info = _check_models(graph.models)
    resume = check_resume(output, cfg, recompute=recompute)
    rows_removed = remove_stale(output, resume)

    listing = list_sources(inputs, cfg.image_extensions + cfg.video_extensions, limit=limit)
    done = finished_sources(output)
    todo = [u for u in listing.uris if u not in done]
    t_list = time.time()
    log.info("%d sources listed, %d already finished, %d to process", len(listing.uris), len(listing.uris) - len(todo),
             len(todo))

    writer = SampleWriter(output, graph.schema.with_metadata(part_metadata(cfg)), cfg.rows_per_file)
    stats = ""
    if todo:
        ds = build_dataset(todo, cfg, graph)
        rows_seen = 0
        with Progress(len(todo), progress_interval_s) as progress:
            for table in ds.iter_batches(batch_format="pyarrow", batch_size=None):
                writer.add_table(conform(table, graph.schema))
                rows_seen += table.num_rows
                progress.update(writer.sources_written, rows_seen)
        stats = ds.stats()
    incomplete = writer.close()
    t_graph = time.time()
    if incomplete:
        raise RuntimeError(f"internal error: sources with missing clips after the graph finished: {incomplete}")
    redecided = redecide_manifest(output, cfg)  # rows of earlier runs, when `decide:` changed since
    clustering = _cluster(output, cfg, refit=resume["refit_centroids"])
    t_cluster = time.time()
    captioning = _caption(output, cfg)
    t_caption = time.time()
    from curation.stages import write_stages

    stages = write_stages(output, cfg.stages)
    t_stages = time.time()

    summary: dict[str, Any] = {
        "name": cfg.name,
        "profile": cfg.profile,
        "inputs": inputs,
        "output": str(output),
        "config_path": config_path,
        "config": cfg.to_dict(),
        "fingerprints": fingerprints(cfg),
        "resume": {"previous_fingerprints": resume["previous_fingerprints"], "recompute": recompute,
                   "parts_removed_by_recompute": len(resume["stale_parts"]), "rows_removed_by_recompute": rows_removed,
                   "unverified_parts": resume["unverified_parts"], "centroids_refit": resume["refit_centroids"],
                   "redecide": redecided},
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
        "captioning": captioning,
        "stages": stages,
        "operator_notes": {spec.name: op.note for spec, op in graph.operators if getattr(op, "note", None)},
        "timings_s": {"listing": round(t_list - t0, 3), "graph": round(t_graph - t_list, 3),
                      "clustering": round(t_cluster - t_graph, 3), "captioning": round(t_caption - t_cluster, 3),
                      "stages": round(t_stages - t_caption, 3),
                      "total": round(time.time() - t0, 3)},
        "ray_data_stats": stats,
    }
    write_json_atomic(summary, outfs.join(output, "run.json"))
    if cfg.report:
        # Last, from what is on disk; a report that cannot be made does not undo the run.
        from curation.report import build_report

        t_report = time.time()
        try:
            summary["report"] = str(build_report(output))
        except Exception as exc:
            log.warning("report.html not written: %s: %s", type(exc).__name__, exc)
            summary["report_error"] = f"{type(exc).__name__}: {exc}"
        summary["timings_s"]["report"] = round(time.time() - t_report, 3)
        write_json_atomic(summary, outfs.join(output, "run.json"))
    return summary


def _check_models(keys: list[str]) -> dict[str, Any]:
    """Resolve every model the run needs before touching data (docs/ARCHITECTURE.md, "Models"); fail at once listing what is missing."""
    if not keys:
        return {}
    from curation.models import describe, require

    require(keys)
    return describe(keys)


def _caption(output: str, cfg: PipelineConfig) -> dict[str, Any]:
    """Caption the kept rows (Qwen2-VL + OCR text), a Ray pass after clustering; off: say so in run.json."""
    if not cfg.captioning.enabled:
        return {"enabled": False, "note": "captioning is off (captioning.enabled); `caption` stays null"}
    from captioner.manifest import caption_manifest

    return caption_manifest(output, cfg.captioning, cfg.limits)


def _cluster(output: str, cfg: PipelineConfig, refit: bool = False) -> dict[str, Any]:
    """Fit k-means on the written embeddings, assign every row and mark near-duplicates (a second Ray pass);
    `refit`: fit new centroids even if `centroids.npy` exists (its k, seed or sample size changed)."""
    c = cfg.clustering
    if not c.enabled:
        return {"enabled": False}
    from curation.clustering import cluster_manifest
    from curation.dedup import DedupConfig

    dedup = DedupConfig(cos_threshold=c.cos_threshold, hamming_threshold=c.hamming_threshold, use_phash=c.use_phash)
    return cluster_manifest(output, k=c.k, sample_size=c.sample_size, seed=c.seed, refit=c.refit or refit,
                            dedup=dedup, reject_duplicates=c.reject_duplicates)
