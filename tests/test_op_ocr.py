"""OCR against rendered text: known strings (English, Chinese) at known places, union area, reading order, dedup."""

from __future__ import annotations

import difflib
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest
import skimage.data
from PIL import Image, ImageDraw, ImageFont

from operators.framesel import frames_to_read, pick_frames, same_picture
from operators.ocr import OcrText, group_lines, merge_lines, union_area_ratio

CJK_FONT = "/usr/share/fonts/truetype/wqy/wqy-microhei.ttc"
LATIN_FONT = "/usr/share/fonts/truetype/dejavu/DejaVuSans-Bold.ttf"


def _background(w: int = 480, h: int = 272) -> np.ndarray:
    return cv2.resize(skimage.data.coffee(), (w, h), interpolation=cv2.INTER_AREA)


def _render(frame: np.ndarray, text: str, xy: tuple[int, int], size: int, font: str,
            stroke: int = 2) -> tuple[np.ndarray, tuple]:
    """Draw white text with a black outline; returns the frame and the text's pixel bbox."""
    im = Image.fromarray(frame)
    f = ImageFont.truetype(font if Path(font).is_file() else CJK_FONT, size)
    d = ImageDraw.Draw(im)
    d.text(xy, text, font=f, fill=(255, 255, 255), stroke_width=stroke, stroke_fill=(0, 0, 0))
    return np.asarray(im), d.textbbox(xy, text, font=f, stroke_width=stroke)


def _recall(truth: str, read: str) -> float:
    t, r = "".join(truth.split()), "".join(read.split())
    return sum(b.size for b in difflib.SequenceMatcher(None, t, r, autojunk=False).get_matching_blocks()) / len(t)


@pytest.fixture(scope="module")
def op() -> OcrText:
    if not Path(CJK_FONT).is_file():
        pytest.skip("fonts-wqy-microhei is not installed")
    o = OcrText()
    o.setup()
    return o


def test_union_area_does_not_double_count():
    a = np.array([[0, 0], [50, 0], [50, 20], [0, 20]], np.float32)
    b = a + [25, 0]  # half overlapping
    assert union_area_ratio([a, b], (100, 100)) == pytest.approx(75 * 20 / 1e4, rel=0.1)
    assert union_area_ratio([a, a.copy()], (100, 100)) == pytest.approx(50 * 20 / 1e4, rel=0.1)
    assert union_area_ratio([], (100, 100)) == 0.0


def test_reading_order_and_dedup():
    def quad(x, y, w=40, h=14):
        return np.array([[x, y], [x + w, y], [x + w, y + h], [x, y + h]], np.float32)

    lines = group_lines([(quad(120, 101), "world"), (quad(10, 10), "Top"), (quad(10, 100), "hello")])
    assert lines == ["Top", "hello world"]
    merged = merge_lines([["Top", "hello world"], ["hello  World", "new line"], ["Top"]])
    assert merged == ["Top", "hello world", "new line"]
    assert pick_frames(8, 3) == [0, 4, 7] and pick_frames(2, 3) == [0, 1]


@pytest.mark.parametrize("text,font", [("The weather will be sunny tomorrow.", LATIN_FONT),
                                       ("今天的天气非常好", CJK_FONT)])
def test_reads_rendered_subtitles(op, text, font):
    frame, box = _render(_background(), text, (12, 215), 20, font)
    assert box[2] < frame.shape[1]  # the whole line is in the picture
    clip = np.stack([frame] * 8)
    out = op.score_row({"frames": clip})
    assert _recall(text, out["ocr_text"]) >= 0.9, out["ocr_text"]
    # The union of the detector's boxes covers about the rendered text's box (the detector pads a little).
    truth = (box[2] - box[0]) * (box[3] - box[1]) / float(frame.shape[0] * frame.shape[1])
    assert truth * 0.7 <= out["text_area_ratio"] <= truth * 1.8


