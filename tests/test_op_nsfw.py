"""NudeNet NSFW scoring: parity with the library's own detector (class branch and full graph), the exposed-class rule,
clean pictures score low, a repeated picture is scored once."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest
import skimage.data

from curation import models
from operators.nsfw import (EXPOSED_CLASSES, NUDENET_LABELS, NudeNetNsfw, NudeNetSession, class_scores,
                            exposed_score, letterbox)


@pytest.fixture(scope="module")
def session() -> NudeNetSession:
    return NudeNetSession(str(models.resolve("nudenet")))


def test_labels_match_the_installed_package():
    import nudenet.nudenet as nn

    assert tuple(nn.__labels) == NUDENET_LABELS
    assert set(EXPOSED_CLASSES) <= set(NUDENET_LABELS)


def test_same_confidence_as_nudedetector(session):
    """Our batched, rectangular-letterbox, class-branch-only path reports what NudeDetector.detect reports (a face on
    a photo)."""
    from nudenet import NudeDetector

    lib = NudeDetector()
    face = NUDENET_LABELS.index("FACE_FEMALE")
    img = skimage.data.astronaut()
    for frame, tol in ((img, 1e-4), (cv2.resize(img, (480, 272)), 0.03)):  # square: identical input; 16:9: less padding
        dets = [d for d in lib.detect(np.ascontiguousarray(frame[..., ::-1])) if d["class"] == "FACE_FEMALE"]
        ours = session.scores([frame])[0]
        mine = ours[ours.argmax(axis=1) == face, face].max()
        assert mine == pytest.approx(max(d["score"] for d in dets), abs=tol)


def test_class_branch_is_the_full_graph_class_rows(session):
    """The graph cut to the class heads gives the full graph's class confidences, anchor for anchor."""
    assert len(session.heads) == 3  # the cut happened (else the full graph runs)
    frames = [cv2.resize(p, (480, 272)) for p in (skimage.data.astronaut(), skimage.data.coffee())]
    cut, full = session.scores(frames), class_scores(session.raw(frames))
    assert cut.shape == full.shape == (2, 40 * 24 + 20 * 12 + 10 * 6, len(NUDENET_LABELS))
    np.testing.assert_allclose(cut, full, atol=1e-6)
    # The cut graph has far fewer nodes: the box heads and DFL decoding are gone.
    assert len(session.session.get_outputs()) == 3


@pytest.fixture
def counted(monkeypatch) -> tuple[NudeNetNsfw, list[int]]:
    """A set-up operator and the number of frames of each network call it makes."""
    op = NudeNetNsfw()
    op.setup()
    seen: list[int] = []
    scores = op._engine.scores
    monkeypatch.setattr(op._engine, "scores", lambda frames: seen.append(len(frames)) or scores(frames))
    return op, seen


def _moving() -> np.ndarray:
    still = cv2.resize(skimage.data.chelsea(), (480, 272))
    return np.stack([np.roll(still, 6 * i, axis=1) for i in range(8)])


def test_a_repeated_picture_is_scored_once(counted):
    op, seen = counted
    rng = np.random.default_rng(0)
    still = cv2.resize(skimage.data.chelsea(), (480, 272))
    grainy = np.stack([np.clip(still + rng.normal(0, 1.2, still.shape[:2])[..., None].round(), 0, 255)
                       for _ in range(8)]).astype(np.uint8)
    moving = _moving()
    a = op.score_row({"frames": grainy})["nsfw_score"]
    b = op.score_row({"frames": moving})["nsfw_score"]
    assert seen == [1, 3]
    assert a == pytest.approx(exposed_score(op._engine.scores([grainy[0]])), abs=1e-6)  # the first frame alone
    assert b == pytest.approx(exposed_score(class_scores(op._engine.raw([moving[i] for i in (0, 4, 7)]))), abs=1e-6)


def test_frames_scored_follow_the_clip_duration(counted):
    op, seen = counted
    moving = _moving()
    for duration in (2.0, 3.9, 6.0, 12.0, None):
        op.score_row({"frames": moving, "duration_s": duration})
    assert seen == [1, 1, 2, 3, 3]
    # The one frame of a short clip is the middle one.
    short = op.score_row({"frames": moving, "duration_s": 3.0})["nsfw_score"]
    assert short == pytest.approx(exposed_score(op._engine.scores([moving[3]])), abs=1e-6)


def test_exposed_score_uses_the_argmax_class():
    scores = np.zeros((1, 3, len(NUDENET_LABELS)), np.float32)
    exposed = NUDENET_LABELS.index("BUTTOCKS_EXPOSED")
    covered = NUDENET_LABELS.index("BUTTOCKS_COVERED")
    scores[0, 0, exposed], scores[0, 0, covered] = 0.4, 0.6  # the anchor is "covered": does not count
    scores[0, 1, NUDENET_LABELS.index("FEET_EXPOSED")] = 0.9  # not an exposed-body class
    assert exposed_score(scores) == 0.0
    scores[0, 2, NUDENET_LABELS.index("FEMALE_BREAST_EXPOSED")] = 0.7
    assert exposed_score(scores) == pytest.approx(0.7)


def test_letterbox_keeps_aspect_and_stride():
    x = letterbox(np.zeros((272, 480, 3), np.uint8))
    assert x.shape == (3, 192, 320)  # 320 x 181 padded to a multiple of 32, not to 320 x 320


def test_clean_pictures_score_low():
    op = NudeNetNsfw()
    frames = [cv2.resize(p, (480, 272)) for p in (skimage.data.astronaut(), skimage.data.coffee(),
                                                    skimage.data.chelsea(), skimage.data.rocket())]
    batch = {
        "sample_id": np.array(["clip", "image"], dtype=object),
        "status": np.array(["kept", "kept"], dtype=object),
        "frames": np.array([np.stack(frames), frames[0][None]], dtype=object),
    }
    out = op(batch)
    assert all(0.0 <= s < 0.2 for s in out["nsfw_score"]), out["nsfw_score"]


def test_model_is_not_loaded_at_import():
    code = "import sys, operators.nsfw; assert 'onnxruntime' not in sys.modules and 'nudenet' not in sys.modules"
    subprocess.run([sys.executable, "-c", code], check=True, cwd=Path(__file__).resolve().parents[1])
