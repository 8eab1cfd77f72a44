"""NSFW: NudeNet's shipped ONNX detector (`320n.onnx`, a YOLOv8-n trained on 18 body-part classes) on `frames`.

`nsfw_score` = the highest confidence, over the scored frames and all detector anchors, of an anchor whose best class
is one of the **exposed-body classes**:
`FEMALE_BREAST_EXPOSED`, `FEMALE_GENITALIA_EXPOSED`, `MALE_GENITALIA_EXPOSED`, `BUTTOCKS_EXPOSED`, `ANUS_EXPOSED`.
Left out on purpose: faces, the `*_COVERED` classes, and exposed feet, armpits, belly and male breast, which are
ordinary in swimwear, sports and beach footage. An anchor counts only if its arg-max class is an exposed class, exactly
as NudeNet's own post-processing labels a detection (so the score equals the confidence NudeNet would report for its
most confident exposed detection; NMS cannot change a maximum, and NudeNet's 0.2 reporting floor is not applied, so the
score stays continuous). No exposed anchor anywhere: 0.0.

Per clip: the **max** over the chosen frames: one explicit frame is enough to reject a clip. Chosen, as for OCR
(`operators.framesel.frames_to_read`): one of the K uniform frames for every started `seconds_per_frame` (4 s) of
the clip, at most `num_frames` (3), spread evenly (the middle one when one; first and last included otherwise). A
clip of up to 4 s is scored on its middle frame, so an explicit moment shorter than that can be missed there;
`seconds_per_frame: 0` scores `num_frames` frames of every clip. (The learned `nsfw_head` on CLIP embeddings, when
configured, averages over all K frames on the GPU.) A chosen frame that shows the same picture as an earlier chosen one
(`operators.framesel.same_picture`: no 8x8 square differs by more than `same_picture_diff` grey levels on average, i.e. a
still shot) would get the same score, so it is not run again. The other frames go through the network in one batch.

What runs: only the class branch of the network. The score needs the class confidences alone, so at load time the
graph is cut down to the backbone, neck and the three class heads (`cv3.*`); the box-regression heads (`cv2.*`) and
the DFL box decoding, ~25 % of the CPU time, are dropped, and the class logits of the three levels are concatenated
and passed through the sigmoid in NumPy (the same numbers as the full graph's class rows, to ~1e-7). If the graph is
not laid out as expected, the full graph runs instead. `NudeNetSession.raw` still gives the full graph's output.

Input: the network gets the channel order NudeNet's own `detect(path)` gives it (B, G, R planes; see `raw`).
NudeNet letterboxes to a 320x320 square. We letterbox to 320 on the long side and pad the short side only up to
a multiple of 32 (the network is fully convolutional), so a 16:9 frame costs 320x192 instead of 320x320 (40 % less)
at the same scale. `tests/test_op_nsfw.py` checks that this matches `NudeDetector.detect` on a photo.
"""

from __future__ import annotations

import logging
from typing import Any, ClassVar

import cv2
import numpy as np
import pyarrow as pa

from operators.framesel import FrameModelOperator, pick_frames, same_as_earlier

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

log = logging.getLogger(__name__)


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


# -- cutting the ONNX graph down to the class heads -----------------------------------------------------------------


def class_head_graph(model: bytes) -> tuple[bytes, list[str]]:
    """The YOLOv8 graph cut down to what the class confidences need, with the per-level class logits (N, C, h, w) as
    its outputs (and their names). The cut is `onnx.utils.Extractor` from the graph input to those tensors; they are
    found by walking back from the graph's output, whose YOLOv8 export layout is
    output0 = Concat(boxes, Sigmoid(Split(Concat(Reshape(Concat(box_i, cls_i)) for each level))[1]))."""
    import onnx
    import onnx.utils

    m = onnx.load_from_string(model)
    g = m.graph
    producer = {o: n for n in g.node for o in n.output}

    def node_of(tensor: str, op: str):
        n = producer.get(tensor)
        if n is None or n.op_type != op:
            raise ValueError(f"{tensor!r} is not made by a {op} node")
        return n

    final = node_of(g.output[0].name, "Concat")
    split = node_of(node_of(final.input[1], "Sigmoid").input[0], "Split")
    levels = [node_of(node_of(r, "Reshape").input[0], "Concat") for r in node_of(split.input[0], "Concat").input]
    heads = [lvl.input[1] for lvl in levels]
    initializers = {i.name for i in g.initializer}
    inputs = [i.name for i in g.input if i.name not in initializers]
    cut = onnx.utils.Extractor(m).extract_model(inputs, heads)
    return cut.SerializeToString(), heads


