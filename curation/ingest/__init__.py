"""Ingest: sources → clip rows (probe + split), and clip rows → frames. The one decode API of the project.

Every consumer of decoded frames goes through here: the graph (`source_to_rows`, `attach_views` → `row_views`),
captions and report previews (`row_frames`), annotation thumbnails and the trainer (`row_clip`). The decoding itself
(`curation.ingest.jobs`) runs in this worker's decoder process (`curation.ingest.decoder`): a per-file time limit
that also holds for C code, a memory cap, and a crashed decoder costs one row, not the worker. File-system checks,
downloads and row building stay in the worker. Failures are isolated per row.

Modules: `sources` (listing, sniffing, local copies), `probe`, `split` (scene cuts → clips), `frames` (decoders and
frame views), `jobs` (what the decoder process runs), `decoder` (the process, its limits and its wire format).
"""

from __future__ import annotations

import contextlib

import dataclasses
import json
import logging
import os
import socket
import time
from typing import Any

import numpy as np

from curation.config import PipelineConfig
from curation.ingest.decoder import DecoderError, run_isolated
from curation.ingest.frames import uniform_indices
from curation.ingest.jobs import coded_size
from curation.ingest.probe import ProbeError
from curation.ingest.sources import SourceError, check_source, file_size, open_local, read_header
from curation.schema import FRAME_VIEW_COLUMNS, empty_row, failed_row, make_sample_id

log = logging.getLogger(__name__)


# ----------------------------------------------------------------------------------------------------------------
# What the Ray tasks run


def log_source_attempt(uri: str) -> None:
    """Append (host, pid, time, uri) to $CURATION_SOURCE_LOG/<host>-<pid>.jsonl when that directory is set: an
    audit trail of which worker processed which source, and how often (the reliability tests count recomputed
    sources with it after killing workers, nodes and drivers)."""
    d = os.environ.get("CURATION_SOURCE_LOG")
    if not d:
        return
    host = socket.gethostname()
    with open(os.path.join(d, f"{host}-{os.getpid()}.jsonl"), "a", encoding="utf-8") as f:
        f.write(json.dumps({"host": host, "pid": os.getpid(), "t": time.time(), "uri": uri}) + "\n")


def source_to_rows(uri: str, cfg: PipelineConfig) -> list[dict[str, Any]]:
    """Probe and split one source into clip rows; any failure becomes one `failed` row naming the cause."""
    log_source_attempt(uri)
    started = time.monotonic()
    known: dict[str, Any] = {}
    try:
        check_source(uri)
        size = file_size(uri)
        known["source_size_bytes"] = size
        if size == 0:
            raise ProbeError("empty file (0 bytes)")
        if size > cfg.limits.max_file_bytes:
            raise ProbeError(f"file too large: {size} bytes > limits.max_file_bytes={cfg.limits.max_file_bytes}")
        read_header(uri, 16)  # readable by this worker? (PermissionError is reported as such, not as a decode error)
        with open_local(uri) as path:
            budget = max(0.0, cfg.limits.decode_timeout_s - (time.monotonic() - started))
            res, _ = run_isolated("probe_split", {"path": path, "split": dataclasses.asdict(cfg.split),
                                                  "limits": dataclasses.asdict(cfg.limits), "deadline_s": budget},
                                  timeout_s=budget, max_pixels=cfg.limits.max_pixels)
    except (ProbeError, SourceError) as exc:
        return [failed_row(uri, f"{type(exc).__name__}: {exc}", **known)]
    except DecoderError as exc:
        return [failed_row(uri, exc.describe(), **known)]
    except FileNotFoundError as exc:
        return [failed_row(uri, f"file not found: {exc}", **known)]
    except PermissionError as exc:
        return [failed_row(uri, f"permission denied: {exc}", **known)]
    except OSError as exc:
        return [failed_row(uri, f"cannot read: {type(exc).__name__}: {exc}", **known)]
    except Exception as exc:  # noqa: BLE001 - any other error is this file's problem, not the run's
        log.warning("source %s failed: %s", uri, exc, exc_info=True)
        return [failed_row(uri, f"{type(exc).__name__}: {exc}", **known)]

    info = res["info"]
    known.update(info)
    if info["media_type"] == "image":
        row = empty_row(uri)
        row.update(known)
        row.update(start_frame=0, end_frame=1, num_frames=1, clip_index=0, clips_in_source=1)
        row["sample_id"] = make_sample_id(uri, 0, 1)
        return [row]
    if "error" in res:
        return [failed_row(uri, res["error"], **known)]
    if res["num_frames"] == 0:
        return [failed_row(uri, "no decodable video frames", **known)]
    if res["rotation"] != (info["rotation"] or 0):
        # The decoded frames carry a rotation the probe did not see: trust the frames.
        coded = coded_size(info["width"], info["height"], info["rotation"] or 0)
        known["rotation"] = res["rotation"]
        known["width"], known["height"] = (coded[1], coded[0]) if res["rotation"] in (90, 270) else coded
    rows = []
    fps = info["fps"]
    clips = res["clips"]
    for i, (s, e) in enumerate(clips):
        row = empty_row(uri)
        row.update(known)
        row.update(
            start_frame=s,
            end_frame=e,
            num_frames=e - s,
            duration_s=(e - s) / fps,
            clip_index=i,
            clips_in_source=len(clips),
            sample_id=make_sample_id(uri, s, e),
        )
        rows.append(row)
    return rows


