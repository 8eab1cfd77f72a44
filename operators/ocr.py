"""Text in the picture: PP-OCRv4 (detection + recognition, ONNX, as shipped by rapidocr-onnxruntime) on `frames`.

Which frames: one of the K uniform frames for every started `seconds_per_frame` (4 s) of the clip, at most
`num_frames` (3), spread evenly (the middle one when one, first and last included otherwise;
`operators.framesel.frames_to_read`): a clip of up to 4 s is read on its middle frame, 4-8 s on 2 frames, longer
clips on 3. Sampling by time keeps OCR's cost in step with decoding, which grows with duration too (issue #3:
reading 3 frames of every 3 s, 480x272 sample clip cost 1.5-1.9x their whole decode, OCR alone); the price is that
text on screen for only part of a clip of up to 4 s, and not at its middle, is missed. `seconds_per_frame: 0` reads
`num_frames` frames of every clip.

What runs: the PP-OCRv4 text detector on the chosen frames, then the PP-OCRv4 recogniser (Chinese + English in one
model) on the detected boxes. Both graphs are first rewritten by `operators.models.onnxfold` (scalar affine blocks folded
into the convolutions, hard-swish as one fused op: the same function, ~20 % less CPU for the detector and ~23 % for
the recogniser; `fold_graphs: false` runs the shipped graphs). The angle classifier
is off: burnt-in video text is upright, and it would add a third model call per box. Detection runs on the whole
frame at the frame's own size by default (`det_limit_side_len: 0`; frames are already ~320 px on the short side),
where rapidocr's default would upscale them to 736 px for a 5x cost; its input is normalised in float32 (rapidocr
does it in float64, ~10 % of the call). The recogniser gets the boxes still to be read (below) in batches of similar
width (`OcrEngine.recognize`), since rapidocr pads a batch to its widest crop.

A chosen frame that shows the same picture as an earlier chosen frame (`operators.framesel.same_picture`: in every
8x8 square the mean absolute grey difference is at most `same_picture_diff`, 6 grey levels: a still shot passes,
grain and re-encoding stay below ~3; a subtitle with one character changed does not) is neither detected nor read
again: it gets that frame's boxes and readings, and counts with them in the per-clip aggregates below.

Text seen again is not read again: a box that overlaps (IoU >= 0.8) a box already read in an earlier frame, and whose
crop is the same picture (mean grey difference <= 3, i.e. text over a still background), reuses that reading. The
bar is deliberately strict: over a moving background the same line and a line differing in two characters look
equally alike by any cheap measure we tried (edge overlap 0.73-1.0 vs 0.77-0.97), so there every frame is read.

Not done, measured in issue #3: detecting on a downscaled frame first and at full size only around what it finds.
At half scale the detector misses 12-16 px lines (the subtitle size of 720p/1080p video in 320-px frames) and even
a 26 px line over a busy background, and lowering its threshold does not help (the map stays below 1e-4 there); at
0.75 it still misses small semi-transparent logo text. Detection on crops is not the same as on the whole frame
either: the detector's squeeze-excitation blocks average over the whole input, so a crop can lose words the frame
keeps.

Columns:
- `ocr_text`: the lines read, each frame's boxes grouped into lines top-to-bottom and ordered left-to-right within
  a line; frames are visited in time order and a line already seen (same characters ignoring case and spaces, or a
  near-duplicate with similarity >= 0.8) is not repeated; lines are joined with "\n". An empty string means OCR ran
  and found no text (null means it did not run).
- `text_area_ratio`: per frame, the area of the **union** of the accepted text boxes (rasterised into one mask, so
  overlapping boxes are not counted twice) over the frame area; per clip, the **mean** over the OCR'd frames (a frame
  without text counts as 0). The mean measures how much of the clip's picture, over time, is text; a single title
  card in one of three frames weighs a third. Only boxes whose recognised text passes `text_score` count, so a
  textured patch the detector flags but nothing can be read from does not inflate the area.
"""

from __future__ import annotations

import difflib
import logging
import os
from dataclasses import dataclass
from typing import Any, ClassVar

import cv2
import numpy as np
import pyarrow as pa

from curation.typed import setting
from operators.framesel import FrameModelOperator, FrameParams, pick_frames, same_as_earlier

log = logging.getLogger(__name__)


