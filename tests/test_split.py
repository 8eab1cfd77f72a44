"""Clip splitting: scene cuts found frame-accurately on real encoded video; long scenes cut at the max."""

import av
import numpy as np
import pytest
from sklearn.datasets import load_sample_images

from curation.config import SplitConfig
from curation.ingest.split import clips_from_cuts, split_video


def test_clips_from_cuts_balances_long_scenes():
    assert clips_from_cuts(100, [40], fps=10.0, max_clip_s=10.0) == [(0, 40), (40, 100)]
    clips = clips_from_cuts(250, [], fps=10.0, max_clip_s=10.0)
    assert [e - s for s, e in clips] == [83, 84, 83]
    assert clips[0][0] == 0 and clips[-1][1] == 250
    assert all(b[0] == a[1] for a, b in zip(clips, clips[1:]))


def _write(path, frames, fps=24):
    with av.open(str(path), "w") as c:
        s = c.add_stream("libx264", rate=fps)
        s.height, s.width = frames[0].shape[:2]
        s.pix_fmt = "yuv420p"
        for f in frames:
            for p in s.encode(av.VideoFrame.from_ndarray(f, format="rgb24")):
                c.mux(p)
        for p in s.encode():
            c.mux(p)


@pytest.mark.parametrize("cut", [37, 52])
def test_hard_cut_detected_within_two_frames(tmp_path, cut):
    a, b = load_sample_images().images
    # Scene 1 pans slowly over one photo, scene 2 over another: content moves, yet only the cut is a scene change.
    s1 = [a[40:312, 10 + i: 490 + i] for i in range(cut)]
    s2 = [b[60:332, 20 + i: 500 + i] for i in range(90 - cut)]
    path = tmp_path / "cut.mp4"
    _write(path, s1 + s2)
    res = split_video(str(path), 24.0, (480, 272), SplitConfig())
    assert res.num_frames == 90
    assert len(res.clips) == 2
    assert abs(res.clips[1][0] - cut) <= 2
    assert res.clips[0] == (0, res.clips[1][0]) and res.clips[1][1] == 90


def test_truncated_video_keeps_decodable_frames(tmp_path):
    a = load_sample_images().images[0][:272, :480]
    rng = np.random.default_rng(0)
    frames = [np.clip(a.astype(int) + rng.integers(-20, 20, a.shape), 0, 255).astype(np.uint8) for _ in range(48)]
    path = tmp_path / "full.mp4"
    _write(path, frames)
    data = path.read_bytes()
    cut = tmp_path / "trunc.mp4"
    cut.write_bytes(data[: int(len(data) * 0.6)])
    with pytest.raises(Exception):
        # mp4 with its index at the end: a truncated one cannot even be opened.
        split_video(str(cut), 24.0, (480, 272), SplitConfig())


def _gif(path, n: int, delay_ms: int = 100):
    """A GIF of `n` frames in which a yellow bar moves 5 px per frame (n=1: a still GIF)."""
    from PIL import Image

    frames = []
    for i in range(n):
        a = np.zeros((120, 160, 3), np.uint8)
        a[:] = (40, 80, 120)
        a[30:70, 5 * i:5 * i + 20] = (250, 200, 0)
        frames.append(Image.fromarray(a))
    frames[0].save(path, save_all=n > 1, append_images=frames[1:], duration=delay_ms, loop=0)
    return path


def test_animated_gif_is_a_video_and_a_still_gif_an_image(tmp_path):
    """An animated GIF is read as the short video it is (every frame, its timing), not as its first frame."""
    from dataclasses import asdict

    from curation.config import FramesConfig, LimitsConfig, SplitConfig
    from curation.ingest.jobs import decode_views, probe_and_split

    anim = _gif(tmp_path / "anim.gif", 30)
    got = probe_and_split(str(anim), asdict(SplitConfig()), asdict(LimitsConfig()), 30)
    info = got["info"]
    assert (info["media_type"], info["codec"], info["fps"], info["duration_s"]) == ("video", "gif", 10.0, 3.0)
    assert got["num_frames"] == 30 and got["clips"] == [[0, 30]]
    views = decode_views(str(anim), "video", 0, 30, info["fps"], (160, 120), 0, asdict(FramesConfig()),
                         LimitsConfig().max_pixels, 30)
    assert len(views.frames) == FramesConfig().num_frames
    for idx, frame in zip(views.frame_indices, views.frames):
        yellow = np.where((frame[50, :, 0] > 200) & (frame[50, :, 2] < 100))[0]
        assert abs(int(yellow.min()) - 5 * int(idx)) <= 2  # frame k shows the bar where frame k has it
    still = _gif(tmp_path / "still.gif", 1)
    info = probe_and_split(str(still), asdict(SplitConfig()), asdict(LimitsConfig()), 30)["info"]
    assert (info["media_type"], info["num_frames"]) == ("image", 1)
