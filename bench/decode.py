"""Decode throughput (frames/s): decord vs PyAV, full vs reduced resolution, and decode-once vs decode-per-operator.

    .venv/bin/python bench/decode.py [--samples DIR] [--repeat 3]

Uses the labeled sample videos (generated if DIR is missing) plus one 1280x720 clip made here, so that the
reduced-resolution path has something to reduce. All numbers in one run are comparable with each other; quote ratios.
"""

from __future__ import annotations

import argparse
import os
import platform
import tempfile
import time
from pathlib import Path

import av
import cv2
import decord
import numpy as np
import pandas as pd

from curation.config import FramesConfig
from curation.ingest.frames import decode_video_views, sample_indices, scaled_size


def make_hd_clip(path: Path, n: int = 96) -> None:
    """A 1280x720 pan over an upscaled real photo (scikit-image), H.264."""
    from skimage import data

    photo = cv2.resize(data.astronaut(), (2400, 2400), interpolation=cv2.INTER_CUBIC)
    with av.open(str(path), "w") as c:
        s = c.add_stream("libx264", rate=24)
        s.width, s.height, s.pix_fmt = 1280, 720, "yuv420p"
        s.options = {"crf": "20", "preset": "veryfast"}
        for i in range(n):
            f = photo[400 + i: 1120 + i, 200 + 4 * i: 1480 + 4 * i]
            for p in s.encode(av.VideoFrame.from_ndarray(np.ascontiguousarray(f), format="rgb24")):
                c.mux(p)
        for p in s.encode():
            c.mux(p)


def decord_all(path: str, size: tuple[int, int] | None) -> int:
    """Decode every frame with decord (optionally decoder-side resized); return the frame count."""
    kw = {"width": size[0], "height": size[1]} if size else {}
    vr = decord.VideoReader(path, ctx=decord.cpu(0), num_threads=1, **kw)
    n = len(vr)
    for start in range(0, n, 32):
        vr.get_batch(list(range(start, min(n, start + 32)))).asnumpy()
    return n


def pyav_all(path: str, size: tuple[int, int] | None) -> int:
    """Decode every frame with PyAV to RGB (optionally scaled by swscale); return the frame count."""
    n = 0
    with av.open(path) as c:
        st = c.streams.video[0]
        st.thread_count = 1  # same single decoder thread as decord, so the columns compare decoders, not threads
        for frame in c.decode(st):
            if size:
                frame.to_ndarray(width=size[0], height=size[1], format="rgb24")
            else:
                frame.to_ndarray(format="rgb24")
            n += 1
    return n


def timed(fn, *args, repeat: int = 3) -> float:
    """Best wall time of `repeat` calls."""
    best = float("inf")
    for _ in range(repeat):
        t = time.perf_counter()
        fn(*args)
        best = min(best, time.perf_counter() - t)
    return best


def main() -> None:
    """Run the benchmark and print a Markdown table."""
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--samples", default="data/samples")
    ap.add_argument("--repeat", type=int, default=3)
    args = ap.parse_args()
    samples = Path(args.samples)
    if not (samples / "labels.parquet").exists():
        from curation.testing.samples import make_samples

        make_samples(samples, seed=0)
    labels = pd.read_parquet(samples / "labels.parquet")
    vids = labels[(labels["media_type"] == "video") & (labels["expected_status"] != "failed")]
    tmp = Path(tempfile.mkdtemp())
    hd = tmp / "hd_1280x720.mp4"
    make_hd_clip(hd)
    sets = {
        "sample videos (480x272 / 640x360)": [(str(samples / f), int(w), int(h)) for f, w, h in
                                            zip(vids["file"], vids["width"], vids["height"])],
        "1280x720 clip": [(str(hd), 1280, 720)],
    }
    cfg = FramesConfig()
    rows = []
    for name, files in sets.items():
        frames_total = sum(decord_all(p, None) for p, _, _ in files)
        res = {}
        for label, fn, reduced in [("decord full", decord_all, False), ("decord reduced", decord_all, True),
                                   ("PyAV full", pyav_all, False), ("PyAV reduced", pyav_all, True)]:
            t = sum(timed(fn, p, scaled_size(w, h, 320) if reduced else None, repeat=args.repeat)
                    for p, w, h in files)
            res[label] = frames_total / t
        # Decode once (our path): both views of the whole clip from one decord call.
        t_once = 0.0
        t_per_op = 0.0
        for p, w, h in files:
            n = len(decord.VideoReader(p))
            t_once += timed(lambda: decode_video_views(p, 0, n, 24.0, (w, h), 0, cfg), repeat=args.repeat)
            uni, mot, _ = sample_indices(0, n, 24.0, cfg)

            def per_op():
                # The naive graph: each of 4 frame consumers (quality, OCR, NSFW, motion) decodes its own frames
                # at source resolution.
                for idx in (uni, uni, uni, mot):
                    vr = decord.VideoReader(p, ctx=decord.cpu(0), num_threads=1)
                    vr.get_batch(idx.tolist()).asnumpy()

            t_per_op += timed(per_op, repeat=args.repeat)
        rows.append((name, frames_total, res, len(files) / t_once, len(files) / t_per_op))
    print(f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} cores; decoder threads: 1\n")
    print("| video set | frames | decord full | decord reduced | PyAV full | PyAV reduced | clips/s decode-once views "
          "| clips/s decode per operator (4x) |")
    print("|---|---|---|---|---|---|---|---|")
    for name, n, res, once, per_op in rows:
        print(f"| {name} | {n} | {res['decord full']:.0f} | {res['decord reduced']:.0f} | {res['PyAV full']:.0f} | "
              f"{res['PyAV reduced']:.0f} | {once:.1f} | {per_op:.1f} ({once / per_op:.1f}x slower) |")
    print("\nframes/s columns: every frame of every clip decoded to RGB (reduced = short side 320).")


if __name__ == "__main__":
    main()
