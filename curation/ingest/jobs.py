"""What the decoder process runs (`curation.ingest.decoder`): plain data in, plain data out.

Probing and splitting a source, decoding a clip's frame views or chosen frames. These run inside the helper process
(or inline when isolation is off); the Ray tasks call them through `curation.ingest` (`source_to_rows`,
`row_views`, `row_clip`), never directly.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from typing import Any

import numpy as np

from curation.config import FramesConfig, LimitsConfig, SplitConfig
from curation.ingest.frames import (FrameViews, decode_image, decode_image_views, decode_video_frames,
                                    decode_video_views)
from curation.ingest.probe import probe
from curation.ingest.sources import read_header
from curation.ingest.split import split_video


def coded_size(width: int, height: int, rotation: int) -> tuple[int, int]:
    """The coded picture's (width, height) from the displayed one and the clockwise display rotation."""
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
        coded = coded_size(info.width, info.height, info.rotation)
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


# The requests the helper serves, by name.


def _op_probe_split(path: str, split: dict, limits: dict, deadline_s: float) -> tuple[dict, dict]:
    return probe_and_split(path, split, limits, deadline_s), {}


def _op_views(path: str, media_type: str, start: int, end: int, fps: float | None, coded_wh: list[int],
              rotation: int, frames: dict, max_pixels: int, deadline_s: float) -> tuple[dict, dict]:
    fv = decode_views(path, media_type, start, end, fps, (int(coded_wh[0]), int(coded_wh[1])), rotation, frames,
                      max_pixels, deadline_s)
    arrays = {"frames": fv.frames, "frame_indices": fv.frame_indices, "motion_frames": fv.motion_frames,
              "motion_frame_indices": fv.motion_frame_indices}
    return {"motion_fps": float(fv.motion_fps), "decoder": fv.decoder}, arrays


def _op_clip(path: str, media_type: str, indices: list[int], fps: float | None, coded_wh: list[int], rotation: int,
             short_side: int, max_pixels: int, deadline_s: float) -> tuple[dict, dict]:
    frames, decoder = decode_clip(path, media_type, indices, fps, (int(coded_wh[0]), int(coded_wh[1])), rotation,
                                  short_side, max_pixels, deadline_s)
    return {"decoder": decoder}, {"frames": frames}


def _op_ping(**_: Any) -> tuple[dict, dict]:
    # Peak RSS from the kernel's high-water mark of this process image: ru_maxrss would also count the worker's
    # RSS at fork time (Linux keeps it across exec).
    peak = 0
    with open("/proc/self/status", encoding="ascii", errors="replace") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                peak = int(line.split()[1])
    return {"pid": os.getpid(), "maxrss_kb": peak}, {}


OPS: dict[str, Callable[..., tuple[dict, dict]]] = {
    "probe_split": _op_probe_split, "views": _op_views, "clip": _op_clip, "ping": _op_ping,
}
