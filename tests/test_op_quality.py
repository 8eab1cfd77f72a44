"""Technical quality against ground truth made on the spot: known blur, known resolution, known bars, known exposure."""

from __future__ import annotations

import cv2
import numpy as np
import pyarrow as pa
import pytest
import skimage.data

from operators.quality import TechnicalQuality, detect_black_border, quality_scores, to_gray


def _photo(width: int, src=None) -> np.ndarray:
    src = skimage.data.coffee() if src is None else src
    h = int(round(width * src.shape[0] / src.shape[1]))
    return cv2.resize(src, (width, h), interpolation=cv2.INTER_AREA)


def _clip(frame: np.ndarray, k: int = 4) -> np.ndarray:
    return np.stack([frame] * k)


@pytest.mark.parametrize("src", [skimage.data.coffee(), skimage.data.chelsea(), skimage.data.rocket()])
def test_sharpness_falls_with_known_blur(src):
    frame = _photo(400, src)
    scores = [quality_scores(_clip(cv2.GaussianBlur(frame, (0, 0), s) if s else frame))["sharpness"]
              for s in (0, 1, 2, 3)]
    assert scores == sorted(scores, reverse=True), scores
    assert scores[0] / scores[2] >= 4.0, scores  # a 2 px blur is plainly visible in the score


@pytest.mark.parametrize("src", [skimage.data.coffee(), skimage.data.chelsea(), skimage.data.astronaut()])
def test_sharpness_does_not_depend_on_resolution(src):
    scores = [quality_scores(_clip(_photo(w, src)))["sharpness"] for w in (600, 400, 300)]
    assert max(scores) / min(scores) < 1.6, scores
    # ... while a real blur at one resolution moves it far more than the resolution change does.
    blurred = quality_scores(_clip(cv2.GaussianBlur(_photo(400, src), (0, 0), 2)))["sharpness"]
    assert scores[1] / blurred > 1.5 * max(scores) / min(scores)


def test_exposure_clipping_and_luma():
    frame = _photo(320)
    good = quality_scores(_clip(frame))
    over = quality_scores(_clip(np.clip(frame.astype(np.int16) + 190, 0, 255).astype(np.uint8)))
    under = quality_scores(_clip((frame * 0.04).astype(np.uint8)))
    assert good["exposure"] > 0.9
    assert over["clipped_highlights"] > 0.4 and over["exposure"] < 0.5 and over["luma_mean"] > 0.75
    assert under["clipped_shadows"] > 0.4 and under["exposure"] < 0.5 and under["luma_mean"] < 0.1
    assert under["black_border_ratio"] == 0.0  # a dark picture is not a letterbox
    flat = quality_scores(_clip(np.full((180, 320, 3), 128, np.uint8)))
    assert flat["contrast"] < 1e-6 and good["contrast"] > 0.1


def test_letterbox_detected_and_excluded():
    frame = _photo(320)  # 320 x 213
    h, w = frame.shape[:2]
    boxed = cv2.copyMakeBorder(frame, 30, 30, 0, 0, cv2.BORDER_CONSTANT, value=(0, 0, 0))
    # Compression-like noise in the bars must not hide them.
    noise = np.random.default_rng(0).integers(0, 6, boxed.shape, dtype=np.uint8)
    boxed[:30] += noise[:30]
    boxed[-30:] += noise[-30:]
    q = quality_scores(_clip(boxed))
    assert q["black_border_ratio"] == pytest.approx(60 / (h + 60), abs=0.01)
    # The bars are neither "crushed shadows" nor an edge that adds sharpness.
    ref = quality_scores(_clip(frame))
    assert q["clipped_shadows"] == pytest.approx(ref["clipped_shadows"], abs=0.01)
    assert q["sharpness"] == pytest.approx(ref["sharpness"], rel=0.05)
    pillar = cv2.copyMakeBorder(frame, 0, 0, 40, 40, cv2.BORDER_CONSTANT, value=(0, 0, 0))
    assert detect_black_border(to_gray(_clip(pillar))) == (0, 0, 40, 40)


def test_dark_scene_is_not_a_letterbox():
    frame = _photo(320)
    dark_top = frame.copy()
    dark_top[:50] = 0  # a dark sky in one frame only
    gray = to_gray(np.stack([dark_top, frame, frame]))
    assert detect_black_border(gray) == (0, 0, 0, 0)


def test_operator_contract_and_row_isolation():
    op = TechnicalQuality()
    good = _clip(_photo(320))
    batch = {
        "sample_id": np.array(["a", "b", "c"], dtype=object),
        "status": np.array(["kept", "kept", "failed"], dtype=object),
        "error": np.array([None, None, "decode: boom"], dtype=object),
        "frames": np.array([good, np.zeros((0,), np.uint8), good], dtype=object),
    }
    out = op(batch)
    assert set(TechnicalQuality.produces) <= set(out)
    assert out["status"].tolist() == ["kept", "failed", "failed"]
    assert out["error"][1].startswith("quality:") and out["error"][2] == "decode: boom"
    assert out["sharpness"][0] > 0 and out["sharpness"][1] is None and out["sharpness"][2] is None
    arr = pa.array(out["sharpness"].tolist(), type=pa.float64())
    assert arr.null_count == 2
