"""Six-tier motion grading (the paper's motion quality assessment) from dense optical flow on `motion_frames`.

Flow: OpenCV DIS, preset MEDIUM with finest scale 2 and no variational refinement. Measured on 320x180 frames with
known shifts (bench/BENCHMARKS.md, "CPU operators"): 1.2 ms per pair and sub-pixel error up to 25 px shifts, 2.6 px error at a
40 px shift; Farneback with Data-Juicer's settings takes 11 ms and breaks down beyond ~20 px (23 px error at a 27 px
shift). Fast pans at 4 fps move 20-60 px per pair at 320 px, so Farneback would both cost more and see less.

Per frame pair (t, t+1), on a grid every `grid_step` px:
- a 4-DoF similarity (rotation, uniform scale, translation) is fitted to the flow by RANSAC
  (`cv2.estimateAffinePartial2D`) on textured grid points only (flat areas carry no flow information). A similarity,
  not a homography: with 8 DoF a homography also soaks up large moving objects, which we want in the residual;
- camera flow = the fitted model's displacement at each grid point; object flow = measured flow − camera flow.

Per clip. Speeds are divided by the frame diagonal and multiplied by `motion_fps`, i.e. in **frame diagonals per
second**, so the numbers depend neither on the frame size nor on the sampling rate. Medians over pairs make one bad
pair (a compression glitch, a missed cut) unable to move the clip.
- `motion_score`       = median over pairs of the mean flow magnitude;
- `camera_motion`      = median over pairs of the mean camera-flow magnitude;
- `object_motion`      = median over pairs of the mean object-flow magnitude (0.25 px noise floor removed per point);
- `object_motion_peak` = median over pairs of the 99th percentile of the object flow: a robust maximum, so that one
  small mover (2 % of the frame) still separates "medium" from "static" while the frame mean barely moves;
- `shake_score`        = RMS of the detrended camera trajectory: per-pair camera translations (plus rotation at the
  half-diagonal radius) are integrated into a path, its centred moving average over ~1 s is the intended camera
  move (a pan, a dolly) and what is left is jitter; in frame diagonals (a displacement, not a speed);
- `flicker_score`      = mean |second difference| of the per-frame mean luma (0-1): brightness that jumps, not a fade;
- `motion_incoherence` = median over consecutive pairs of the mean change of the object flow at the same grid point:
  objects that move smoothly change it little (only at their edges), flow that does not hang together (glitches,
  content jumping about independently, chaotic crowds) changes it everywhere.

Tiers, first match wins (thresholds are operator params, calibrated on `curation.testing.samples`):
`low_quality` (flicker or incoherent flow) → `shaky` → `static` (no motion anywhere) → `camera_driven` (camera motion
dominates: objects move less than a quarter of it) → `optimal` (clear object motion below a speed cap) → `medium`
(the rest: small or slow movers, or too fast).
Images (one motion frame) get no motion scores: null, never a made-up default.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any, ClassVar

import cv2
import numpy as np
import pyarrow as pa

from curation.operator import Operator, Resources
from curation.schema import MOTION_TIERS
from curation.typed import setting

NOISE_FLOOR_PX = 0.25  # DIS error on clean texture is ~0.1-0.2 px: residuals below this are not object motion


@dataclass
class PairMotion:
    """Motion statistics of one frame pair, in pixels of the motion frames."""

    flow_mag: float  # mean |flow|
    camera_mag: float  # mean |camera flow| over the frame
    object_mag: float  # mean |flow - camera flow| above the noise floor
    object_peak: float  # 99th percentile of |flow - camera flow|: a robust maximum, so small movers still count
    tx: float  # camera translation
    ty: float
    rot: float  # camera rotation, radians
    object_flow: np.ndarray  # (N, 2) object flow on the grid, to compare with the next pair


def make_flow(preset: str = "medium") -> cv2.DISOpticalFlow:
    """The dense-flow engine the operator uses (see the module docstring for why these settings)."""
    presets = {
        "ultrafast": cv2.DISOPTICAL_FLOW_PRESET_ULTRAFAST,
        "fast": cv2.DISOPTICAL_FLOW_PRESET_FAST,
        "medium": cv2.DISOPTICAL_FLOW_PRESET_MEDIUM,
    }
    dis = cv2.DISOpticalFlow_create(presets[preset])
    dis.setFinestScale(2)
    dis.setVariationalRefinementIterations(0)
    return dis


def dense_flow(dis: cv2.DISOpticalFlow, a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Flow (H, W, 2) from grey frame a to grey frame b."""
    return dis.calc(np.ascontiguousarray(a), np.ascontiguousarray(b), None)