def test_two_lines_in_order_and_text_changing_over_time(op):
    bg = _background()
    f1, _ = _render(bg, "OPENING NIGHT", (40, 30), 28, LATIN_FONT)
    f1, _ = _render(f1, "Live from the harbour", (40, 200), 24, LATIN_FONT)
    f2, _ = _render(bg, "Second caption here", (40, 200), 24, LATIN_FONT)
    out = op.score_row({"frames": np.stack([f1] * 4 + [f2] * 4)})
    lines = out["ocr_text"].split("\n")
    assert len(lines) == 3, lines
    assert _recall("OPENING NIGHT", lines[0]) >= 0.9 and _recall("Live from the harbour", lines[1]) >= 0.9
    assert _recall("Second caption here", lines[2]) >= 0.9


def test_no_text_is_empty_not_null(op):
    out = op.score_row({"frames": np.stack([_background()] * 4)})
    assert out == {"ocr_text": "", "text_area_ratio": 0.0}


def test_model_is_not_loaded_at_import():
    code = "import sys, operators.ocr; assert 'rapidocr_onnxruntime' not in sys.modules"
    subprocess.run([sys.executable, "-c", code], check=True, cwd=Path(__file__).resolve().parents[1])


def test_a_line_that_changes_two_characters_is_read_again(op):
    bg = _background()
    a, _ = _render(bg, "请大家注意安全", (120, 210), 26, CJK_FONT)
    b, _ = _render(bg, "请大家注意身体", (120, 210), 26, CJK_FONT)
    lines = op.score_row({"frames": np.stack([a] * 4 + [b] * 4)})["ocr_text"].split("\n")
    assert len(lines) == 2 and _recall("请大家注意身体", lines[1]) >= 0.9, lines


@pytest.mark.parametrize("text,font", [("Please keep your seat belt fastened.", LATIN_FONT),
                                       ("请大家系好安全带", CJK_FONT)])
def test_small_subtitles_at_production_size(op, text, font):
    """A 12-14 px line, what a 720p/1080p subtitle becomes in a 320-px-short-side frame, on a real photo: read when
    it is there all along and when it appears mid-clip (the later frames are new pictures, detected whole)."""
    bg = _background(568, 320)
    frame, box = _render(bg, text, (150, 284), 12, font, stroke=1)
    assert 12 <= box[3] - box[1] <= 15 and box[2] < frame.shape[1]
    for clip in (np.stack([frame] * 8), np.stack([bg] * 4 + [frame] * 4)):
        out = op.score_row({"frames": clip})
        assert _recall(text, out["ocr_text"]) >= 0.9, out["ocr_text"]


def test_same_picture_is_strict_and_local():
    rng = np.random.default_rng(0)
    bg = _background()
    grain = np.clip(bg + rng.normal(0, 1.2, bg.shape[:2])[..., None].round(), 0, 255).astype(np.uint8)
    assert same_picture(bg, grain, 6.0)  # sensor grain: the same picture
    dot = bg.copy()
    dot[100:102, 200:202] = 0 if dot[100:102, 200:202].mean() > 127 else 255  # >= 127 grey levels on 4 of 64 px
    assert not same_picture(bg, dot, 6.0)  # a 2x2-px change is enough to differ
    a, _ = _render(bg, "请大家注意安全", (120, 210), 26, CJK_FONT)
    b, _ = _render(bg, "请大家注意身体", (120, 210), 26, CJK_FONT)
    assert not same_picture(a, b, 6.0)
    assert not same_picture(bg, bg[:, :-8], 6.0)


