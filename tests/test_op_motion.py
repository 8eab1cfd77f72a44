"""Motion grading against known flow: synthetic clips with a known camera move, object move, jitter or flicker."""

from __future__ import annotations

import math

import cv2
import numpy as np
import pytest
import skimage.data

from operators.motion import (DEFAULT_TIER_PARAMS, MotionGrading, dense_flow, detrended_rms, grade, make_flow,
                              motion_stats)

W, H, FPS = 320, 180, 4.0
DIAG = math.hypot(W, H)


def _scene(seed: int = 0) -> np.ndarray:
    """A large grey photo to move a camera window over."""
    src = [skimage.data.coffee(), skimage.data.chelsea(), skimage.data.astronaut()][seed % 3]
    return cv2.cvtColor(cv2.resize(src, (720, 480), interpolation=cv2.INTER_AREA), cv2.COLOR_RGB2GRAY)


def _window(scene: np.ndarray, x: float, y: float, angle: float = 0.0) -> np.ndarray:
    m = cv2.getRotationMatrix2D((x + W / 2, y + H / 2), angle, 1.0)
    m[:, 2] -= (x, y)
    return cv2.warpAffine(scene, m, (W, H), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REFLECT101)


def _pan(vx: float, vy: float, n: int = 12, seed: int = 0) -> np.ndarray:
    scene = _scene(seed)
    return np.stack([_window(scene, 150 + vx * i, 120 + vy * i) for i in range(n)])


def _still(n: int = 12, seed: int = 0, noise: float = 1.5) -> np.ndarray:
    rng = np.random.default_rng(seed)
    base = _window(_scene(seed), 150, 120).astype(np.float32)
    return np.stack([np.clip(base + rng.normal(0, noise, base.shape), 0, 255).astype(np.uint8) for _ in range(n)])


def _object(speed: float, size: tuple[int, int], n: int = 12) -> np.ndarray:
    frames = _still(n, seed=1)
    patch = _window(_scene(2), 0, 0)[: size[1], : size[0]]
    for i, f in enumerate(frames):
        x = int(10 + speed * i)
        f[70 : 70 + size[1], x : x + size[0]] = patch
    return frames


def test_dis_recovers_known_shift():
    scene = _scene()
    dis = make_flow()
    a = _window(scene, 150, 120)
    for dx, dy in [(3, 0), (12, 5), (25, -10)]:
        flow = dense_flow(dis, a, _window(scene, 150 - dx, 120 - dy))
        inner = flow[20:-20, 30:-30].reshape(-1, 2)
        assert np.median(inner[:, 0]) == pytest.approx(dx, abs=0.5)
        assert np.median(inner[:, 1]) == pytest.approx(dy, abs=0.5)


def test_known_pan_gives_known_camera_motion():
    s = motion_stats(_pan(8, 0), FPS)
    expected = 8 * FPS / DIAG  # content moves 8 px per pair; diagonals per second
    assert s["motion_score"] == pytest.approx(expected, rel=0.1)
    assert s["camera_motion"] == pytest.approx(expected, rel=0.1)
    assert s["object_motion"] < 0.1 * s["camera_motion"]
    assert s["shake_score"] < 0.001
    assert grade(s) == "camera_driven"


def test_still_shot_is_static():
    s = motion_stats(_still(), FPS)
    assert s["motion_score"] < 0.002 and s["object_motion_peak"] < DEFAULT_TIER_PARAMS["static_peak"] / 1.5
    assert grade(s) == "static"


def test_object_motion_is_separated_from_camera():
    big = motion_stats(_object(15, (110, 80)), FPS)
    assert big["object_motion"] > 10 * big["camera_motion"]
    assert grade(big) == "optimal"
    small = motion_stats(_object(4, (30, 24)), FPS)
    assert small["object_motion"] < DEFAULT_TIER_PARAMS["optimal_object_min"]
    assert small["object_motion_peak"] > DEFAULT_TIER_PARAMS["static_peak"]
    assert grade(small) == "medium"


