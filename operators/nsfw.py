"""NSFW: NudeNet's shipped ONNX detector (`320n.onnx`, a YOLOv8-n trained on 18 body-part classes) on `frames`.

`nsfw_score` = the highest confidence, over the scored frames and all detector anchors, of an anchor whose best class
is one of the **exposed-body classes**:
`FEMALE_BREAST_EXPOSED`, `FEMALE_GENITALIA_EXPOSED`, `MALE_GENITALIA_EXPOSED`, `BUTTOCKS_EXPOSED`, `ANUS_EXPOSED`.
Left out on purpose: faces, the `*_COVERED` classes, and exposed feet, armpits, belly and male breast, which are
ordinary in swimwear, sports and beach footage. An anchor counts only if its arg-max class is an exposed class, exactly
as NudeNet's own post-processing labels a detection (so the score equals the confidence NudeNet would report for its
most confident exposed detection; NMS cannot change a maximum, and NudeNet's 0.2 reporting floor is not applied, so the
score stays continuous). No exposed anchor anywhere: 0.0.

Per clip: the **max** over `num_frames` frames spread evenly over the K uniform frames (first and last included):
one explicit frame is enough to reject a clip. Frames go through the network in one batch.

Input: the network gets the channel order NudeNet's own `detect(path)` gives it (B, G, R planes; see `raw`).
NudeNet letterboxes to a 320x320 square. We letterbox to 320 on the long side and pad the short side only up to
a multiple of 32 (the network is fully convolutional), so a 16:9 frame costs 320x192 instead of 320x320 (40 % less)
at the same scale. `tests/test_op_nsfw.py` checks that this matches `NudeDetector.detect` on a photo.
"""

from __future__ import annotations

from typing import Any, ClassVar

import cv2
import numpy as np
import pyarrow as pa

from curation.operator import Operator, OperatorConfigError, Resources

# Class order of NudeNet 3.4's 320n.onnx output (nudenet/nudenet.py `__labels`).
NUDENET_LABELS = (
    "FEMALE_GENITALIA_COVERED", "FACE_FEMALE", "BUTTOCKS_EXPOSED", "FEMALE_BREAST_EXPOSED",
    "FEMALE_GENITALIA_EXPOSED", "MALE_BREAST_EXPOSED", "ANUS_EXPOSED", "FEET_EXPOSED", "BELLY_COVERED",
    "FEET_COVERED", "ARMPITS_COVERED", "ARMPITS_EXPOSED", "FACE_MALE", "BELLY_EXPOSED", "MALE_GENITALIA_EXPOSED",
    "ANUS_COVERED", "FEMALE_BREAST_COVERED", "BUTTOCKS_COVERED",
)
EXPOSED_CLASSES = ("FEMALE_BREAST_EXPOSED", "FEMALE_GENITALIA_EXPOSED", "MALE_GENITALIA_EXPOSED", "BUTTOCKS_EXPOSED",
                   "ANUS_EXPOSED")
EXPOSED_IDS = np.array([NUDENET_LABELS.index(c) for c in EXPOSED_CLASSES])


def letterbox(rgb: np.ndarray, size: int = 320, stride: int = 32) -> np.ndarray:
    """Resize so the long side is `size`, pad right/bottom with black to multiples of `stride`; (3, H, W) float 0-1."""
    h, w = rgb.shape[:2]
    s = size / float(max(h, w))
    nw, nh = max(1, int(round(w * s))), max(1, int(round(h * s)))
    # Bilinear, as NudeNet's own cv2.dnn.blobFromImage resizes: keeps our scores next to the library's.
    img = cv2.resize(rgb, (nw, nh), interpolation=cv2.INTER_LINEAR)
    ph, pw = -nh % stride, -nw % stride
    if ph or pw:
        img = cv2.copyMakeBorder(img, 0, ph, 0, pw, cv2.BORDER_CONSTANT, value=(0, 0, 0))
    return img.transpose(2, 0, 1).astype(np.float32) / 255.0


def class_scores(output: np.ndarray) -> np.ndarray:
    """(N, 4 + C, A) raw YOLOv8 output -> (N, A, C) class confidences."""
    return np.transpose(output[:, 4:, :], (0, 2, 1))