def test_a_still_shot_is_detected_and_read_once(op, monkeypatch):
    rng = np.random.default_rng(1)
    frame, _ = _render(_background(), "Welcome back to the evening news.", (12, 215), 20, LATIN_FONT)
    clip = np.stack([np.clip(frame + rng.normal(0, 1.2, frame.shape[:2])[..., None].round(), 0, 255)
                     for _ in range(8)]).astype(np.uint8)
    engine = op._engine
    calls = {"detect": 0, "rec": 0}
    detect, rec = engine.detect, engine.engine.text_rec

    def count_detect(*a, **k):
        calls["detect"] += 1
        return detect(*a, **k)

    def count_rec(crops, *a, **k):
        calls["rec"] += len(crops)
        return rec(crops, *a, **k)

    monkeypatch.setattr(engine, "detect", count_detect)
    monkeypatch.setattr(engine.engine, "text_rec", count_rec)
    out = op.score_row({"frames": clip})
    assert calls["detect"] == 1 and calls["rec"] >= 1, calls
    assert _recall("Welcome back to the evening news.", out["ocr_text"]) >= 0.9
    # Every chosen frame counts in the mean, with the first frame's boxes: the same area as one frame alone.
    alone = op.score_row({"frames": clip[:1]})
    assert out["text_area_ratio"] == pytest.approx(alone["text_area_ratio"])


def test_frames_to_read_follows_the_clip_duration():
    # One frame per started 4 s, at least 1, at most num_frames; no usable duration (or 0 s per frame): num_frames.
    assert [frames_to_read(3, 4.0, d) for d in (0.6, 3.0, 4.0, 4.2, 8.0, 8.5, 60.0)] == [1, 1, 1, 2, 2, 3, 3]
    assert [frames_to_read(3, 4.0, d) for d in (None, float("nan"), 0.0, -1.0, "x")] == [3] * 5
    assert frames_to_read(3, 0.0, 3.0) == 3 and frames_to_read(5, 1.0, 4.5) == 5


def test_short_clips_are_read_on_fewer_frames(op, monkeypatch):
    """A caption that changes in the last frames: a 3 s clip is read on its middle frame only (one detector call, the
    first caption), a 9 s clip on 3 frames (both captions), and `seconds_per_frame: 0` reads 3 frames of any clip."""
    bg = _background()
    f1, _ = _render(bg, "First caption here", (40, 200), 24, LATIN_FONT)
    f2, _ = _render(bg, "Second caption now", (40, 200), 24, LATIN_FONT)
    frames = np.stack([f1] * 6 + [f2] * 2)
    engine = op._engine
    calls = []
    detect = engine.detect
    monkeypatch.setattr(engine, "detect", lambda *a, **k: calls.append(1) or detect(*a, **k))
    short = op.score_row({"frames": frames, "duration_s": 3.0})["ocr_text"]
    assert len(calls) == 1 and short.split("\n") == ["First caption here"], short
    calls.clear()
    long = op.score_row({"frames": frames, "duration_s": 9.0})["ocr_text"].split("\n")
    # Frames 0, 4 and 7 are read; 4 shows the same picture as 0, so the detector runs twice.
    assert len(calls) == 2 and len(long) == 2 and _recall("Second caption now", long[1]) >= 0.9, long
    every = OcrText(seconds_per_frame=0)
    every._engine = engine
    calls.clear()
    assert every.score_row({"frames": frames, "duration_s": 3.0})["ocr_text"].split("\n") == long
    assert len(calls) == 2


def test_rewritten_graphs_read_the_same(op):
    """The operator runs the rewritten PP-OCR graphs (operators.models.onnxfold) and reads what the original graphs read."""
    assert set(op._engine.folded) == {"det", "rec"}, op._engine.folded
    plain = OcrText(fold_graphs=False)
    plain.setup()
    assert plain._engine.folded == {}
    bg = _background(568, 320)
    for text, font, size in (("The weather will be sunny tomorrow.", LATIN_FONT, 20), ("今天的天气非常好", CJK_FONT, 20),
                             ("请大家系好安全带", CJK_FONT, 12)):
        frame, _ = _render(bg, text, (40, 260), size, font, stroke=1)
        clip = np.stack([bg] * 4 + [frame] * 4)
        a, b = op.score_row({"frames": clip}), plain.score_row({"frames": clip})
        assert a["ocr_text"] == b["ocr_text"] and _recall(text, a["ocr_text"]) >= 0.9, (a, b)
        assert a["text_area_ratio"] == pytest.approx(b["text_area_ratio"], abs=1e-4)
