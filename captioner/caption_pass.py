"""The captioning pass: after clustering, caption the kept rows of `<output>/samples/` and fill `caption` and
`caption_source` in the part files in place. `curation.run` orders it among the passes (docs/ARCHITECTURE.md,
"The flow").

A Ray Data pass, like clustering's: read the parts (with their paths) → keep rows with `status == kept` and no
caption yet (all kept rows with `recaption`) → decode each row's frames again from its source (CPU tasks, the
isolated decoder helper: time limit, memory cap) → caption in batches on GPU actors (`captioner.engines`, model
loaded once per actor) → group by part file and rewrite each part once (temp file, then rename), leaving every other
column as it was. Rejected and failed rows are not captioned.

A row that cannot be decoded or captioned keeps a null caption; the summary in run.json counts those and gives the
first error messages. A re-run captions only what is still missing, so an interrupted pass resumes.
"""

from __future__ import annotations

import logging
import os
import time
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa

from curation import outfs
from curation.config import CaptionConfig, LimitsConfig
from curation.manifest import sample_parts

log = logging.getLogger(__name__)

_READ = ("sample_id", "source_uri", "media_type", "start_frame", "end_frame", "fps", "width", "height", "rotation",
         "ocr_text", "status", "caption")
_MAX_ERRORS = 5


def _todo(parts: list[str], recaption: bool) -> int:
    n = 0
    for p in parts:
        t = outfs.read_parquet(p, columns=[c for c in ("status", "caption") if c in outfs.parquet_schema(p).names])
        kept = np.array(t.column("status").to_pylist(), dtype=object) == "kept"
        if not recaption and "caption" in t.column_names:
            kept &= np.array([c is None for c in t.column("caption").to_pylist()])
        n += int(kept.sum())
    return n


def _decode(batch: pd.DataFrame, cfg: CaptionConfig, limits: LimitsConfig) -> pd.DataFrame:
    """Ray map_batches body (CPU task): the captioner's frames of each row, or the decode error."""
    from curation.ingest import row_frames

    frames, errors = [], []
    for row in batch.to_dict("records"):
        try:
            frames.append(row_frames(row, cfg.num_frames, cfg.short_side, limits.max_pixels, cfg.decode_timeout_s))
            errors.append(None)
        except Exception as exc:  # noqa: BLE001 - one bad row must not sink the pass
            frames.append(np.zeros((0, 1, 1, 3), np.uint8))  # an empty view, not None: the column stays a tensor
            errors.append(f"decode: {type(exc).__name__}: {exc}")
    out = batch[["path", "sample_id", "media_type", "ocr_text"]].copy()
    out["frames"] = frames
    out["caption_error"] = errors
    return out


class _Caption:
    """Ray map_batches body (GPU actor): captions for a batch of decoded rows."""

    def __init__(self, cfg: CaptionConfig):
        from captioner.engines import load_engine

        self.captioner = load_engine(cfg)  # the configured engine (captioner.engines), loaded once per actor

    def __call__(self, batch: pd.DataFrame) -> pd.DataFrame:
        out = batch[["path", "sample_id"]].copy()
        captions: list[str | None] = [None] * len(batch)
        sources: list[str | None] = [None] * len(batch)
        errors = list(batch["caption_error"])
        ready = [i for i in range(len(batch)) if errors[i] is None]
        items = [{"frames": batch["frames"].iloc[i], "media_type": batch["media_type"].iloc[i],
                  "ocr_text": batch["ocr_text"].iloc[i]} for i in ready]
        try:
            results = self.captioner.caption(items)
        except Exception as exc:  # noqa: BLE001 - the batch's rows keep null captions, with the reason
            results = [(None, None)] * len(ready)
            for i in ready:
                errors[i] = f"caption: {type(exc).__name__}: {exc}"
        for i, (cap, src) in zip(ready, results):
            captions[i], sources[i] = cap, src
            if cap is None and errors[i] is None:
                errors[i] = "caption: the model's answer was empty after cleaning"
        out["caption"], out["caption_source"], out["caption_error"] = captions, sources, errors
        return out


