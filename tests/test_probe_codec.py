"""`codec` names the stream's codec (`av1`), not the decoder FFmpeg chose for it (`libdav1d`)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import av
import numpy as np
import pytest

from curation.config import LimitsConfig
from curation.ingest.probe import codec_name, probe


def _write(path, encoder: str, n: int = 6, size: int = 64) -> None:
    with av.open(str(path), "w") as c:
        s = c.add_stream(encoder, rate=24)
        s.width = s.height = size
        s.pix_fmt = "yuv420p"
        for i in range(n):
            frame = av.VideoFrame.from_ndarray(np.full((size, size, 3), 20 * i, np.uint8), format="rgb24")
            for p in s.encode(frame):
                c.mux(p)
        for p in s.encode():
            c.mux(p)


@pytest.mark.parametrize("encoder, codec", [("libsvtav1", "av1"), ("libx264", "h264"), ("mpeg4", "mpeg4")])
def test_probe_names_the_codec(tmp_path, encoder, codec):
    if encoder not in av.codecs_available:
        pytest.skip(f"this FFmpeg has no {encoder} encoder")
    path = tmp_path / f"clip_{codec}.mp4"
    # In a child process: SVT-AV1 (libsvtav1) run as root switches the calling thread to SCHED_FIFO 99, and every
    # process the test process started after that (Ray workers, Chromium) inherited real-time priority and starved
    # the machine (conftest.py's guard fails a test that leaves the process so).
    code = f"import sys; sys.path.insert(0, {str(Path(__file__).parent)!r}); import test_probe_codec as t; " \
           f"t._write({str(path)!r}, {encoder!r})"
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    info = probe(str(path), path.read_bytes()[:64], LimitsConfig())
    assert info.codec == codec


def test_decoder_library_maps_to_its_codec():
    # Real decoder contexts of the libraries FFmpeg prefers for AV1 and VP9 (when built with them).
    for decoder, codec in (("libdav1d", "av1"), ("libvpx-vp9", "vp9"), ("h264", "h264")):
        if decoder not in av.codecs_available:
            continue
        ctx = av.codec.Codec(decoder, "r").create()
        assert ctx.name == decoder and codec_name(ctx) == codec
