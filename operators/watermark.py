"""Watermarks and logos: overlays whose edges stay put on screen while the picture underneath moves.

Classical computer vision on the K uniform `frames`, no model:

1. Per pixel, the Sobel gradient vector g_k of each frame k. An overlay edge sits at the same pixel with the same
   orientation in every frame; content edges move with the content. Per pixel:
   `coherence = |mean_k g_k| / mean_k |g_k|` (1 = the same edge in every frame) and `strength = |mean_k g_k|`.
2. Persistence only means something where the picture changes: a tripod shot is "persistent" everywhere. The
   temporal standard deviation of the grey level, box-averaged over 15 px, must exceed `content_change_min` around
   a pixel for it to count. (Consequence: a logo over a perfectly still shot is invisible to this cue; that is what
   the learned head slot below is for.)
3. Persistent pixels = strength > `edge_min`, coherence > `coherence_min`, content changing around them. They are
   grouped into components after a wide, flat dilation (3x15 px) that joins the letters and words of a text line.
4. Only components lying entirely inside a corner zone (`zone` of the width and height; also a top-centre band)
   count: a subtitle line spans the bottom centre and is the OCR operator's business, letterbox edges span the whole
   width. Chance coincidences (an edge moving along itself, e.g. a horizontal line in a horizontal pan) are thin and
   sparse, a logo is a compact block of persistent edges: a component's evidence is
   `(persistent pixels / zone area) × fill`, where fill = persistent pixels / bounding-box area.
5. Slow content is not an overlay: content that moves less than an edge's width between the sampled frames (a slow
   pan or drift: ~3 px between frames) keeps soft edges in place, and used to score ~1.0 in a corner. Its frames
   differ by what a translation of its own edges predicts; an overlay's do not. Per component, a Lucas-Kanade fit
   of one translation per pair of frames; when they add up to >= 1 px, the pixels whose change it explains are
   content and leave the component (`drifting_pixels`). Measured (`bench/watermark.py`, 8 photos x 6 pan speeds):
   clean pans above 0.5 3/48 -> 0/48; logos found in their own corner never fewer, in 4 cases more (the false
   positive elsewhere in the frame no longer wins).
6. `watermark_score` = `1 / (1 + (evidence_mid / e)^3)` for the strongest component e over all zones, in [0, 1];
   0.5 at `evidence_mid` (0.0032). Calibration (bench/BENCHMARKS.md, "CPU operators"): the corner logos of `curation.testing.samples`
   (seeds 0 and 1, 14 % of the width, alpha 0.4-0.6) give e >= 0.0065, clean sample clips and plain pans <= 0.0016;
   the default sits near their geometric mean. Synthetic logos of 7, 9 and 14 % of the width over pans of every
   sample photo: 23 of 24 found (the miss: a 7 % white logo over bright haze).

Per clip: one score from all K frames together (persistence is a property of the clip, not of a frame). Images and
clips with fewer than 3 frames: null (no temporal evidence), unless a learned head is configured.

Short clips: null. Over a clip shorter than `min_clip_frames` source frames (default 24, 1 s at 24 fps) the K frames
are nearly consecutive and the content moves a few pixels between them, less than the width of a soft edge: such an
edge keeps its place and orientation and looks exactly like an overlay. Measured on pans of the sample photos (3 px
per frame): 8-frame clips of `astronaut` scored 1.0 without any logo, the same pan over 72 frames 0.0 (the drift
check of step 5 now reads that clip correctly too, 0.001, but a clip of a few frames holds too little motion for any
reading to be trusted). The operator abstains there rather than guess (a null score fires no rule); such clips are
also below the shipped configs' `duration_s` minimum of 1 s.

Learned scores, combined with the persistent-overlay score by **max** (a watermark any cue sees is a watermark; each
cue misses cases the other catches: the heuristic is blind on still shots and images, a per-frame classifier on small
or faint corner logos that only their persistence gives away):
- `detector: laion-watermark` runs LAION-5B's published watermark classifier (EfficientNet-B3,
  `operators/models/watermark_net.py`) on each of the K frames; its per-clip score, the mean of the per-frame P(watermark),
  is also written on its own as `watermark_detector_score`. Images get it too. The full profile turns it on.
- `head: <model registry key>` loads a linear probe on the CLIP image embedding (safetensors with `weight` (1, D)
  and `bias` (1,)); its sigmoid output joins the max.
`watermark_score` = max(persistent-overlay score, detector score, head score) over the cues that gave one; with only
learned cues (images, short clips) their max. Both off (the default, and the offline demo) runs the heuristic only.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar

import cv2
import numpy as np
import pyarrow as pa

from curation.operator import Operator, Resources
from curation.typed import setting

TEMPORAL_WINDOW = 15  # px: neighbourhood over which "the content changes here" is measured
LINE_KERNEL = (3, 15)  # (rows, cols) dilation joining the glyphs and words of one text line
DRIFT_MIN_PX = 1.0  # a component whose frame-to-frame change is a translation adding up to this much has moved
DRIFT_RESIDUAL_MAX = 0.5  # ... and its pixels whose change that translation explains are content (`drifting_pixels`)


def gradient_persistence(gray: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """(strength, coherence, |mean gx|, |mean gy|, content change) maps of (K, H, W) grey frames."""
    g = gray.astype(np.float32)
    sx = np.zeros(g.shape[1:], np.float32)
    sy = np.zeros_like(sx)
    mag = np.zeros_like(sx)
    for f in g:
        gx = cv2.Sobel(f, cv2.CV_32F, 1, 0, ksize=3)
        gy = cv2.Sobel(f, cv2.CV_32F, 0, 1, ksize=3)
        sx += gx
        sy += gy
        mag += cv2.magnitude(gx, gy)
    k = float(len(g))
    sx /= k
    sy /= k
    mag /= k
    strength = cv2.magnitude(sx, sy)
    coherence = strength / (mag + 1e-3)
    change = cv2.blur(g.std(axis=0), (TEMPORAL_WINDOW, TEMPORAL_WINDOW))
    return strength, coherence, np.abs(sx), np.abs(sy), change


ZONES = ("tl", "tr", "bl", "br", "top")  # the keys of `overlay_zones`, the values of `watermark_zone`


def drifting_pixels(gray: np.ndarray, box: tuple[int, int, int, int], sel: np.ndarray,
                    min_px: float = DRIFT_MIN_PX, residual_max: float = DRIFT_RESIDUAL_MAX) -> np.ndarray:
    """The pixels of a persistent-edge component that are content moving slowly, not an overlay (a mask like `sel`).

    A soft content edge that moves less than its own width between the sampled frames keeps its place and
    orientation, so it passes the persistence test; but its frames differ by what a translation of its gradients
    predicts (brightness constancy, `I_t + g . v = 0`), and an overlay's do not: an opaque overlay does not change,
    and under a translucent one the content changes in ways unrelated to the overlay's own edges. Per pair of
    consecutive frames, the translation v that best explains the change over the component is solved by least
    squares (Lucas-Kanade over the component's pixels). When these translations add up to at least `min_px`, the
    component's content moved: its pixels whose change that translation explains (all but `residual_max` of it)
    are content; the rest (an overlay's edges, when a dilated component joins one to drifting content) stays.

    `gray`: (K, H, W) frames; `box`: (x, y, w, h) of the component; `sel`: its pixels inside the box."""
    x, y, bw, bh = box
    h, w = gray.shape[1:]
    x0, y0, x1, y1 = max(0, x - 2), max(0, y - 2), min(w, x + bw + 2), min(h, y + bh + 2)  # room for the 3x3 Sobel
    mask = np.zeros((y1 - y0, x1 - x0), bool)
    mask[y - y0:y - y0 + bh, x - x0:x - x0 + bw] = sel
    crop = gray[:, y0:y1, x0:x1].astype(np.float32)
    total = np.zeros(2)
    residual = np.zeros(int(mask.sum()))
    change = np.zeros_like(residual)
    for a, b in zip(crop[:-1], crop[1:]):
        mid = (a + b) * 0.5
        gx = cv2.Sobel(mid, cv2.CV_32F, 1, 0, ksize=3)[mask].astype(np.float64) / 8.0  # grey levels per px
        gy = cv2.Sobel(mid, cv2.CV_32F, 0, 1, ksize=3)[mask].astype(np.float64) / 8.0
        it = (b - a)[mask].astype(np.float64)
        m = np.array([[gx @ gx, gx @ gy], [gx @ gy, gy @ gy]])
        if np.linalg.cond(m) > 1e4:
            return np.zeros_like(sel)  # edges of one orientation only: no translation can be told apart
        v = np.linalg.solve(m, -np.array([gx @ it, gy @ it]))
        residual += (it + gx * v[0] + gy * v[1]) ** 2
        change += it ** 2
        total += v
    out = np.zeros_like(sel)
    if float(np.hypot(*total)) >= min_px:
        out[sel] = (change > 0) & (residual < residual_max * change)
    return out


def overlay_zones(h: int, w: int, zone: float) -> dict[str, tuple[int, int, int, int]]:
    """Where overlays live: the four corners and a top-centre band, as (y0, x0, y1, x1)."""
    zh, zw = max(1, int(h * zone)), max(1, int(w * zone))
    return {
        "tl": (0, 0, zh, zw), "tr": (0, w - zw, zh, w), "bl": (h - zh, 0, h, zw), "br": (h - zh, w - zw, h, w),
        "top": (0, zw, zh, w - zw),
    }


def overlay_evidence(frames: np.ndarray, zone: float = 0.3, edge_min: float = 80.0, coherence_min: float = 0.93,
                     content_change_min: float = 3.0, balance_min: float = 0.3,
                     drift_check: bool = True) -> dict[str, float]:
    """Per zone, the evidence of the strongest persistent-edge component lying inside it (0 when none);
    `drift_check=False` keeps components that `drifts` (for measuring what the check does)."""
    frames = np.asarray(frames)
    gray = np.stack([cv2.cvtColor(np.ascontiguousarray(f), cv2.COLOR_RGB2GRAY) for f in frames]) \
        if frames.ndim == 4 else frames
    strength, coherence, ax, ay, change = gradient_persistence(gray)
    persistent = (strength > edge_min) & (coherence > coherence_min) & (change > content_change_min)
    h, w = persistent.shape
    zones = overlay_zones(h, w, zone)
    out = {k: 0.0 for k in zones}
    if not persistent.any():
        return out
    joined = cv2.dilate(persistent.astype(np.uint8), np.ones(LINE_KERNEL, np.uint8))
    n, labels, stats, _ = cv2.connectedComponentsWithStats(joined, connectivity=8)
    for i in range(1, n):
        x, y, bw, bh, _ = stats[i]
        for name, (y0, x0, y1, x1) in zones.items():
            if not (x >= x0 and y >= y0 and x + bw <= x1 and y + bh <= y1):
                continue
            sel = (labels[y:y + bh, x:x + bw] == i) & persistent[y:y + bh, x:x + bw]
            count = int(sel.sum())
            if count == 0:
                continue
            # An edge moving along itself (a horizontal line in a horizontal pan) stays coherent by chance, but only
            # in one orientation; logos and text have edges both ways.
            ex, ey = float(ax[y:y + bh, x:x + bw][sel].sum()), float(ay[y:y + bh, x:x + bw][sel].sum())
            if min(ex, ey) < balance_min * max(ex, ey):
                continue
            if drift_check:  # content moving less than an edge's width between frames is not an overlay
                sel &= ~drifting_pixels(gray, (x, y, bw, bh), sel)
                count = int(sel.sum())
                if count == 0:
                    continue
            fill = count / float(bw * bh)
            area = float((y1 - y0) * (x1 - x0))
            out[name] = max(out[name], count / area * fill)
    return out


def evidence_to_score(e: float, mid: float) -> float:
    """Map component evidence to [0, 1]: 0.5 at `mid`, steep around it (a log-logistic curve)."""
    if e <= 0:
        return 0.0
    return float(1.0 / (1.0 + (mid / e) ** 3))


def watermark_heuristic(frames: np.ndarray, **kw: float) -> tuple[float, str | None] | None:
    """(score, zone of the strongest overlay or None) for one clip; None with fewer than 3 frames."""
    frames = np.asarray(frames)
    if frames.ndim < 3 or len(frames) < 3:
        return None
    mid = kw.pop("evidence_mid", 0.0032)
    ev = overlay_evidence(frames, **kw)
    best = max(ev, key=ev.get)
    score = evidence_to_score(ev[best], mid)
    return score, (best if ev[best] > 0 else None)


def too_short(row: dict[str, Any], min_clip_frames: int) -> bool:
    """Whether a video clip spans too few source frames for persistence to mean anything (module docstring)."""
    if str(row.get("media_type") or "video") == "image":
        return False  # images never reach the heuristic (one frame); the head may still score them
    n = row.get("num_frames")
    if n is None or (isinstance(n, float) and np.isnan(n)):
        idx = row.get("frame_indices")  # the clip-relative indices of the K frames: span as a lower bound
        if idx is None or len(idx) == 0:
            return False
        n = int(np.max(idx)) - int(np.min(idx)) + 1
    return int(n) < min_clip_frames


def _detector(value: str | None) -> str | None:
    return None if value in (None, "laion-watermark") else f"laion-watermark or null, got {value!r}"


@dataclass(frozen=True)
class WatermarkParams:
    """The watermark operator's parameters."""

    zone: float = setting(0.3, ge=0.05, le=0.5)  # corner zone size, as a share of width and height
    edge_min: float = setting(80.0, gt=0)  # Sobel strength of the frame-averaged gradient (grey levels x 4 per px)
    coherence_min: float = setting(0.93, gt=0, lt=1)  # |mean g| / mean |g| above which an edge is "in every frame"
    content_change_min: float = setting(3.0, gt=0)  # grey-level temporal std (15 px box) for persistence to count
    evidence_mid: float = setting(0.0032, gt=0)  # evidence that maps to a score of 0.5
    min_clip_frames: int = setting(24, ge=3)  # clips with fewer source frames get a null score ("Short clips")
    head: str | None = None  # model registry key of a linear watermark head on `embedding`, or null
    detector: str | None = setting(None, check=_detector)  # model registry key of a frame classifier, or null
    device: str = "cpu"  # where the detector runs ("cuda" when the operator is given a GPU)


class WatermarkDetector(Operator):
    """Persistent-overlay (logo, corner text) score from the uniform frames (CPU task; optional learned head)."""

    name: ClassVar[str] = "watermark"
    needs: ClassVar[tuple[str, ...]] = ("frames",)
    produces: ClassVar[dict[str, pa.DataType]] = {"watermark_score": pa.float64(), "watermark_zone": pa.string()}
    categories: ClassVar[dict[str, tuple[str, ...]]] = {"watermark_zone": ZONES}
    stateful: ClassVar[bool] = False
    default_resources: ClassVar[Resources] = Resources(num_cpus=0.5)
    default_batch_size: ClassVar[int] = 16
    transient: ClassVar[tuple[str, ...]] = ("_head", "_detector")
    Params: ClassVar[type] = WatermarkParams

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        keys = []
        if self.config["head"]:
            self.needs = ("frames", "embedding")  # instance-level: the head reads the CLIP embedding
            keys.append(str(self.config["head"]))
        if self.config["detector"]:
            keys.append(str(self.config["detector"]))
            self.produces = {**type(self).produces, "watermark_detector_score": pa.float64()}
        if keys:
            self.models = tuple(keys)

    def setup(self) -> None:
        """Load the learned head, if one is configured (the heuristic needs nothing)."""
        self._head = None
        if self.config["head"]:
            from safetensors.numpy import load_file

            from curation import models

            tensors = load_file(str(models.resolve(self.config["head"])))
            self._head = (tensors["weight"].reshape(-1).astype(np.float32), float(tensors["bias"].reshape(-1)[0]))
        self._detector = None
        if self.config["detector"]:
            from curation import models
            from operators.models.watermark_net import LaionWatermark

            self._detector = LaionWatermark(models.resolve(self.config["detector"]), device=self.config["device"])

    def detector_score(self, row: dict[str, Any]) -> float | None:
        """Mean P(watermark) of the frame classifier over the row's frames; None without a detector or frames."""
        det = getattr(self, "_detector", None)
        frames = row.get("frames")
        if det is None or frames is None or not len(frames):
            return None
        return float(np.mean(det.predict(np.asarray(frames))))

    def learned_score(self, row: dict[str, Any]) -> float | None:
        """Sigmoid of the linear head on the row's embedding; None without a head or an embedding."""
        head = getattr(self, "_head", None)
        emb = row.get("embedding")
        if head is None or emb is None:
            return None
        z = float(np.dot(head[0], np.asarray(emb, np.float32).reshape(-1))) + head[1]
        return float(1.0 / (1.0 + np.exp(-z)))

    def score_row(self, row: dict[str, Any]) -> dict[str, Any]:
        """Score one clip (images: learned head only, else null)."""
        c = self.config
        if (c["head"] or c["detector"]) and not hasattr(self, "_detector"):
            self.setup()  # unpickled on a worker after the driver had set it up: load the models here
        heur = None
        if not too_short(row, int(c["min_clip_frames"])):
            heur = watermark_heuristic(row["frames"], zone=float(c["zone"]), edge_min=float(c["edge_min"]),
                                       coherence_min=float(c["coherence_min"]),
                                       content_change_min=float(c["content_change_min"]),
                                       evidence_mid=float(c["evidence_mid"]))
        detected = self.detector_score(row)
        extra = {} if detected is None else {"watermark_detector_score": detected}
        learned = [x for x in (self.learned_score(row), detected) if x is not None]
        if heur is None and not learned:
            return extra
        if heur is None:
            return {"watermark_score": max(learned), **extra}
        score, zone = heur
        zone = zone if score >= 0.05 else None  # name a zone only where there is a candidate worth a look
        return {"watermark_score": max([score, *learned]), "watermark_zone": zone, **extra}