def union_area_ratio(quads: list[np.ndarray], shape: tuple[int, int]) -> float:
    """Area of the union of quadrilateral boxes over the frame area (boxes rasterised into one mask)."""
    if not quads:
        return 0.0
    h, w = shape
    mask = np.zeros((h, w), np.uint8)
    for q in quads:
        # One call per box: given several contours at once, fillPoly treats overlaps as holes (even-odd rule).
        cv2.fillPoly(mask, [np.round(q).astype(np.int32).reshape(-1, 1, 2)], 1)
    return float(np.count_nonzero(mask)) / float(h * w)


def box_iou(a: np.ndarray, b: np.ndarray) -> float:
    """IoU of the axis-aligned bounding rectangles of two quads."""
    ax0, ay0 = a.min(axis=0)
    ax1, ay1 = a.max(axis=0)
    bx0, by0 = b.min(axis=0)
    bx1, by1 = b.max(axis=0)
    iw = max(0.0, min(ax1, bx1) - max(ax0, bx0))
    ih = max(0.0, min(ay1, by1) - max(ay0, by0))
    inter = iw * ih
    union = (ax1 - ax0) * (ay1 - ay0) + (bx1 - bx0) * (by1 - by0) - inter
    return float(inter / union) if union > 0 else 0.0


def group_lines(items: list[tuple[np.ndarray, str]]) -> list[str]:
    """Group (quad, text) boxes of one frame into reading-order lines: top-to-bottom, then left-to-right."""
    if not items:
        return []
    boxes = [(q[:, 1].mean(), q[:, 1].max() - q[:, 1].min(), q[:, 0].min(), t) for q, t in items]
    boxes.sort(key=lambda b: b[0])
    lines: list[list[tuple]] = []
    for b in boxes:
        # Same line when the vertical centres are within half a box height of the line's running centre.
        if lines:
            line = lines[-1]
            centre = float(np.mean([x[0] for x in line]))
            height = float(np.median([x[1] for x in line] + [b[1]]))
            if abs(b[0] - centre) <= 0.5 * max(height, 1.0):
                line.append(b)
                continue
        lines.append([b])
    return [" ".join(x[3] for x in sorted(line, key=lambda x: x[2])) for line in lines]


def _norm(s: str) -> str:
    return "".join(s.split()).lower()


def merge_lines(per_frame: list[list[str]], similar: float = 0.8) -> list[str]:
    """Lines of all frames in time order, dropping repeats and near-duplicates of lines already kept."""
    kept: list[str] = []
    keys: list[str] = []
    for lines in per_frame:
        for line in lines:
            key = _norm(line)
            if not key:
                continue
            dup = next((i for i, k in enumerate(keys)
                        if k == key or difflib.SequenceMatcher(None, k, key).ratio() >= similar), None)
            if dup is None:
                kept.append(line)
                keys.append(key)
            elif len(key) > len(keys[dup]):
                # The longer reading of the same line usually caught characters the other one missed.
                kept[dup], keys[dup] = line, key
    return kept


