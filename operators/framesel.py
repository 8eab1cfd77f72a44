"""Which of a clip's K uniform frames a per-frame model runs on, which of those it can skip as repeats, and the base
class of the operators that run such a model (`FrameModelOperator`: OCR, NSFW)."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, ClassVar

import cv2
import numpy as np

from curation.operator import Operator, Resources
from curation.typed import setting


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


@dataclass(frozen=True)
class FrameParams:
    """The frame budget of a per-frame model operator."""

    num_frames: int = setting(3, ge=1)  # at most this many of the K uniform frames are read
    seconds_per_frame: float = setting(4.0, ge=0)  # one frame per started 4 s of clip (at least 1); 0: num_frames
    same_picture_diff: float = setting(6.0, ge=0)  # a chosen frame this close to an earlier one is not rerun
    threads: int = setting(1, ge=1)  # ONNX Runtime intra-op threads per actor: match num_cpus


class FrameModelOperator(Operator):
    """Base of the operators that run a model on a few of a row's uniform `frames` (OCR, NSFW): an actor pool whose
    engine is loaded once per actor (`load_engine`), the shared frame-budget parameters (`num_frames`,
    `seconds_per_frame`, `same_picture_diff`, `threads`), and `score_row` = pick how many frames the clip's duration
    asks for, then `score_frames`."""

    needs: ClassVar[tuple[str, ...]] = ("frames",)
    stateful: ClassVar[bool] = True
    default_resources: ClassVar[Resources] = Resources(num_cpus=1.0)
    default_batch_size: ClassVar[int] = 8
    transient: ClassVar[tuple[str, ...]] = ("_engine",)
    # The frame budget every such operator takes; subclasses extend `FrameParams` with their own parameters.
    Params: ClassVar[type] = FrameParams

    def load_engine(self) -> Any:
        """Load the model (once per actor, from the model registry)."""
        raise NotImplementedError

    def setup(self) -> None:
        """Load the engine once per actor."""
        self._engine = self.load_engine()

    def score_frames(self, frames: np.ndarray, n: int) -> dict[str, Any]:
        """Score `n` frames chosen from the row's uniform `frames` (K, H, W, 3)."""
        raise NotImplementedError

    def score_row(self, row: dict[str, Any]) -> dict[str, Any]:
        """Score one clip or image on as many frames as its duration asks for."""
        if getattr(self, "_engine", None) is None:  # called directly (tests, benchmarks) without setup()
            self.setup()
        c = self.config
        n = frames_to_read(int(c["num_frames"]), float(c["seconds_per_frame"]), row.get("duration_s"))
        return self.score_frames(row["frames"], n)

