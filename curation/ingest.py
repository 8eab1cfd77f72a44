"""Source → clip rows (probe + split), and clip rows → frame views (decode once). Both isolate failures per row.

The decoding itself (`probe_and_split`, `decode_views`) runs in this worker's decoder helper process
(`curation.limits`): a per-file time limit that also holds for C code, a memory cap, and a crashed decoder costs
one row, not the worker. File-system checks, downloads and row building stay in the worker.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import socket
import time
from typing import Any

import numpy as np

from curation.config import FramesConfig, LimitsConfig, PipelineConfig, SplitConfig
from curation.frames import FrameViews, decode_image, decode_image_views, decode_video_frames, decode_video_views
from curation.limits import DecoderError, run_isolated
from curation.probe import ProbeError, probe
from curation.schema import FRAME_VIEW_COLUMNS, empty_row, failed_row, make_sample_id
from curation.sources import SourceError, check_source, file_size, open_local, read_header
from curation.split import split_video

log = logging.getLogger(__name__)


def _coded_wh(width: int, height: int, rotation: int) -> tuple[int, int]:
    return (height, width) if rotation in (90, 270) else (width, height)


# ----------------------------------------------------------------------------------------------------------------
# What the decoder helper runs (plain data in, plain data out)


def probe_and_split(path: str, split: dict, limits: dict, deadline_s: float) -> dict[str, Any]:
    """Probe a local file and, for a video, split it into clips within `deadline_s` seconds.

    Returns {"info": probe columns} plus, for videos, "clips", "num_frames", "rotation", "decode_errors"; a failure
    after a successful probe comes back as "error" next to the probe columns, so the failed row keeps them.
    """
    deadline = time.monotonic() + deadline_s
    lim = LimitsConfig(**limits)
    info = probe(path, read_header(path), lim)
    out: dict[str, Any] = {"info": info.as_row()}
    if info.media_type == "image":
        return out
    try:
        coded = _coded_wh(info.width, info.height, info.rotation)
        result = split_video(path, info.fps, coded, SplitConfig(**split), deadline=deadline, max_pixels=lim.max_pixels)
    except Exception as exc:  # noqa: BLE001 - reported with the probe columns
        out["error"] = f"{type(exc).__name__}: {exc}"
        return out
    out.update(clips=[list(c) for c in result.clips], num_frames=result.num_frames, rotation=result.rotation,
               decode_errors=result.decode_errors)
    return out


def decode_views(path: str, media_type: str, start: int, end: int, fps: float | None, coded_wh: tuple[int, int],
                 rotation: int, frames: dict, max_pixels: int, deadline_s: float) -> FrameViews:
    """Decode one clip (or image) into its frame views within `deadline_s` seconds."""
    cfg = FramesConfig(**frames)
    if media_type == "image":
        return decode_image_views(path, cfg, max_pixels=max_pixels)
    return decode_video_views(path, start, end, fps, coded_wh, rotation, cfg,
                              deadline=time.monotonic() + deadline_s, max_pixels=max_pixels)


def decode_clip(path: str, media_type: str, indices: list[int], fps: float | None, coded_wh: tuple[int, int],
                rotation: int, short_side: int, max_pixels: int, deadline_s: float) -> tuple[np.ndarray, str]:
    """Frames `indices` of one clip (or the image) as upright RGB uint8 (N, H, W, 3) within `deadline_s` seconds."""
    if media_type == "image":
        return decode_image(path, short_side, max_pixels)[None], "pillow"
    order = np.asarray(indices, dtype=np.int64)
    wanted = np.unique(order)
    decoded, decoder = decode_video_frames(path, wanted, fps, coded_wh, rotation, short_side,
                                           deadline=time.monotonic() + deadline_s, max_pixels=max_pixels)
    return decoded[np.searchsorted(wanted, order)], decoder


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
        coded = _coded_wh(info["width"], info["height"], info["rotation"] or 0)
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


def row_views(row: dict[str, Any], frames: dict[str, Any], max_pixels: int,
              timeout_s: float) -> tuple[dict, dict[str, np.ndarray]]:
    """(meta, arrays) of one row's frame views (a clip or an image, `_VIEW_KEYS` of the row), decoded from its source
    in the isolated decoder helper within `timeout_s`, download time included. Raises DecoderError or SourceError.
    The graph's decode and the passes after it (captions, report thumbnails) all go through here."""
    started = time.monotonic()
    with open_local(str(row["source_uri"])) as path:
        budget = max(0.0, timeout_s - (time.monotonic() - started))
        media = str(row["media_type"])
        rot = _int_or_zero(row.get("rotation"))
        if media == "image":
            coded, start, end, fps = (0, 0), 0, 1, None
        else:
            coded = _coded_wh(int(row["width"]), int(row["height"]), rot)
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
    started = time.monotonic()
    with open_local(str(row["source_uri"])) as path:
        budget = max(0.0, timeout_s - (time.monotonic() - started))
        media = str(row["media_type"])
        rot = _int_or_zero(row.get("rotation"))
        if media == "image":
            coded, fps, idx = (0, 0), None, [0]
        else:
            coded = _coded_wh(int(row["width"]), int(row["height"]), rot)
            fps, idx = float(row["fps"]), [int(i) for i in indices]
        _, arrays = run_isolated(
            "clip", {"path": path, "media_type": media, "indices": idx, "fps": fps, "coded_wh": list(coded),
                     "rotation": rot, "short_side": int(short_side), "max_pixels": max_pixels, "deadline_s": budget},
            timeout_s=budget, max_pixels=max_pixels)
        return arrays["frames"]


def row_frames(row: dict[str, Any], frames: FramesConfig, max_pixels: int, timeout_s: float) -> np.ndarray:
    """The uniform RGB `frames` view (K, H, W, 3) of one manifest row, decoded again (`row_views`)."""
    return row_views(row, dataclasses.asdict(frames), max_pixels, timeout_s)[1]["frames"]