def fit_camera(points: np.ndarray, flow_at: np.ndarray, textured: np.ndarray, thresh_px: float) -> np.ndarray:
    """RANSAC similarity from grid points to their flow targets (2x3); median translation if the fit fails."""
    use = textured if textured.sum() >= 12 else np.ones(len(points), bool)
    src = points[use]
    dst = src + flow_at[use]
    m = None
    if len(src) >= 3:
        m, _ = cv2.estimateAffinePartial2D(src.reshape(-1, 1, 2), dst.reshape(-1, 1, 2), method=cv2.RANSAC,
                                           ransacReprojThreshold=thresh_px, maxIters=200, confidence=0.98,
                                           refineIters=5)
    if m is None:
        # Degenerate (e.g. a flat frame): the median translation is the robust camera guess.
        t = np.median(flow_at, axis=0) if len(flow_at) else np.zeros(2)
        m = np.array([[1.0, 0.0, t[0]], [0.0, 1.0, t[1]]])
    return m


def pair_motion(a: np.ndarray, b: np.ndarray, dis: cv2.DISOpticalFlow, grid_step: int = 8) -> PairMotion:
    """Flow, camera fit and object residual of one grey frame pair."""
    flow = dense_flow(dis, a, b)
    h, w = a.shape
    off = grid_step // 2
    ys, xs = np.mgrid[off:h:grid_step, off:w:grid_step]
    ys, xs = ys.ravel(), xs.ravel()
    points = np.stack([xs, ys], axis=1).astype(np.float32)
    flow_at = flow[ys, xs]
    # Texture on the grid: flat areas (sky, walls) carry no flow information and must not vote for the camera.
    small = cv2.resize(a, (len(range(off, w, grid_step)), len(range(off, h, grid_step))), interpolation=cv2.INTER_AREA)
    gx = cv2.Sobel(small, cv2.CV_32F, 1, 0, ksize=3)
    gy = cv2.Sobel(small, cv2.CV_32F, 0, 1, ksize=3)
    textured = (np.abs(gx) + np.abs(gy)).ravel() > 4.0
    m = fit_camera(points, flow_at, textured, thresh_px=max(1.0, 0.004 * float(np.hypot(h, w))))
    cam = points @ m[:, :2].T + m[:, 2] - points
    obj = flow_at - cam
    resid = np.hypot(obj[:, 0], obj[:, 1])
    return PairMotion(
        flow_mag=float(np.hypot(flow[..., 0], flow[..., 1]).mean()),
        camera_mag=float(np.hypot(cam[:, 0], cam[:, 1]).mean()),
        object_mag=float(np.maximum(resid - NOISE_FLOOR_PX, 0.0).mean()),
        # Flow in flat areas is the regulariser's guess and wanders with sensor noise: the peak reads textured points.
        object_peak=float(np.percentile(resid[textured] if textured.sum() >= 12 else resid, 99)),
        tx=float(m[0, 2]), ty=float(m[1, 2]), rot=float(np.arctan2(m[1, 0], m[0, 0])), object_flow=obj,
    )


def object_flow_jitter(pairs: list[PairMotion]) -> float:
    """Median over consecutive pairs of the mean change of the object flow at the same grid point (px)."""
    if len(pairs) < 2:
        return 0.0
    d = [float(np.hypot(*(p.object_flow - q.object_flow).T).mean()) for p, q in zip(pairs[:-1], pairs[1:])]
    return float(np.median(d))


