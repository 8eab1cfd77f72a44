"""The CPU operators on the labeled sample set (curation.testing.samples), decoded the pipeline's way (curation.ingest.frames).

Checks the calibrated defaults against ground truth on two seeds: motion tier accuracy >= 90 %, OCR character recall
>= 90 % for English and Chinese subtitles, every corner-logo clip above the watermark threshold and no clean clip,
nothing flagged NSFW. Slow (it renders and encodes ~30 small videos per seed).
"""

from __future__ import annotations

import difflib

import pandas as pd
import pytest

from curation.config import FramesConfig
from curation.ingest.frames import decode_image_views, decode_video_views
from curation.testing.samples import make_samples
from operators.motion import MotionGrading
from operators.nsfw import NudeNetNsfw
from operators.ocr import OcrText
from operators.watermark import WatermarkDetector

pytestmark = pytest.mark.slow

WATERMARK_THRESHOLD = 0.5  # the suggested decide threshold
NSFW_THRESHOLD = 0.5


def _clips(root, labels: pd.DataFrame):
    """(label row, frame views) per clip; a hard-cut video is split at its labelled cut, like the splitter does."""
    cfg = FramesConfig()
    for r in labels.itertuples():
        path = str(root / r.file)
        if r.media_type == "image":
            yield r, decode_image_views(path, cfg).as_columns()
        elif r.media_type == "video" and r.expected_status == "kept":
            n = int(r.num_frames)
            cut = None if pd.isna(r.cut_frame) else int(r.cut_frame)
            for a, b in ([(0, cut), (cut, n)] if cut else [(0, n)]):
                views = decode_video_views(path, a, b, float(r.fps), (int(r.width), int(r.height)), 0, cfg)
                # The clip's duration, as the splitter writes it: OCR and NSFW pick their frames by it.
                yield r, {**views.as_columns(), "duration_s": (b - a) / float(r.fps)}


def _recall(truth: str, read: str) -> float:
    t, r = "".join(truth.split()), "".join(read.split())
    return sum(b.size for b in difflib.SequenceMatcher(None, t, r, autojunk=False).get_matching_blocks()) / len(t)


@pytest.fixture(scope="module")
def ops():
    out = {"motion": MotionGrading(), "watermark": WatermarkDetector(), "ocr": OcrText(), "nsfw": NudeNetNsfw()}
    for op in out.values():
        op.setup()
    return out


@pytest.mark.parametrize("seed", [0, 1])
def test_operators_on_the_sample_set(tmp_path, ops, seed):
    labels = make_samples(tmp_path, seed)
    hits, graded, recall, logos, clean = 0, 0, {}, [], []
    for r, views in _clips(tmp_path, labels):
        tier = r.expected_motion_tier if isinstance(r.expected_motion_tier, str) else None
        m = ops["motion"].score_row(views)
        if tier:
            graded += 1
            hits += m["motion_tier"] == tier
        w = ops["watermark"].score_row(views).get("watermark_score")
        if r.has_watermark:
            logos.append((r.file, w))
        elif w is not None:
            clean.append((r.file, w))
        if isinstance(r.subtitle_text, str):
            text = ops["ocr"].score_row(views)["ocr_text"]
            recall.setdefault(r.subtitle_lang, []).append(_recall(r.subtitle_text, text))
        assert ops["nsfw"].score_row(views)["nsfw_score"] < NSFW_THRESHOLD, r.file
    assert graded >= 24 and hits / graded >= 0.9, (hits, graded)
    assert len(logos) == 3 and all(s > WATERMARK_THRESHOLD for _, s in logos), logos
    assert all(s < WATERMARK_THRESHOLD for _, s in clean), max(clean, key=lambda x: x[1])
    assert set(recall) == {"en", "zh"}
    for lang, values in recall.items():
        assert sum(values) / len(values) >= 0.9, (lang, values)