def attach_views(batch: dict[str, np.ndarray], cfg: PipelineConfig) -> dict[str, np.ndarray]:
    """Decode each clip of the batch once into its frame views; a clip that fails to decode becomes `failed`."""
    n = len(batch["sample_id"])
    views: dict[str, list] = {c: [None] * n for c in FRAME_VIEW_COLUMNS}
    status = list(batch["status"])
    error = list(batch["error"])
    empty = _empty_views(cfg)
    frames_cfg = dataclasses.asdict(cfg.frames)
    for i in range(n):
        if status[i] == "failed":
            _fill(views, i, empty)
            continue
        row = {k: batch[k][i] for k in _VIEW_KEYS}
        try:
            meta, arrays = row_views(row, frames_cfg, cfg.limits.max_pixels, cfg.limits.decode_timeout_s)
            _fill(views, i, {**arrays, "motion_fps": float(meta["motion_fps"])})
        except DecoderError as exc:
            status[i] = "failed"
            error[i] = f"decode: {exc.describe()}"
            _fill(views, i, empty)
        except Exception as exc:  # noqa: BLE001 - one bad clip must not sink the batch
            status[i] = "failed"
            error[i] = f"decode: {type(exc).__name__}: {exc}"
            _fill(views, i, empty)
    out = dict(batch)
    for col, values in views.items():
        if col == "motion_fps":
            out[col] = np.asarray(values, dtype=np.float64)
        else:
            out[col] = _ragged(values)
    out["status"] = np.asarray(status, dtype=object)
    out["error"] = np.asarray(error, dtype=object)
    return out


def _int_or_zero(v: Any) -> int:
    # The graph passes nullable integers as Python ints or None (graph.numpy_batch); pandas batches of the later
    # passes may still carry them as floats with NaN.
    if v is None or (isinstance(v, (float, np.floating)) and np.isnan(v)):
        return 0
    return int(v)


def _empty_views(cfg: PipelineConfig) -> dict[str, Any]:
    # Failed rows still need arrays of the right rank so Ray can build one tensor column for the batch.
    return {
        "frames": np.zeros((1, 2, 2, 3), np.uint8),
        "frame_indices": np.zeros(1, np.int64),
        "motion_frames": np.zeros((1, 2, 2), np.uint8),
        "motion_frame_indices": np.zeros(1, np.int64),
        "motion_fps": 0.0,
    }


def _fill(views: dict[str, list], i: int, cols: dict[str, Any]) -> None:
    for c in views:
        views[c][i] = cols[c]