def exposed_score(scores: np.ndarray) -> float:
    """Highest confidence among anchors whose arg-max class is an exposed-body class; 0.0 if there is none."""
    flat = scores.reshape(-1, scores.shape[-1])
    best = flat.argmax(axis=1)
    conf = flat[np.arange(len(flat)), best]
    hit = np.isin(best, EXPOSED_IDS)
    return float(conf[hit].max()) if hit.any() else 0.0


def pick_frames(k: int, n: int) -> list[int]:
    """Indices of n frames spread evenly over k (first and last included; the middle one when n is 1)."""
    if n >= k:
        return list(range(k))
    if n == 1:
        return [(k - 1) // 2]
    return sorted({int(round(x)) for x in np.linspace(0, k - 1, n)})


class NudeNetSession:
    """The NudeNet ONNX detector, loaded once."""

    def __init__(self, model_path: str, threads: int = 1, size: int = 320):
        import onnxruntime as ort

        opts = ort.SessionOptions()
        opts.intra_op_num_threads = threads
        opts.inter_op_num_threads = 1
        self.session = ort.InferenceSession(model_path, opts, providers=["CPUExecutionProvider"])
        self.input = self.session.get_inputs()[0].name
        self.size = size

    def raw(self, frames_rgb: list[np.ndarray]) -> np.ndarray:
        """Raw (N, 22, A) outputs for same-sized RGB frames, in one batch."""
        # NudeNet 3.4's own path (cv2.imread -> cvtColor(RGBA2BGR) on 3 channels, which swaps R and B -> blob with
        # swapRB) hands the network B,G,R planes. Feed the same order so scores match `NudeDetector.detect(path)`.
        batch = np.stack([letterbox(np.ascontiguousarray(f[..., ::-1]), self.size) for f in frames_rgb])
        return self.session.run(None, {self.input: batch})[0]

    def clip_score(self, frames: np.ndarray, num_frames: int) -> float:
        """`nsfw_score` of one clip (max over the chosen frames)."""
        frames = np.asarray(frames)
        if frames.ndim == 3:
            frames = frames[None]
        idx = pick_frames(len(frames), num_frames)
        return exposed_score(class_scores(self.raw([frames[i] for i in idx])))


class NudeNetNsfw(Operator):
    """NudeNet exposed-body confidence on a few uniform frames (CPU actor pool, model loaded once per actor)."""

    name: ClassVar[str] = "nsfw"
    needs: ClassVar[tuple[str, ...]] = ("frames",)
    produces: ClassVar[dict[str, pa.DataType]] = {"nsfw_score": pa.float64()}
    models: ClassVar[tuple[str, ...]] = ("nudenet",)
    stateful: ClassVar[bool] = True
    default_resources: ClassVar[Resources] = Resources(num_cpus=1.0)
    default_batch_size: ClassVar[int] = 8
    params: ClassVar[dict[str, Any]] = {
        "num_frames": 3,  # how many of the K uniform frames are scored
        "threads": 1,  # ONNX Runtime intra-op threads per actor: match num_cpus
    }

    def validate(self) -> None:
        """Check the parameters."""
        for key in ("num_frames", "threads"):
            v = self.config[key]
            if isinstance(v, bool) or not isinstance(v, int) or v < 1:
                raise OperatorConfigError(f"operator 'nsfw': {key} must be an integer >= 1, got {v!r}")

    def __getstate__(self) -> dict:
        """Pickle without the loaded model: Ray ships the operator to workers, which load their own in setup()."""
        state = dict(self.__dict__)
        state.pop("_session", None)
        return state

    def setup(self) -> None:
        """Load the ONNX detector once per actor, from the model registry (the file ships inside `nudenet`)."""
        from curation import models

        self._session = NudeNetSession(str(models.resolve("nudenet")), threads=int(self.config["threads"]))

    def score_row(self, row: dict[str, Any]) -> dict[str, Any]:
        """Score one clip or image."""
        if getattr(self, "_session", None) is None:
            self.setup()
        return {"nsfw_score": self._session.clip_score(row["frames"], int(self.config["num_frames"]))}