class NudeNetSession:
    """The NudeNet ONNX detector, loaded once (its class branch; the full graph only if `raw` is asked for)."""

    def __init__(self, model_path: str, threads: int = 1, size: int = 320):
        self.model_path = model_path
        self.threads = threads
        self.size = size
        self._full = None
        with open(model_path, "rb") as fh:
            model = fh.read()
        try:
            cut, self.heads = class_head_graph(model)
            self.session = self._session(cut)
        except Exception as exc:  # not the layout we know: run the full graph and take its class rows
            log.warning("NudeNet graph %s: class-branch cut failed (%s); running the full graph", model_path, exc)
            self.heads = []
            self.session = self._full = self._session(model)
        self.input = self.session.get_inputs()[0].name

    def _session(self, model: bytes):
        import onnxruntime as ort

        opts = ort.SessionOptions()
        opts.intra_op_num_threads = self.threads
        opts.inter_op_num_threads = 1
        return ort.InferenceSession(model, opts, providers=["CPUExecutionProvider"])

    def _batch(self, frames_rgb: list[np.ndarray]) -> np.ndarray:
        # NudeNet 3.4's own path (cv2.imread -> cvtColor(RGBA2BGR) on 3 channels, which swaps R and B -> blob with
        # swapRB) hands the network B,G,R planes. Feed the same order so scores match `NudeDetector.detect(path)`.
        return np.stack([letterbox(np.ascontiguousarray(f[..., ::-1]), self.size) for f in frames_rgb])

    def raw(self, frames_rgb: list[np.ndarray]) -> np.ndarray:
        """Raw (N, 4 + C, A) outputs of the full graph for same-sized RGB frames, in one batch."""
        if self._full is None:
            with open(self.model_path, "rb") as fh:
                self._full = self._session(fh.read())
        return self._full.run(None, {self.input: self._batch(frames_rgb)})[0]

    def scores(self, frames_rgb: list[np.ndarray]) -> np.ndarray:
        """(N, A, C) class confidences of same-sized RGB frames, in one batch (anchors in the full graph's order)."""
        if not self.heads:
            return class_scores(self.raw(frames_rgb))
        logits = self.session.run(self.heads, {self.input: self._batch(frames_rgb)})
        n = logits[0].shape[0]
        z = np.concatenate([x.reshape(n, x.shape[1], -1) for x in logits], axis=2)
        return np.transpose(1.0 / (1.0 + np.exp(-z)), (0, 2, 1))

    def clip_score(self, frames: np.ndarray, num_frames: int, same_picture_diff: float = 6.0) -> float:
        """`nsfw_score` of one clip (max over the chosen frames; a repeat of an earlier chosen picture is skipped)."""
        frames = np.asarray(frames)
        if frames.ndim == 3:
            frames = frames[None]
        chosen = [frames[i] for i in pick_frames(len(frames), num_frames)]
        alias = same_as_earlier(chosen, same_picture_diff)
        return exposed_score(self.scores([f for f, a in zip(chosen, alias) if a is None]))


class NudeNetNsfw(FrameModelOperator):
    """NudeNet exposed-body confidence on a few uniform frames (CPU actor pool, model loaded once per actor)."""

    name: ClassVar[str] = "nsfw"
    produces: ClassVar[dict[str, pa.DataType]] = {"nsfw_score": pa.float64()}
    models: ClassVar[tuple[str, ...]] = ("nudenet",)

    def load_engine(self) -> NudeNetSession:
        """The ONNX detector, from the model registry (the file ships inside `nudenet`)."""
        from curation import models

        return NudeNetSession(str(models.resolve("nudenet")), threads=int(self.config["threads"]))

    def score_frames(self, frames: np.ndarray, n: int) -> dict[str, Any]:
        """Score `n` of the clip's frames."""
        return {"nsfw_score": self._engine.clip_score(frames, n, float(self.config["same_picture_diff"]))}
