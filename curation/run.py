"""Runs a job: the graph, then the passes after it, in one order: graph → clustering → captioning → stages → report.

Every verb that re-runs a pass goes through here: `curation run` and `pipelines/pretrain_mix.py` (`run_pipeline`),
`curation caption` (`caption_output`), `curation decide` (`decide_output`) and `curation report` (`report_pass`).
Each pass reads and rewrites `<output>/samples/` part files itself (`curation.manifest.rewrite_part`).
"""

from __future__ import annotations

import dataclasses
import logging
import os
import platform
import subprocess
import time
from importlib import metadata
from pathlib import Path
from typing import Any

from curation import outfs
from curation.config import PipelineConfig
from curation.graph import build_dataset, conform, plan
from curation.ingest.sources import list_sources
from curation.manifest import (SampleWriter, counts, finished_sources, read_manifest, sample_parts,
                               write_json_atomic)
from curation.progress import Progress

log = logging.getLogger(__name__)

TRACKED_PACKAGES = ("ray", "pyarrow", "torch", "av", "decord", "opencv-python-headless", "scenedetect",
                    "rapidocr-onnxruntime", "nudenet", "open_clip_torch", "transformers", "scikit-learn")


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
    from curation.stages import write_stages

    output = os.fspath(output)  # a local folder or an object-store URL (curation/outfs.py)
    outfs.makedirs(output)
    t0 = time.time()
    graph = plan(cfg)
    model_info = check_models(graph.models)
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
    clustering = cluster_pass(output, cfg, refit=resume["refit_centroids"])
    t_cluster = time.time()
    captioning = caption_pass(output, cfg)
    t_caption = time.time()
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
        t_report = time.time()
        report_pass(output, summary)
        summary["timings_s"]["report"] = round(time.time() - t_report, 3)
        write_json_atomic(summary, outfs.join(output, "run.json"))
    return summary


def check_models(keys: list[str]) -> dict[str, Any]:
    """Resolve every model the run needs before touching data (docs/ARCHITECTURE.md, "Models"); fail at once listing
    what is missing."""
    if not keys:
        return {}
    from curation.models import describe, require

    require(keys)
    return describe(keys)


def caption_pass(output: str, cfg: PipelineConfig) -> dict[str, Any]:
    """Caption the kept rows (Qwen2-VL + OCR text), a Ray pass after clustering; off: say so in run.json."""
    if not cfg.captioning.enabled:
        return {"enabled": False, "note": "captioning is off (captioning.enabled); `caption` stays null"}
    from captioner.caption_pass import caption_manifest

    return caption_manifest(output, cfg.captioning, cfg.limits)


def cluster_pass(output: str, cfg: PipelineConfig, refit: bool = False) -> dict[str, Any]:
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


def report_pass(output: str, run: dict[str, Any] | None = None, max_examples: int | None = None) -> str | None:
    """Write report.html from what is on disk, last. With `run` (the run.json being written), a report that cannot
    be made is recorded there and does not undo the pass; without it (`curation report`), the error propagates."""
    from curation.report import build_report

    kwargs = {} if max_examples is None else {"max_examples": max_examples}
    if run is None:
        return str(build_report(output, **kwargs))
    try:
        run["report"] = str(build_report(output, **kwargs))
    except Exception as exc:  # noqa: BLE001 - a report that cannot be made does not undo the run
        log.warning("report.html not written: %s: %s", type(exc).__name__, exc)
        run["report_error"] = f"{type(exc).__name__}: {exc}"
    return run.get("report")


def caption_output(output_dir: str | os.PathLike, cfg: PipelineConfig) -> dict[str, Any]:
    """`curation caption`: caption an output written earlier (with captioning off, or interrupted), then rewrite
    its stage mixes so they carry the captions, record the pass in run.json and rewrite report.html."""
    import json

    from captioner.caption_pass import caption_manifest
    from curation.stages import write_stages

    out = os.fspath(output_dir)
    if not sample_parts(out):
        raise FileNotFoundError(f"{outfs.join(out, 'samples')} has no part files: nothing to caption")
    summary = caption_manifest(out, dataclasses.replace(cfg.captioning, enabled=True), cfg.limits)
    stages = write_stages(out, cfg.stages)
    run_path = outfs.join(out, "run.json")
    if outfs.is_file(run_path):
        run = json.loads(outfs.read_text(run_path))
        run["captioning"] = summary
        run["stages"] = stages
        write_json_atomic(run, run_path)
        if cfg.report:
            report_pass(out)
    return summary


def decide_output(output: str | os.PathLike, cfg: PipelineConfig, config_path: str | None = None) -> dict[str, Any]:
    """`curation decide`: re-decide every stored row of an output with `cfg`'s rules, re-run clustering's duplicate
    marking (when enabled), rewrite the stage mixes, run.json and report.html. Raises ResumeError when the output was
    scored with another scoring config, FileNotFoundError when it holds no rows. Clustering needs Ray (started by the
    caller)."""
    from curation.resume import check_resume, fingerprints, read_run, redecide_manifest
    from curation.stages import write_stages

    output = os.fspath(output)
    if not sample_parts(output):
        raise FileNotFoundError(f"{output}/samples/ has no part files: not a pipeline output, or nothing written yet")
    resume = check_resume(output, cfg)
    t0 = time.time()
    decided = redecide_manifest(output, cfg, force=True)
    t_decide = time.time()
    clustering = cluster_pass(output, cfg, refit=resume["refit_centroids"])
    t_cluster = time.time()
    stages = write_stages(output, cfg.stages)
    t_stages = time.time()
    run = read_run(output) or {"output": str(output)}
    run.update(config=cfg.to_dict(), config_path=config_path, fingerprints=fingerprints(cfg), counts=counts(output),
               stages=stages, decide_pass={**decided, "by": "curation decide"})
    if cfg.clustering.enabled:
        run["clustering"] = clustering
    if cfg.captioning.enabled:
        missing = _uncaptioned_kept(output)
        if missing:
            cap = dict(run.get("captioning") or {})
            cap["uncaptioned_kept_rows"] = missing
            cap["note"] = (f"{missing} kept rows have no caption (newly kept by the new thresholds): run "
                           f"`curation caption {output} --config <config>`")
            run["captioning"] = cap
    run["timings_s"] = {**(run.get("timings_s") or {}), "decide": round(t_decide - t0, 3),
                        "clustering": round(t_cluster - t_decide, 3), "stages": round(t_stages - t_cluster, 3)}
    write_json_atomic(run, outfs.join(output, "run.json"))
    if cfg.report:
        report_pass(output, run)
        write_json_atomic(run, outfs.join(output, "run.json"))
    return run


def _uncaptioned_kept(output: str) -> int:
    from curation.manifest import SAMPLES

    t = read_manifest(outfs.join(output, SAMPLES), ["status", "caption"], only_existing=True)
    if t.num_rows == 0 or "caption" not in t.column_names:
        return 0
    return sum(1 for s, c in zip(t.column("status").to_pylist(), t.column("caption").to_pylist())
               if s == "kept" and c is None)
