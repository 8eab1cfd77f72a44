"""Which of a clip's K uniform frames a per-frame model runs on, and which of those it can skip as repeats."""

from __future__ import annotations

import math
from typing import Any

import cv2
import numpy as np


def pick_frames(k: int, n: int) -> list[int]:
    """Indices of n frames spread evenly over k (first and last included; the middle one when n is 1)."""
    if n >= k:
        return list(range(k))
    if n == 1:
        return [(k - 1) // 2]
    return sorted({int(round(x)) for x in np.linspace(0, k - 1, n)})


def frames_to_read(num_frames: int, seconds_per_frame: float, duration_s: Any) -> int:
    """How many of a clip's uniform frames a per-frame model reads: one for every started `seconds_per_frame` of the
    clip, at least 1 and at most `num_frames`. `seconds_per_frame` 0, or a row without a usable duration (an image,
    a clip whose duration is unknown), reads `num_frames`. Sampling by time keeps a model's cost per clip in step with
    decoding, which also grows with duration, and reads a long clip more often than a short one."""
    try:
        duration = float(duration_s)
    except (TypeError, ValueError):
        duration = math.nan
    if seconds_per_frame <= 0 or not math.isfinite(duration) or duration <= 0:
        return num_frames
    return max(1, min(num_frames, math.ceil(duration / seconds_per_frame - 1e-9)))


def same_picture(a: np.ndarray, b: np.ndarray, max_diff: float = 6.0, block: int = 8) -> bool:
    """Whether two RGB frames show the same picture: same size, and in every `block` x `block` square the mean
    absolute grey difference is at most `max_diff`. The test is local on purpose: sensor grain and re-encoding keep
    every square of the sample set's still shots below ~3 grey levels, while one changed character of a subtitle
    line (or a 2x2-px dot) lifts its squares far above 6, so a changed caption is never taken for the same picture."""
    if a.shape != b.shape:
        return False
    ga = cv2.cvtColor(np.ascontiguousarray(a), cv2.COLOR_RGB2GRAY)
    gb = cv2.cvtColor(np.ascontiguousarray(b), cv2.COLOR_RGB2GRAY)
    d = cv2.absdiff(ga, gb).astype(np.float32)
    h, w = d.shape
    squares = cv2.resize(d, (-(-w // block), -(-h // block)), interpolation=cv2.INTER_AREA)
    return float(squares.max()) <= max_diff


def same_as_earlier(frames: list[np.ndarray], max_diff: float) -> list[int | None]:
    """Per frame, the index of the first earlier frame showing the same picture (`same_picture`), or None."""
    alias: list[int | None] = []
    for f, frame in enumerate(frames):
        alias.append(next((g for g in range(f) if alias[g] is None and same_picture(frame, frames[g], max_diff)),
                          None))
    return alias