class OcrEngine:
    """PP-OCRv4 detection + recognition through rapidocr-onnxruntime, with reuse of what was already seen."""

    def __init__(self, threads: int = 1, det_limit_side_len: int = 0, box_thresh: float = 0.5,
                 text_score: float = 0.5, model_dir: str | None = None, same_picture_diff: float = 6.0,
                 fold_graphs: bool = True):
        from rapidocr_onnxruntime import RapidOCR

        kwargs: dict[str, Any] = dict(
            use_cls=False, text_score=text_score, det_limit_side_len=det_limit_side_len, det_box_thresh=box_thresh,
            intra_op_num_threads=threads, inter_op_num_threads=1,
        )
        if not model_dir:
            import rapidocr_onnxruntime

            model_dir = os.path.dirname(rapidocr_onnxruntime.__file__)
        paths = {"det": f"{model_dir}/models/ch_PP-OCRv4_det_infer.onnx",
                 "rec": f"{model_dir}/models/ch_PP-OCRv4_rec_infer.onnx"}
        kwargs["det_model_path"], kwargs["rec_model_path"] = paths["det"], paths["rec"]
        self.engine = RapidOCR(**kwargs)
        self.text_score = text_score
        self.same_picture_diff = same_picture_diff
        self.folded: dict[str, dict[str, int]] = {}
        if fold_graphs:
            self._fold_graphs(threads, paths)

    def _fold_graphs(self, threads: int, paths: dict[str, str]) -> None:
        """Swap rapidocr's detector and recogniser sessions for ones on the rewritten graphs
        (`operators.models.onnxfold`: the same function, ~20-23 % less CPU). A graph that cannot be rewritten keeps its
        original session, with a warning."""
        import onnxruntime as ort

        from operators.models.onnxfold import fold_affine_graph

        for key, holder in (("det", self.engine.text_det.infer), ("rec", self.engine.text_rec.session)):
            path = paths[key]
            try:
                with open(path, "rb") as fh:
                    model, stats = fold_affine_graph(fh.read())
                opts = ort.SessionOptions()
                opts.intra_op_num_threads = threads
                opts.inter_op_num_threads = 1
                opts.log_severity_level = 3
                holder.session = ort.InferenceSession(model, opts, providers=["CPUExecutionProvider"])
                self.folded[key] = stats
            except Exception as exc:  # an unexpected graph layout: keep rapidocr's own session
                log.warning("PP-OCR %s graph %s: rewrite failed (%s); running the original graph", key, path, exc)

    def detect(self, bgr: np.ndarray) -> list[np.ndarray]:
        """rapidocr's `text_det` on one BGR frame (its resize rule, DB post-processing and box filter), with the
        input normalised in float32 instead of float64 (same values to ~1e-7; ~4 ms less per 272x480 frame)."""
        det = self.engine.text_det
        h, w = bgr.shape[:2]
        img = det.get_preprocess(max(h, w)).resize(bgr)
        if img is None:
            return []
        x = img.astype(np.float32)
        x *= 1.0 / 127.5
        x -= 1.0  # == (x / 255 - 0.5) / 0.5
        prob = det.infer(np.ascontiguousarray(x.transpose(2, 0, 1))[None])[0]
        boxes, _ = det.postprocess_op(prob, (h, w))
        if len(boxes) == 0:
            return []
        return list(det.filter_tag_det_res(boxes, (h, w)))

    def recognize(self, crops: list[np.ndarray], max_pad: float = 1.15) -> list[tuple[str, float]]:
        """(text, score) per crop. rapidocr pads every crop of a batch to the batch's widest aspect ratio (at least
        320 px wide at 48 px tall), so a short logo batched with a long subtitle line costs as much as the line: crops
        go in batches of up to 6 whose widths stay within `max_pad` of each other instead (same readings; the six
        crops of the `--hd` 1080p bench clip, a subtitle line and a logo on 3 frames, read in 0.30 s, not 0.77 s)."""
        if not crops:
            return []
        rec = self.engine.text_rec
        width = [max(c.shape[1] / max(c.shape[0], 1), 320 / 48) for c in crops]
        order = sorted(range(len(crops)), key=lambda i: width[i])
        out: list[tuple[str, float]] = [("", 0.0)] * len(crops)
        group: list[int] = []
        for i in order + [None]:
            if group and (i is None or len(group) == 6 or width[i] > max_pad * width[group[0]]):
                for j, r in zip(group, rec([crops[j] for j in group], False)[0]):
                    out[j] = (r[0], float(r[1]))
                group = []
            if i is not None:
                group.append(i)
        return out

    def read_frames(self, frames_rgb: list[np.ndarray], reuse_iou: float = 0.8,
                    reuse_diff: float = 3.0) -> list[list[tuple[np.ndarray, str, float]]]:
        """Per frame, the (quad, text, score) readings that pass `text_score`."""
        eng = self.engine
        # A frame showing the same picture as an earlier one is neither detected nor read: it gets that frame's
        # readings.
        alias = same_as_earlier(frames_rgb, self.same_picture_diff)
        distinct = [f for f, a in enumerate(alias) if a is None]
        dets: list[list[np.ndarray]] = []
        crops: list[list[np.ndarray]] = []
        for f in distinct:
            bgr = np.ascontiguousarray(frames_rgb[f][..., ::-1])
            boxes = self.detect(bgr)
            if not boxes:
                dets.append([])
                crops.append([])
                continue
            boxes = eng.sorted_boxes(np.array(boxes))
            dets.append(list(boxes))
            crops.append(eng.get_crop_img_list(bgr, boxes))
        # Decide, box by box, whether an earlier frame already read it; collect the rest for the recogniser.
        todo: list[np.ndarray] = []
        source: list[list[tuple[str, Any]]] = []
        seen: list[tuple[int, int]] = []
        for f, (fb, fc) in enumerate(zip(dets, crops)):
            row: list[tuple[str, Any]] = []
            for b, (quad, crop) in enumerate(zip(fb, fc)):
                match = next(((pf, pb) for pf, pb in seen
                              if box_iou(quad, dets[pf][pb]) >= reuse_iou
                              and _same_crop(crop, crops[pf][pb], reuse_diff)), None)
                if match is None:
                    row.append(("new", len(todo)))
                    todo.append(crop)
                    seen.append((f, b))
                else:
                    row.append(("same", match))
            source.append(row)
        readings = self.recognize(todo)
        by_box: dict[tuple[int, int], tuple[str, float]] = {}
        per_distinct: list[list[tuple[np.ndarray, str, float]]] = []
        for f, row in enumerate(source):
            frame_out = []
            for b, (kind, ref) in enumerate(row):
                text, score = (readings[ref][0], float(readings[ref][1])) if kind == "new" else by_box[ref]
                by_box[(f, b)] = (text, score)
                if score >= self.text_score and text.strip():
                    frame_out.append((np.asarray(dets[f][b], np.float32), text.strip(), score))
            per_distinct.append(frame_out)
        by_frame = dict(zip(distinct, per_distinct))
        return [by_frame[f if a is None else a] for f, a in enumerate(alias)]