def detrended_rms(path: np.ndarray, window: int) -> float:
    """RMS of a (T, D) trajectory minus its centred moving average over `window` samples (edges reflected)."""
    t = len(path)
    if t < 3:
        return 0.0
    window = max(3, window)
    window += 1 - window % 2  # odd, so the average is centred
    if window > t:
        window = t if t % 2 else t - 1
    pad = window // 2
    # Odd (point) reflection keeps a straight pan straight past the ends; plain reflection would fold it into a V.
    padded = np.pad(path, ((pad, pad), (0, 0)), mode="reflect", reflect_type="odd")
    kernel = np.ones(window) / window
    trend = np.stack([np.convolve(padded[:, d], kernel, mode="valid") for d in range(path.shape[1])], axis=1)
    return float(np.sqrt(((path - trend) ** 2).sum(axis=1).mean()))


def flicker(motion_frames: np.ndarray) -> float:
    """Mean |second difference| of the per-frame mean luma (0-1): jumps count, smooth fades do not."""
    luma = motion_frames.reshape(len(motion_frames), -1).mean(axis=1) / 255.0
    if len(luma) < 3:
        return float(abs(luma[-1] - luma[0])) if len(luma) == 2 else 0.0
    return float(np.abs(luma[1:-1] - 0.5 * (luma[:-2] + luma[2:])).mean())


def motion_stats(motion_frames: np.ndarray, motion_fps: float, dis: cv2.DISOpticalFlow | None = None,
                 grid_step: int = 8) -> dict[str, float] | None:
    """Per-clip motion statistics (see the module docstring); None when there are fewer than two frames."""
    frames = np.asarray(motion_frames)
    if frames.ndim == 4:  # tolerate RGB input
        frames = np.stack([cv2.cvtColor(np.ascontiguousarray(f), cv2.COLOR_RGB2GRAY) for f in frames])
    if frames.ndim != 3 or len(frames) < 2:
        return None
    dis = dis or make_flow()
    fps = float(motion_fps) if motion_fps and motion_fps > 0 else 1.0
    pairs = [pair_motion(frames[i], frames[i + 1], dis, grid_step) for i in range(len(frames) - 1)]
    h, w = frames.shape[1:]
    diag = float(np.hypot(h, w))
    per_s = fps / diag
    radius = diag / 2
    steps = np.array([[p.tx, p.ty, p.rot * radius] for p in pairs])
    path = np.vstack([np.zeros((1, 3)), np.cumsum(steps, axis=0)])
    return {
        "motion_score": float(np.median([p.flow_mag for p in pairs])) * per_s,
        "camera_motion": float(np.median([p.camera_mag for p in pairs])) * per_s,
        "object_motion": float(np.median([p.object_mag for p in pairs])) * per_s,
        "shake_score": detrended_rms(path, int(round(fps))) / diag,
        "flicker_score": flicker(frames),
        "object_motion_peak": float(np.median([p.object_peak for p in pairs])) * per_s,
        "motion_incoherence": object_flow_jitter(pairs) * per_s,
    }


DEFAULT_TIER_PARAMS: dict[str, float] = {
    # Calibrated on curation.testing.samples seed 0 (checked on seed 1); each cut sits near the geometric mean of the
    # closest values on either side (numbers in bench/BENCHMARKS.md, "CPU operators").
    "low_quality_flicker": 0.02,  # flicker_score above this -> low_quality (flicker clips 0.048-0.064, rest < 0.008)
    "low_quality_incoherence": 0.1,  # motion_incoherence above this -> low_quality (erratic 0.26-0.40, rest < 0.05)
    "shaky_shake": 0.003,  # shake_score above this -> shaky (shaky 0.007-0.011, smooth camera < 0.001)
    "static_motion": 0.005,  # motion_score below this ...
    "static_peak": 0.01,  # ... and object_motion_peak below this -> static (sample stills <= 0.001, raw-noise stills
    # ~0.005, small movers >= 0.022: ~1 px per pair at 4 fps and 320 px)
    "camera_min": 0.02,  # camera_motion at least this ...
    "camera_object_ratio": 0.25,  # ... and object_motion below this share of camera_motion -> camera_driven
    "optimal_object_min": 0.015,  # object_motion at least this ... (large movers 0.05-0.066, small < 0.003)
    "optimal_motion_max": 0.5,  # ... and motion_score at most this -> optimal; the rest (weak or too fast) -> medium
}


