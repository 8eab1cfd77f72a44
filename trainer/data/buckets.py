"""Resolution and frame buckets per training stage, and the bucket of each stage row.

A stage's buckets are a few frame sizes of about the same area (one per aspect ratio, landscape and portrait, sides
rounded to a multiple of 16 so that the VAE's x8 and the DiT's x2 patches divide them) times a list of frame counts
1 + 4k (images are 1 frame). Every sample of a bucket has the same shape, so a training micro-batch drawn from one
bucket needs no padding.

A row goes to the size whose aspect ratio is nearest its own (in log ratio, so 2:1 and 1:2 are equally far from
1:1) and to the largest frame count its clip fills at the stage's frame rate: `frames` source frames apart by
`stride = round(fps / target_fps)`, a window centred in the clip. A row that fits no bucket (a video shorter than
the smallest video bucket, an image in a stage without 1-frame buckets) gets the reason instead.
"""

from __future__ import annotations

import dataclasses
import math

from trainer.data.clips import frame_stride

MULTIPLE = 16


@dataclasses.dataclass(frozen=True)
class Bucket:
    """One training shape: frames x height x width in pixels."""

    frames: int
    height: int
    width: int

    @property
    def name(self) -> str:
        """`FxHxW`, the index's `bucket` column (e.g. "17x256x448"; images "1x256x256")."""
        return f"{self.frames}x{self.height}x{self.width}"

    @classmethod
    def parse(cls, name: str) -> "Bucket":
        """Inverse of `name`."""
        try:
            f, h, w = (int(v) for v in name.split("x"))
        except ValueError:
            raise ValueError(f"bucket name {name!r} is not FRAMESxHEIGHTxWIDTH") from None
        return cls(f, h, w)


@dataclasses.dataclass
class StageBuckets:
    """Config of one stage's buckets: sizes from a resolution and aspect ratios (or listed), and frame counts."""

    name: str
    resolution: int | None = None  # side of the square of the same area, e.g. 256
    aspect_ratios: list[float] = dataclasses.field(default_factory=lambda: [1.0, 1.29, 1.75])  # width/height >= 1
    sizes: list[list[int]] | None = None  # explicit [height, width] pairs instead of resolution + aspect_ratios
    frames: list[int] = dataclasses.field(default_factory=lambda: [1])  # 1 + 4k each; 1 = images (and stills)
    fps: float | None = None  # sample videos at this rate (a stride over source frames); None: native rate

    def __post_init__(self):
        if (self.resolution is None) == (self.sizes is None):
            raise ValueError(f"stage {self.name}: give either resolution (+ aspect_ratios) or sizes")
        if self.resolution is not None and self.resolution < MULTIPLE:
            raise ValueError(f"stage {self.name}: resolution must be >= {MULTIPLE}")
        if any(r < 1.0 for r in self.aspect_ratios):
            raise ValueError(f"stage {self.name}: aspect_ratios are width/height >= 1 (portrait comes for free)")
        for hw in self.sizes or []:
            if len(hw) != 2 or hw[0] % MULTIPLE or hw[1] % MULTIPLE or min(hw) <= 0:
                raise ValueError(f"stage {self.name}: sizes entries are [height, width], multiples of {MULTIPLE}; "
                                 f"got {hw}")
        if not self.frames or any(f < 1 or (f - 1) % 4 for f in self.frames):
            raise ValueError(f"stage {self.name}: frames must be 1 + 4k, got {self.frames}")
        if self.fps is not None and self.fps <= 0:
            raise ValueError(f"stage {self.name}: fps must be > 0")


def _round(v: float) -> int:
    return max(MULTIPLE, int(round(v / MULTIPLE)) * MULTIPLE)


def stage_sizes(st: StageBuckets) -> list[tuple[int, int]]:
    """The (height, width) sizes of a stage, landscape and portrait, without repeats, in a stable order."""
    if st.sizes is not None:
        out = [(int(h), int(w)) for h, w in st.sizes]
    else:
        out = []
        for r in st.aspect_ratios:
            h, w = _round(st.resolution / math.sqrt(r)), _round(st.resolution * math.sqrt(r))
            out += [(h, w), (w, h)]
    return list(dict.fromkeys(out))


def stage_buckets(st: StageBuckets) -> list[Bucket]:
    """Every bucket of a stage (sizes x frame counts)."""
    return [Bucket(f, h, w) for h, w in stage_sizes(st) for f in sorted(set(st.frames))]


@dataclasses.dataclass(frozen=True)
class Assignment:
    """Where a row goes: its bucket and the source frame indices of its window (or why it fits nowhere)."""

    bucket: Bucket | None
    indices: tuple[int, ...] = ()
    error: str | None = None


def _num(v, default=None):
    return default if v is None or (isinstance(v, float) and v != v) else v


def assign(row, st: StageBuckets) -> Assignment:
    """The bucket of one stage row (a mapping with media_type, width, height, start_frame, end_frame, fps)."""
    w, h = _num(row.get("width")), _num(row.get("height"))
    if not w or not h or w <= 0 or h <= 0:
        return Assignment(None, error=f"no bucket: the row has no usable size ({w}x{h})")
    sizes = stage_sizes(st)
    ratio = math.log(float(w) / float(h))
    bh, bw = min(sizes, key=lambda s: (abs(math.log(s[1] / s[0]) - ratio), -s[0] * s[1]))
    counts = sorted(set(st.frames), reverse=True)
    if row.get("media_type") == "image":
        if 1 not in counts:
            return Assignment(None, error=f"no bucket: stage {st.name} has no 1-frame bucket for images "
                                          f"(frames {sorted(counts)})")
        return Assignment(Bucket(1, bh, bw), (0,))
    start = int(_num(row.get("start_frame"), 0))
    end = _num(row.get("end_frame"))
    if end is None:
        return Assignment(None, error="no bucket: video row without end_frame")
    available = int(end) - start
    stride = frame_stride(_num(row.get("fps")), st.fps)
    for f in counts:
        span = (f - 1) * stride + 1
        if span <= available:
            first = start + (available - span) // 2  # centred: away from the cut at either end
            return Assignment(Bucket(f, bh, bw), tuple(first + k * stride for k in range(f)))
    need = (min(counts) - 1) * stride + 1
    return Assignment(None, error=f"no bucket: clip has {available} frames, the smallest bucket of stage {st.name} "
                                  f"needs {need} ({min(counts)} frames at stride {stride})")
