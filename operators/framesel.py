"""Which of a clip's K uniform frames a per-frame model runs on, and which of those it can skip as repeats."""

from __future__ import annotations

import cv2
import numpy as np


def pick_frames(k: int, n: int) -> list[int]:
    """Indices of n frames spread evenly over k (first and last included; the middle one when n is 1)."""
    if n >= k:
        return list(range(k))
    if n == 1:
        return [(k - 1) // 2]
    return sorted({int(round(x)) for x in np.linspace(0, k - 1, n)})


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