def _same_crop(a: np.ndarray, b: np.ndarray, max_diff: float) -> bool:
    """Whether two text crops show the same thing (mean absolute grey difference at a common size)."""
    if a.size == 0 or b.size == 0:
        return False
    ga = cv2.cvtColor(a, cv2.COLOR_BGR2GRAY)
    gb = cv2.cvtColor(b, cv2.COLOR_BGR2GRAY)
    gb = cv2.resize(gb, (ga.shape[1], ga.shape[0]), interpolation=cv2.INTER_AREA)
    return float(cv2.absdiff(ga, gb).mean()) <= max_diff


def ocr_clip(engine: OcrEngine, frames: np.ndarray, num_frames: int = 3) -> dict[str, Any]:
    """`ocr_text` and `text_area_ratio` of one clip from its RGB `frames` (K, H, W, 3), reading `num_frames` of them."""
    frames = np.asarray(frames)
    if frames.ndim == 3:
        frames = frames[None]
    idx = pick_frames(len(frames), num_frames)
    readings = engine.read_frames([frames[i] for i in idx])
    shape = frames.shape[1:3]
    ratios = [union_area_ratio([q for q, _, _ in r], shape) for r in readings]
    lines = merge_lines([group_lines([(q, t) for q, t, _ in r]) for r in readings])
    return {"ocr_text": "\n".join(lines), "text_area_ratio": float(np.mean(ratios)) if ratios else 0.0}


@dataclass(frozen=True)
class OcrParams(FrameParams):
    """The OCR operator's parameters: the frame budget and rapidocr's thresholds."""

    det_limit_side_len: int = setting(0, ge=0)  # 0: detect at the frame's own size; N: upscale so the short side >= N
    box_thresh: float = setting(0.5, ge=0, le=1)  # detector box score threshold (rapidocr default)
    text_score: float = setting(0.5, ge=0, le=1)  # recogniser confidence a reading needs to count (rapidocr default)
    fold_graphs: bool = True  # run the exact graph rewrites of operators.models.onnxfold (~20-23 % less CPU)


class OcrText(FrameModelOperator):
    """PP-OCRv4 text reading and text area on a few uniform frames (CPU actor pool, models loaded once per actor)."""

    name: ClassVar[str] = "ocr"
    produces: ClassVar[dict[str, pa.DataType]] = {"ocr_text": pa.string(), "text_area_ratio": pa.float64()}
    models: ClassVar[tuple[str, ...]] = ("pp-ocrv4",)
    Params: ClassVar[type] = OcrParams

    def load_engine(self) -> OcrEngine:
        """The PP-OCRv4 ONNX models, from the model registry's resolved package folder."""
        from curation import models

        folder = models.resolve("pp-ocrv4")
        c = self.config
        return OcrEngine(threads=int(c["threads"]), det_limit_side_len=int(c["det_limit_side_len"]),
                         box_thresh=float(c["box_thresh"]), text_score=float(c["text_score"]),
                         model_dir=str(folder), same_picture_diff=float(c["same_picture_diff"]),
                         fold_graphs=bool(c["fold_graphs"]))

    def score_frames(self, frames: np.ndarray, n: int) -> dict[str, Any]:
        """Read `n` of the clip's frames."""
        return ocr_clip(self._engine, frames, n)