def _ragged(values: list[np.ndarray]) -> np.ndarray:
    """Same-shape arrays stack into one tensor; different shapes go as an object array (a ragged tensor column)."""
    shapes = {v.shape for v in values}
    if len(shapes) == 1:
        return np.stack(values)
    arr = np.empty(len(values), dtype=object)
    for i, v in enumerate(values):
        arr[i] = v
    return arr


def drop_views(batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Remove the frame views (and other intermediate columns) before anything is written."""
    return {k: v for k, v in batch.items() if k not in FRAME_VIEW_COLUMNS and not k.startswith("_")}


_VIEW_KEYS = ("source_uri", "media_type", "rotation", "width", "height", "start_frame", "end_frame", "fps")


@contextlib.contextmanager
def _row_source(row: dict[str, Any], timeout_s: float):
    """The local file of a row's source (downloaded if remote) and what a decode request needs: (path, the time left
    of `timeout_s` after the download, media type, rotation, coded size; (0, 0) for an image)."""
    started = time.monotonic()
    with open_local(str(row["source_uri"])) as path:
        budget = max(0.0, timeout_s - (time.monotonic() - started))
        media = str(row["media_type"])
        rot = _int_or_zero(row.get("rotation"))
        coded = (0, 0) if media == "image" else coded_size(int(row["width"]), int(row["height"]), rot)
        yield path, budget, media, rot, coded


def row_views(row: dict[str, Any], frames: dict[str, Any], max_pixels: int,
              timeout_s: float) -> tuple[dict, dict[str, np.ndarray]]:
    """(meta, arrays) of one row's frame views (a clip or an image, `_VIEW_KEYS` of the row), decoded from its source
    in the isolated decoder helper within `timeout_s`, download time included. Raises DecoderError or SourceError.
    The graph's decode and the passes after it (captions, report thumbnails) all go through here."""
    with _row_source(row, timeout_s) as (path, budget, media, rot, coded):
        if media == "image":
            start, end, fps = 0, 1, None
        else:
            start, end, fps = int(row["start_frame"]), int(row["end_frame"]), float(row["fps"])
        return run_isolated(
            "views", {"path": path, "media_type": media, "start": start, "end": end, "fps": fps,
                      "coded_wh": list(coded), "rotation": rot, "frames": frames, "max_pixels": max_pixels,
                      "deadline_s": budget}, timeout_s=budget, max_pixels=max_pixels)


def row_clip(row: dict[str, Any], indices: list[int], short_side: int, max_pixels: int,
             timeout_s: float) -> np.ndarray:
    """Frames `indices` (absolute frame numbers as in `start_frame`/`end_frame`) of one manifest row as upright RGB
    uint8 (N, H, W, 3), short side at most `short_side`, decoded by the same code and isolated helper as the graph's
    frame views (`row_views`); an image row gives its one frame. Raises DecoderError or SourceError."""
    with _row_source(row, timeout_s) as (path, budget, media, rot, coded):
        fps, idx = (None, [0]) if media == "image" else (float(row["fps"]), [int(i) for i in indices])
        _, arrays = run_isolated(
            "clip", {"path": path, "media_type": media, "indices": idx, "fps": fps, "coded_wh": list(coded),
                     "rotation": rot, "short_side": int(short_side), "max_pixels": max_pixels, "deadline_s": budget},
            timeout_s=budget, max_pixels=max_pixels)
        return arrays["frames"]


def row_frames(row: dict[str, Any], num_frames: int, short_side: int, max_pixels: int,
               timeout_s: float) -> np.ndarray:
    """`num_frames` frames spread uniformly over one manifest row's clip (the graph's `frames` view: same indices,
    same decoder), as upright RGB uint8 (K, H, W, 3) with short side at most `short_side` (`row_clip`)."""
    if str(row["media_type"]) == "image":
        return row_clip(row, [0], short_side, max_pixels, timeout_s)
    indices = uniform_indices(int(row["start_frame"]), int(row["end_frame"]), num_frames)
    return row_clip(row, indices.tolist(), short_side, max_pixels, timeout_s)
