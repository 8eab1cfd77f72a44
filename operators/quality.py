"""Technical quality: sharpness, exposure, contrast and black borders (the paper's "low-quality, blurry, overexposed").

Everything is classical image statistics on the `frames` view (K uniform RGB frames), no model.

Per frame:
- the **content region** is the frame less its letterbox/pillarbox bars (see `detect_black_border`); every statistic
  below is taken inside it, so bars neither count as crushed shadows nor add a hard edge to the sharpness;
- **sharpness** is the variance of the 3x3-aperture Laplacian of the grey content region resampled to a fixed short
  side (`ref_short_side`, default 160 px). Resampling to one reference size is what makes the score independent of
  the input resolution: the same scene delivered at 300, 400 or 600 px lands at the same pixel scale before the
  second derivative is taken (measured spread across those sizes ≤ 1.5x, while a σ = 2 px blur at 400 px divides
  the score by 5-18x; tests/test_op_quality.py). The reference is deliberately coarse: at 256 px the spread was
  2.2x, because how sharp a frame looks near the Nyquist limit depends on the resampling filter. Units: grey levels²
  of the ksize-3 Laplacian at the reference scale; the sample clips score ~1,600-27,000, a σ = 3 px blur brings a
  frame to a few hundred;
- **exposure** is a well-exposedness score in [0, 1]: `(1 - clipped share) × luma term`, where the clipped share is
  the fraction of content pixels at ≤ 5 or ≥ 250 and the luma term is 1 while the mean luma is within [0.25, 0.75]
  and falls linearly to 0 at pure black or pure white. The raw parts are written too (`luma_mean`,
  `clipped_highlights`, `clipped_shadows`) so a config can reject "overexposed" and "underexposed" separately;
- **contrast** is the RMS contrast, the standard deviation of the grey content region scaled to [0, 1].

Per clip: each per-frame statistic is aggregated by its **median** over the K frames, so one motion-blurred frame, one
flash or one fade-through-black frame does not decide the clip. `black_border_ratio` is not a per-frame median: a row
or column is a bar only if it is dark in *every* frame (a dark scene is not a letterbox), and the ratio is the share of
the frame area outside the common content rectangle.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar

import cv2
import numpy as np
import pyarrow as pa

from curation.operator import Operator, Resources
from curation.typed import setting

CLIP_LOW = 5  # grey level at or below which a pixel counts as crushed shadow
CLIP_HIGH = 250  # grey level at or above which a pixel counts as blown highlight


def to_gray(frames: np.ndarray) -> np.ndarray:
    """(K, H, W, 3) RGB uint8 -> (K, H, W) grey uint8 (BT.601 luma, as OpenCV computes it)."""
    frames = np.asarray(frames)
    if frames.ndim == 2:
        return frames[None]
    if frames.ndim == 3 and frames.shape[-1] != 3:
        return frames
    if frames.ndim == 3:
        frames = frames[None]
    return np.stack([cv2.cvtColor(np.ascontiguousarray(f), cv2.COLOR_RGB2GRAY) for f in frames])


def detect_black_border(gray: np.ndarray, level: int = 24, max_bright_share: float = 0.02) -> tuple[int, int, int, int]:
    """Letterbox/pillarbox bars common to all frames of (K, H, W) grey: (top, bottom, left, right) in pixels."""
    gray = np.asarray(gray)
    if gray.ndim == 2:
        gray = gray[None]
    _, h, w = gray.shape
    bright = gray > level
    # A bar line is dark in every frame: take the brightest frame's share of bright pixels per line.
    row_dark = (bright.mean(axis=2) <= max_bright_share).all(axis=0)
    col_dark = (bright.mean(axis=1) <= max_bright_share).all(axis=0)
    if row_dark.all() or col_dark.all():
        return 0, 0, 0, 0  # a black (or nearly black) picture is an exposure problem, not a letterbox

    def run(mask: np.ndarray) -> int:
        n = int(np.argmin(mask)) if not mask.all() else len(mask)
        # One or two dark lines at the edge are encoder padding or a dark scene edge, not a bar.
        return n if n >= 3 else 0

    return run(row_dark), run(row_dark[::-1]), run(col_dark), run(col_dark[::-1])


def border_ratio(shape: tuple[int, int], border: tuple[int, int, int, int]) -> float:
    """Share of the frame area outside the content rectangle."""
    h, w = shape
    top, bottom, left, right = border
    ch, cw = max(0, h - top - bottom), max(0, w - left - right)
    return 1.0 - (ch * cw) / float(h * w)


def content_crop(gray: np.ndarray, border: tuple[int, int, int, int]) -> np.ndarray:
    """The frames less their bars; the whole frame when the bars leave nothing."""
    _, h, w = gray.shape
    top, bottom, left, right = border
    if h - top - bottom < 8 or w - left - right < 8:
        return gray
    return gray[:, top:h - bottom, left:w - right]


def to_reference_scale(gray: np.ndarray, ref_short_side: int) -> np.ndarray:
    """Resample one grey image so that its short side is `ref_short_side` (area filter when shrinking)."""
    h, w = gray.shape
    s = ref_short_side / float(min(h, w))
    if abs(s - 1.0) < 1e-3:
        return gray
    size = (max(1, int(round(w * s))), max(1, int(round(h * s))))
    return cv2.resize(gray, size, interpolation=cv2.INTER_AREA if s < 1 else cv2.INTER_LINEAR)


def laplacian_variance(gray: np.ndarray) -> float:
    """Variance of the 3x3-aperture Laplacian of one grey image."""
    # ksize=3 (second derivatives from 3x3 Sobel kernels) carries a little smoothing: it reads the upper-middle band,
    # where resampled copies of one picture agree, rather than the Nyquist band, where they depend on the filter.
    lap = cv2.Laplacian(gray, cv2.CV_32F, ksize=3)
    return float(lap.var())


def exposure_parts(gray: np.ndarray) -> tuple[float, float, float, float]:
    """(exposure score, mean luma, highlight share, shadow share) of one grey image."""
    g = np.asarray(gray)
    n = float(g.size)
    hi = float(np.count_nonzero(g >= CLIP_HIGH)) / n
    lo = float(np.count_nonzero(g <= CLIP_LOW)) / n
    mean = float(g.mean()) / 255.0
    luma_term = float(np.clip(1.0 - max(0.0, abs(mean - 0.5) - 0.25) / 0.25, 0.0, 1.0))
    return (1.0 - hi - lo) * luma_term, mean, hi, lo


def quality_scores(frames: np.ndarray, ref_short_side: int = 160, border_level: int = 24) -> dict[str, float]:
    """All technical-quality columns of one clip (or image) from its RGB `frames`."""
    gray = to_gray(frames)
    if gray.size == 0:
        raise ValueError("no frames")
    border = detect_black_border(gray, level=border_level)
    content = content_crop(gray, border)
    per: dict[str, list[float]] = {k: [] for k in
                                   ("sharpness", "exposure", "luma_mean", "clipped_highlights", "clipped_shadows",
                                    "contrast")}
    for g in content:
        ref = to_reference_scale(np.ascontiguousarray(g), ref_short_side)
        per["sharpness"].append(laplacian_variance(ref))
        e, m, hi, lo = exposure_parts(ref)
        per["exposure"].append(e)
        per["luma_mean"].append(m)
        per["clipped_highlights"].append(hi)
        per["clipped_shadows"].append(lo)
        per["contrast"].append(float(ref.std()) / 255.0)
    out = {k: float(np.median(v)) for k, v in per.items()}
    out["black_border_ratio"] = border_ratio(gray.shape[1:], border)
    return out


@dataclass(frozen=True)
class QualityParams:
    """The quality operator's parameters."""

    ref_short_side: int = setting(160, ge=32)  # the fixed scale at which sharpness is measured
    border_level: int = setting(24, ge=0, lt=128)  # grey level under which a line may belong to a black bar


class TechnicalQuality(Operator):
    """Sharpness, exposure, contrast and letterbox share from the uniform frames (CPU task, no model)."""

    name: ClassVar[str] = "quality"
    needs: ClassVar[tuple[str, ...]] = ("frames",)
    produces: ClassVar[dict[str, pa.DataType]] = {
        "sharpness": pa.float64(),
        "exposure": pa.float64(),
        "contrast": pa.float64(),
        "black_border_ratio": pa.float64(),
        "luma_mean": pa.float64(),
        "clipped_highlights": pa.float64(),
        "clipped_shadows": pa.float64(),
    }
    stateful: ClassVar[bool] = False
    default_resources: ClassVar[Resources] = Resources(num_cpus=0.5)
    default_batch_size: ClassVar[int] = 16
    Params: ClassVar[type] = QualityParams

    def score_row(self, row: dict[str, Any]) -> dict[str, Any]:
        """Score one clip."""
        return quality_scores(row["frames"], int(self.config["ref_short_side"]), int(self.config["border_level"]))