def grade(stats: dict[str, float], p: dict[str, float] | None = None) -> str:
    """Map per-clip motion statistics to one of the six tiers (first matching rule wins)."""
    p = {**DEFAULT_TIER_PARAMS, **(p or {})}
    if stats["flicker_score"] > p["low_quality_flicker"] or stats["motion_incoherence"] > p["low_quality_incoherence"]:
        return "low_quality"
    if stats["shake_score"] > p["shaky_shake"]:
        return "shaky"
    if stats["motion_score"] < p["static_motion"] and stats["object_motion_peak"] < p["static_peak"]:
        return "static"
    if stats["camera_motion"] >= p["camera_min"] and \
            stats["object_motion"] < p["camera_object_ratio"] * stats["camera_motion"]:
        return "camera_driven"
    if stats["object_motion"] >= p["optimal_object_min"] and stats["motion_score"] <= p["optimal_motion_max"]:
        return "optimal"
    return "medium"


# The operator's parameters: the flow settings and every tier threshold of DEFAULT_TIER_PARAMS (each a number >= 0).
MotionParams = dataclasses.make_dataclass(
    "MotionParams",
    [("grid_step", int, setting(8, ge=2)),
     ("flow_preset", str, setting("medium", choices=("ultrafast", "fast", "medium")))]
    + [(k, float, setting(v, ge=0)) for k, v in DEFAULT_TIER_PARAMS.items()],
    frozen=True,
)
MotionParams.__doc__ = "The motion operator's parameters: flow settings and the tier thresholds."
MotionParams.__module__ = __name__  # made at run time: pickling (Ray ships the operator) finds it here


class MotionGrading(Operator):
    """Optical-flow motion scores, camera/object split, shake, flicker and the six-tier grade (CPU task)."""

    name: ClassVar[str] = "motion"
    needs: ClassVar[tuple[str, ...]] = ("motion_frames", "motion_fps")
    produces: ClassVar[dict[str, pa.DataType]] = {
        "motion_score": pa.float64(),
        "camera_motion": pa.float64(),
        "object_motion": pa.float64(),
        "shake_score": pa.float64(),
        "motion_tier": pa.string(),
        "object_motion_peak": pa.float64(),
        "flicker_score": pa.float64(),
        "motion_incoherence": pa.float64(),
    }
    categories: ClassVar[dict[str, tuple[str, ...]]] = {"motion_tier": MOTION_TIERS}  # what `grade` returns
    stateful: ClassVar[bool] = False
    default_resources: ClassVar[Resources] = Resources(num_cpus=1.0)
    default_batch_size: ClassVar[int] = 8
    transient: ClassVar[tuple[str, ...]] = ("_dis",)
    Params: ClassVar[type] = MotionParams

    def setup(self) -> None:
        """Create the flow engine once per worker (cheap, but it keeps its buffers between calls)."""
        self._dis = make_flow(self.config["flow_preset"])

    def score_row(self, row: dict[str, Any]) -> dict[str, Any]:
        """Score one clip; images (a single motion frame) get nulls."""
        if getattr(self, "_dis", None) is None:
            self.setup()
        stats = motion_stats(row["motion_frames"], float(row.get("motion_fps") or 0.0), self._dis,
                             int(self.config["grid_step"]))
        if stats is None:
            return {}
        stats["motion_tier"] = grade(stats, {k: float(self.config[k]) for k in DEFAULT_TIER_PARAMS})
        return stats