def test_jitter_is_shaky_but_a_steady_pan_is_not():
    rng = np.random.default_rng(3)
    scene = _scene()
    jitter = np.stack([_window(scene, 150 + 2 * i + rng.uniform(-5, 5), 120 + rng.uniform(-5, 5),
                               angle=rng.uniform(-0.8, 0.8)) for i in range(12)])
    s = motion_stats(jitter, FPS)
    assert s["shake_score"] > DEFAULT_TIER_PARAMS["shaky_shake"]
    assert grade(s) == "shaky"
    steady = motion_stats(_pan(6, 2), FPS)
    assert steady["shake_score"] < DEFAULT_TIER_PARAMS["shaky_shake"] / 3


def test_detrending_keeps_a_straight_path_straight():
    t = np.arange(12, dtype=float)[:, None]
    assert detrended_rms(np.hstack([3 * t, -t]), 5) < 1e-9
    zigzag = np.hstack([3 * t + 4 * (-1) ** t, 0 * t])
    assert detrended_rms(zigzag, 5) > 2.0


def test_flicker_and_incoherent_motion_are_low_quality():
    rng = np.random.default_rng(4)
    still = _still()
    flick = np.stack([np.clip(f.astype(np.int16) + int(rng.choice([-1, 1]) * rng.uniform(20, 30)), 0, 255)
                      .astype(np.uint8) for f in still])
    s = motion_stats(flick, FPS)
    assert s["flicker_score"] > DEFAULT_TIER_PARAMS["low_quality_flicker"]
    assert grade(s) == "low_quality"
    # Three horizontal bands, each jumping to its own random offset every frame: flow that does not hang together.
    scene = _scene()
    bands = []
    for _ in range(12):
        f = np.empty((H, W), np.uint8)
        for y0, y1 in ((0, 60), (60, 120), (120, 180)):
            r, th = rng.uniform(10, 25), rng.uniform(0, 2 * math.pi)
            f[y0:y1] = _window(scene, 150 + r * math.cos(th), 120 + r * math.sin(th))[y0:y1]
        bands.append(f)
    s = motion_stats(np.stack(bands), FPS)
    assert s["motion_incoherence"] > DEFAULT_TIER_PARAMS["low_quality_incoherence"]
    assert grade(s) == "low_quality"


def test_scores_do_not_depend_on_sampling_rate_or_size():
    fast = motion_stats(_pan(8, 0), 4.0)
    slow = motion_stats(_pan(16, 0), 2.0)  # same speed per second, sampled half as often
    assert slow["motion_score"] == pytest.approx(fast["motion_score"], rel=0.1)
    small = motion_stats(np.stack([cv2.resize(f, (W // 2, H // 2), interpolation=cv2.INTER_AREA)
                                   for f in _pan(8, 0)]), 4.0)
    assert small["motion_score"] == pytest.approx(fast["motion_score"], rel=0.15)


def test_operator_images_get_nulls_and_tiers_come_from_config():
    op = MotionGrading(static_motion=1.0, static_peak=1.0)  # everything slower than 1 diagonal/s is "static"
    batch = {
        "sample_id": np.array(["clip", "image"], dtype=object),
        "status": np.array(["kept", "kept"], dtype=object),
        "motion_frames": np.array([_pan(8, 0), _still(1)], dtype=object),
        "motion_fps": np.array([4.0, 0.0]),
    }
    out = op(batch)
    assert out["motion_tier"].tolist() == ["static", None]
    assert out["motion_score"][1] is None and out["status"].tolist() == ["kept", "kept"]
    with pytest.raises(Exception, match="shaky_shake"):
        MotionGrading(shaky_shake=-1)


def test_operator_pickles_after_use():
    import pickle

    op = MotionGrading()
    first = op.score_row({"motion_frames": _pan(8, 0), "motion_fps": 4.0})
    clone = pickle.loads(pickle.dumps(op))  # what Ray does when it ships an operator to a worker
    assert clone.score_row({"motion_frames": _pan(8, 0), "motion_fps": 4.0}) == first
