"""Source → clip rows (probe + split), and clip rows → frame views (decode once). Both isolate failures per row."""

from __future__ import annotations

import logging
import time
from typing import Any

import numpy as np

from curation.config import PipelineConfig
from curation.frames import decode_image_views, decode_video_views
from curation.probe import ProbeError, probe
from curation.schema import FRAME_VIEW_COLUMNS, empty_row, failed_row, make_sample_id
from curation.sources import file_size, open_local, read_header
from curation.split import DecodeTimeout, split_video

log = logging.getLogger(__name__)


def _coded_wh(width: int, height: int, rotation: int) -> tuple[int, int]:
    return (height, width) if rotation in (90, 270) else (width, height)


def source_to_rows(uri: str, cfg: PipelineConfig) -> list[dict[str, Any]]:
    """Probe and split one source into clip rows; any failure becomes one `failed` row naming the cause."""
    started = time.monotonic()
    deadline = started + cfg.limits.decode_timeout_s
    known: dict[str, Any] = {}
    try:
        size = file_size(uri)
        known["source_size_bytes"] = size
        if size == 0:
            raise ProbeError("empty file (0 bytes)")
        if size > cfg.limits.max_file_bytes:
            raise ProbeError(f"file too large: {size} bytes > limits.max_file_bytes={cfg.limits.max_file_bytes}")
        header = read_header(uri)
        with open_local(uri) as path:
            info = probe(path, header, cfg.limits)
            known.update(info.as_row())
            if info.media_type == "image":
                row = empty_row(uri)
                row.update(known)
                row.update(start_frame=0, end_frame=1, num_frames=1, clip_index=0, clips_in_source=1)
                row["sample_id"] = make_sample_id(uri, 0, 1)
                return [row]
            coded = _coded_wh(info.width, info.height, info.rotation)
            result = split_video(path, info.fps, coded, cfg.split, deadline=deadline)
    except (ProbeError, DecodeTimeout) as exc:
        return [failed_row(uri, f"{type(exc).__name__}: {exc}", **known)]
    except FileNotFoundError as exc:
        return [failed_row(uri, f"file not found: {exc}", **known)]
    except PermissionError as exc:
        return [failed_row(uri, f"permission denied: {exc}", **known)]
    except OSError as exc:
        return [failed_row(uri, f"cannot read: {type(exc).__name__}: {exc}", **known)]
    except Exception as exc:  # noqa: BLE001 - any other decoder error is this file's problem, not the run's
        log.warning("source %s failed: %s", uri, exc, exc_info=True)
        return [failed_row(uri, f"{type(exc).__name__}: {exc}", **known)]

    if result.num_frames == 0:
        return [failed_row(uri, "no decodable video frames", **known)]
    if result.rotation and not info.rotation:
        # The decoded frames carry a rotation the container header did not show: trust the frames.
        known["rotation"] = result.rotation
        if result.rotation in (90, 270):
            known["width"], known["height"] = known["height"], known["width"]
    rows = []
    fps = info.fps
    for i, (s, e) in enumerate(result.clips):
        row = empty_row(uri)
        row.update(known)
        row.update(
            start_frame=s,
            end_frame=e,
            num_frames=e - s,
            duration_s=(e - s) / fps,
            clip_index=i,
            clips_in_source=len(result.clips),
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
    for i in range(n):
        if status[i] == "failed":
            _fill(views, i, empty)
            continue
        uri = batch["source_uri"][i]
        try:
            deadline = time.monotonic() + cfg.limits.decode_timeout_s
            with open_local(uri) as path:
                if batch["media_type"][i] == "image":
                    fv = decode_image_views(path, cfg.frames)
                else:
                    rot = _int_or_zero(batch["rotation"][i])
                    coded = _coded_wh(int(batch["width"][i]), int(batch["height"][i]), rot)
                    fv = decode_video_views(path, int(batch["start_frame"][i]), int(batch["end_frame"][i]),
                                            float(batch["fps"][i]), coded, rot, cfg.frames, deadline=deadline)
            _fill(views, i, fv.as_columns())
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
    # Nullable integers arrive as floats with NaN in Ray's numpy batches.
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