def _write_part(batch: pd.DataFrame, like: str = "") -> pd.DataFrame:
    """Ray map_groups body: fill one part file's `caption` / `caption_source` for the captioned rows."""
    from curation.manifest import rewrite_part, set_column

    path = outfs.location_of(str(batch["path"].iloc[0]), like)
    got = {s: (c, src) for s, c, src in zip(batch["sample_id"], batch["caption"], batch["caption_source"])
           if isinstance(c, str)}

    def fill(table: pa.Table) -> pa.Table:
        ids = table.column("sample_id").to_pylist()
        old_c = table.column("caption").to_pylist() if "caption" in table.column_names else [None] * len(ids)
        old_s = (table.column("caption_source").to_pylist() if "caption_source" in table.column_names
                 else [None] * len(ids))
        caps = [got[s][0] if s in got else c for s, c in zip(ids, old_c)]
        srcs = [got[s][1] if s in got else c for s, c in zip(ids, old_s)]
        table = set_column(table, "caption", pa.array(caps, pa.string()))
        return set_column(table, "caption_source", pa.array(srcs, pa.string()))

    if got:
        rewrite_part(path, fill)
    errors = [e for e in batch["caption_error"] if isinstance(e, str)]
    return pd.DataFrame({"path": [str(path)], "attempted": [len(batch)], "captioned": [len(got)],
                         "failed": [len(errors)], "errors": [errors[:_MAX_ERRORS]]})


def caption_manifest(output_dir: str | os.PathLike, cfg: CaptionConfig,
                     limits: LimitsConfig = LimitsConfig()) -> dict[str, Any]:
    """Caption the kept rows of `<output>/samples/` that have no caption yet; return the summary for run.json."""
    import ray

    out = os.fspath(output_dir)
    t0 = time.perf_counter()
    parts = sample_parts(out)
    from captioner.qwen2vl import model_name

    summary: dict[str, Any] = {"enabled": True, "model": model_name(cfg.model), "model_source": cfg.model,
                               "parts": len(parts)}
    todo = _todo(parts, cfg.recaption) if parts else 0
    summary["to_caption"] = todo
    if todo == 0:
        return {**summary, "captioned": 0, "failed": 0, "seconds": round(time.perf_counter() - t0, 3)}
    need = cfg.num_gpus * cfg.concurrency
    have = float(ray.cluster_resources().get("GPU", 0))
    if need > have:
        # Not an error: an autoscaling cluster adds GPU nodes on demand. Without one, the pass waits for them.
        log.warning("captioning needs %g GPUs (captioning.num_gpus %g x concurrency %d) and the cluster has %g now; "
                    "the pass waits until they exist (lower captioning.concurrency, or num_gpus: 0 for CPU)",
                    need, cfg.num_gpus, cfg.concurrency, have)
        summary["gpu_warning"] = f"needed {need:g} GPUs, the cluster had {have:g} at the start of the pass"
    names = outfs.parquet_schema(parts[0]).names
    cols = [c for c in _READ if c in names]
    paths, fs = outfs.arrow_paths(parts)
    ds = ray.data.read_parquet(paths, filesystem=fs, include_paths=True, columns=cols)
    recaption = cfg.recaption

    def wanted(b: pd.DataFrame) -> pd.DataFrame:
        keep = b["status"] == "kept"
        if not recaption and "caption" in b:
            keep &= b["caption"].isna()
        b = b[keep]
        if "ocr_text" not in b:
            b = b.assign(ocr_text=None)
        return b

    ds = ds.map_batches(wanted, batch_format="pandas")
    ds = ds.map_batches(_decode, fn_kwargs={"cfg": cfg, "limits": limits}, batch_format="pandas",
                        batch_size=cfg.batch_size, num_cpus=1)
    ds = ds.map_batches(_Caption, fn_constructor_args=(cfg,), batch_format="pandas", batch_size=cfg.batch_size,
                        concurrency=cfg.concurrency, num_gpus=cfg.num_gpus,
                        num_cpus=1 if cfg.num_gpus == 0 else None)
    done = ds.groupby("path", num_partitions=max(1, min(len(parts), 64))).map_groups(
        _write_part, fn_kwargs={"like": out}, batch_format="pandas")
    stats = done.to_pandas()
    errors = [e for es in stats["errors"] for e in list(es)][:_MAX_ERRORS] if len(stats) else []
    summary.update(captioned=int(stats["captioned"].sum()) if len(stats) else 0,
                   failed=int(stats["failed"].sum()) if len(stats) else 0, error_examples=errors,
                   seconds=round(time.perf_counter() - t0, 3))
    log.info("captioning: %d of %d rows captioned, %d failed", summary["captioned"], todo, summary["failed"])
    return summary
