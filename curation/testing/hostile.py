"""A corpus of hostile inputs: files that must each become one `failed` or `rejected` row with a clear reason (or a
correct `kept` row, for odd but valid media), without killing a worker, blowing up memory or hanging.

`make_hostile(DIR)` writes the corpus and returns one `HostileFile` per entry (what it is, what status the pipeline
must give it, and a substring its `error` / `reject_reasons` must contain). Everything is generated with PyAV and
Pillow from synthetic pixels, offline and in a few seconds; crafted headers are written byte by byte (an H.264 SPS
declaring 12000×12000 or 100000×100000, a PNG IHDR declaring 100000×100000, an MP4 whose media timescale is 0).

Run `python -m curation.testing.hostile DIR` to write it and print the list.
"""

from __future__ import annotations

import json
import os
import re
import struct
import sys
import zlib
from collections.abc import Iterable
from dataclasses import asdict, dataclass
from fractions import Fraction
from pathlib import Path

import av
import numpy as np

FPS = 24
SMALL = (192, 128)  # (width, height): short side 128 passes demo.yaml's short_side filter


@dataclass
class HostileFile:
    """One entry of the corpus and the outcome the pipeline must produce for it."""

    file: str  # path relative to the corpus dir, as the pipeline will spell it in `source_uri` (see `uri_of`)
    kind: str
    expected_status: str  # failed | rejected | kept | skipped (reported by listing, no row)
    expect: str  # substring of `error` (failed) or of one of `reject_reasons` (rejected); "" for kept
    notes: str
    listed: bool = True  # False: listing must not even produce a row (e.g. a directory symlink loop)


def uri_of(root: str | Path, entry: HostileFile) -> str:
    """The `source_uri` the pipeline gives to an entry of a corpus written under `root`."""
    return os.path.join(os.path.abspath(root), entry.file)


# ----------------------------------------------------------------------------------------------------------------
# Frame synthesis and writers


def index_frame(i: int, w: int, h: int) -> np.ndarray:
    """An RGB frame whose top row of 16×16 blocks spells `i` in binary (8 bits), readable back after lossy coding."""
    f = np.full((h, w, 3), 64, np.uint8)
    f[h // 2:, :, 1] = 160  # a different lower half so the content is not flat
    for bit in range(8):
        if (i >> bit) & 1:
            f[0:16, bit * 16:(bit + 1) * 16] = 255
    return f


def read_index(frame: np.ndarray, block: int = 16) -> int:
    """Inverse of `index_frame` on an RGB frame at the same or a scaled size (block width scales with it)."""
    h, w = frame.shape[:2]
    gray = frame.mean(axis=2) if frame.ndim == 3 else frame
    value = 0
    for bit in range(8):
        x0, x1 = int(bit * block), int((bit + 1) * block)
        cell = gray[int(block * 0.2):int(block * 0.8), x0 + int(block * 0.2):x0 + int(block * 0.8)]
        if cell.size and cell.mean() > 160:
            value |= 1 << bit
    return value


def write_video(path: Path, frames: Iterable[np.ndarray], w: int, h: int, *, pts: Iterable[int] | None = None,
                time_base: Fraction = Fraction(1, FPS), rotation: int | None = None, fmt: str = "mp4",
                options: dict | None = None) -> int:
    """Encode RGB frames as H.264; optional explicit pts (variable frame rate) and display rotation (ccw degrees)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    n = 0
    pts_iter = iter(pts) if pts is not None else None
    with av.open(str(path), "w", format=fmt, options=options or {}) as c:
        s = c.add_stream("libx264", rate=FPS, options={"crf": "23", "preset": "veryfast", "threads": "1"})
        s.width, s.height, s.pix_fmt = w, h, "yuv420p"
        s.codec_context.time_base = time_base
        if rotation is not None:
            s.set_display_rotation(rotation)
        for frame in frames:
            vf = av.VideoFrame.from_ndarray(frame, format="rgb24")
            vf.pts = next(pts_iter) if pts_iter is not None else n
            vf.time_base = time_base
            c.mux(s.encode(vf))
            n += 1
        c.mux(s.encode(None))
    return n


def small_clip(path: Path, n: int = 48) -> None:
    """A valid 2 s 192×128 clip (kept under demo.yaml)."""
    w, h = SMALL
    write_video(path, (index_frame(i, w, h) for i in range(n)), w, h)


# ----------------------------------------------------------------------------------------------------------------
# Crafted headers


class _Bits:
    def __init__(self, data: bytes = b""):
        self.data, self.pos, self.out = data, 0, []

    def u(self, n: int) -> int:
        v = 0
        for _ in range(n):
            v = (v << 1) | ((self.data[self.pos >> 3] >> (7 - (self.pos & 7))) & 1)
            self.pos += 1
        return v

    def ue(self) -> int:
        zeros = 0
        while self.u(1) == 0:
            zeros += 1
        return (1 << zeros) - 1 + self.u(zeros)

    def put(self, n: int, v: int) -> None:
        self.out += [(v >> (n - 1 - i)) & 1 for i in range(n)]

    def put_ue(self, v: int) -> None:
        v += 1
        self.put(v.bit_length() - 1, 0)
        self.put(v.bit_length(), v)

    def written(self) -> bytes:
        bits = self.out + [0] * (-len(self.out) % 8)
        return bytes(int("".join(map(str, bits[i:i + 8])), 2) for i in range(0, len(bits), 8))


def _unescape(nal: bytes) -> bytes:
    out, zeros = bytearray(), 0
    for b in nal:
        if zeros >= 2 and b == 3:
            zeros = 0
            continue
        out.append(b)
        zeros = zeros + 1 if b == 0 else 0
    return bytes(out)


def _escape(rbsp: bytes) -> bytes:
    out, zeros = bytearray(), 0
    for b in rbsp:
        if zeros >= 2 and b <= 3:
            out.append(3)
            zeros = 0
        out.append(b)
        zeros = zeros + 1 if b == 0 else 0
    return bytes(out)


def patch_sps_size(nal: bytes, width: int, height: int) -> bytes:
    """Rewrite an H.264 SPS NAL (header byte included) so that it declares `width`×`height` (multiples of 16)."""
    r = _Bits(_unescape(nal[1:]))

    def cu(n: int) -> None:
        r.put(n, r.u(n))

    def cue() -> int:
        v = r.ue()
        r.put_ue(v)
        return v

    profile = r.u(8)
    r.put(8, profile)
    cu(8)
    cu(8)
    cue()  # seq_parameter_set_id
    if profile in (100, 110, 122, 244, 44, 83, 86, 118, 128, 138, 139, 134, 135):
        if cue() == 3:  # chroma_format_idc
            cu(1)
        cue()
        cue()
        cu(1)
        if r.u(1):
            raise ValueError("SPS with a scaling matrix is not supported")
        r.put(1, 0)
    cue()  # log2_max_frame_num_minus4
    if cue() == 0:  # pic_order_cnt_type
        cue()
    cue()  # max_num_ref_frames
    cu(1)
    r.ue()
    r.ue()
    r.put_ue(width // 16 - 1)
    r.put_ue(height // 16 - 1)
    total = len(r.data) * 8
    stop = max(i for i in range(total) if (r.data[i >> 3] >> (7 - (i & 7))) & 1)  # rbsp_stop_one_bit
    while r.pos < stop:
        cu(1)
    r.put(1, 1)
    return nal[:1] + _escape(r.written())


def h264_declaring(path: Path, width: int, height: int, n: int = 10) -> None:
    """A raw Annex-B H.264 stream (named as the caller likes) of tiny frames whose SPS declares `width`×`height`."""
    tmp = path.with_name(path.name + ".src.h264")
    write_video(tmp, (index_frame(i, 64, 64) for i in range(n)), 64, 64, fmt="h264")
    data = tmp.read_bytes()
    tmp.unlink()
    starts = [m.start() for m in re.finditer(b"\x00\x00\x01", data)]
    out = bytearray(data[:starts[0] + 3])
    for a, b in zip(starts, starts[1:] + [len(data)]):
        nal, trail = data[a + 3:b], b""
        if b < len(data) and nal.endswith(b"\x00"):  # the leading zero of a 4-byte start code
            nal, trail = nal[:-1], b"\x00"
        if nal and nal[0] & 0x1F == 7:
            nal = patch_sps_size(nal, width, height)
        out += nal + trail + (b"\x00\x00\x01" if b < len(data) else b"")
    path.write_bytes(bytes(out))


def _png_chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)


def png_declaring(path: Path, width: int, height: int, rows: int | None = None) -> None:
    """A grayscale PNG whose IHDR declares `width`×`height`; `rows` rows of real (zero) data, else a tiny IDAT.

    With `rows=height` this is a true zlib bomb: a few hundred KB that inflate to width×height bytes.
    """
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    comp = zlib.compressobj(9)
    body = bytearray()
    line = b"\x00" * (width + 1)  # filter byte + one row of zeros
    for _ in range(rows if rows is not None else 1):
        body += comp.compress(line)
    body += comp.flush()
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + _png_chunk(b"IHDR", ihdr) + _png_chunk(b"IDAT", bytes(body))
                     + _png_chunk(b"IEND", b""))


def _patch_box_u32(data: bytearray, box: bytes, offset: int, value: int) -> None:
    i = data.find(box)
    if i < 0:
        raise ValueError(f"no {box!r} box")
    data[i + offset:i + offset + 4] = struct.pack(">I", value)


# ----------------------------------------------------------------------------------------------------------------
# The corpus


# Names that try to break shells, logs, CSVs, path joins and terminals. None of them may reach an output path.
HOSTILE_NAMES = [
    "name with spaces.mp4",
    "quo'te\"s.mp4",
    "ünïcødé 视频 ✓.mp4",
    "new\nline.mp4",
    "tab\tand\rreturn.mp4",
    "$(touch pwned).mp4",
    "-rf --help.mp4",
    "%2e%2e%2f%2e%2e%2fetc%2fpasswd.mp4",
    "back\\slash..\\..\\x.mp4",
    "<img src=x onerror=alert(1)>.mp4",
]
# Hidden names are not sources: listing reports them as skipped (with the reason) instead of making rows.
HIDDEN_NAMES = ["..\\..\\etc\\passwd.mp4", "..mp4", "._clip.mp4"]


def make_hostile(out_dir: str | Path) -> list[HostileFile]:
    """Write the hostile corpus under `out_dir`; return its entries (also written to `out_dir/hostile.json`)."""
    root = Path(out_dir)
    root.mkdir(parents=True, exist_ok=True)
    entries: list[HostileFile] = []

    def add(rel: str, kind: str, status: str, expect: str, notes: str, listed: bool = True) -> None:
        entries.append(HostileFile(rel, kind, status, expect, notes, listed))

    w, h = SMALL
    rng_noise = np.random.default_rng(7)
    # --- broken containers ----------------------------------------------------------------------------------
    full = root / "truncated.mp4"
    write_video(full, (index_frame(i, w, h) for i in range(72)), w, h)
    data = full.read_bytes()
    full.write_bytes(data[: len(data) * 3 // 10])  # moov (the index) is written last: none left
    add("truncated.mp4", "truncated_no_index", "failed", "not a readable video", "H.264 MP4 cut to 30 % (no moov)")

    fs = root / "truncated_faststart.mp4"
    noisy = (np.clip(index_frame(i, w, h).astype(int) + rng_noise.integers(-40, 40, (h, w, 3)), 0, 255)
             .astype(np.uint8) for i in range(72))
    write_video(fs, noisy, w, h, options={"movflags": "faststart"})
    data = fs.read_bytes()
    fs.write_bytes(data[: len(data) // 4])  # index first, then a quarter of the media: the first frames decode
    add("truncated_faststart.mp4", "truncated_tail", "rejected", "duration_s<1.0",
        "faststart MP4 cut to 25 %: the index promises 72 frames, under 24 decode; rows cover only those "
        "(so under 1 s)")

    (root / "empty.mp4").write_bytes(b"")
    add("empty.mp4", "zero_bytes", "failed", "empty file (0 bytes)", "0 bytes")

    rng = np.random.default_rng(5)
    (root / "random_bytes.mp4").write_bytes(rng.bytes(256 * 1024))
    add("random_bytes.mp4", "random_bytes", "failed", "not a recognised image or video", "256 KiB of random bytes")

    (root / "fake_ftyp.mp4").write_bytes(b"\x00\x00\x00\x18ftypisom\x00\x00\x02\x00isomiso2" + rng.bytes(4096))
    add("fake_ftyp.mp4", "fake_header", "failed", "not a readable video", "valid ftyp box, then garbage")

    # --- absurd dimensions ----------------------------------------------------------------------------------
    h264_declaring(root / "sps_12000x12000.mp4", 12000, 12000)
    add("sps_12000x12000.mp4", "absurd_dimensions", "failed", "absurd dimensions 12000x12000",
        "raw H.264 (named .mp4) whose SPS declares 12000x12000 (144 Mpx) over 64x64 slices; refused before decoding")
    h264_declaring(root / "sps_100000x100000.mp4", 100000, 100000)
    add("sps_100000x100000.mp4", "absurd_dimensions", "failed", "no valid size",
        "SPS declares 100000x100000: FFmpeg itself rejects the SPS, the stream has no usable size")
    png_declaring(root / "png_header_100000x100000.png", 100000, 100000)
    add("png_header_100000x100000.png", "png_bomb_header", "failed", "decompression bomb",
        "PNG whose IHDR declares 100000x100000 (10 Gpx) with a tiny IDAT")
    png_declaring(root / "png_zlib_bomb.png", 16384, 16384, rows=16384)
    add("png_zlib_bomb.png", "png_zlib_bomb", "failed", "decompression bomb",
        "real zlib bomb: ~260 KB that inflate to 16384x16384 = 256 MiB")
    png_declaring(root / "png_9000x9000.png", 9000, 9000, rows=9000)
    add("png_9000x9000.png", "png_over_max_pixels", "failed", "absurd dimensions 9000x9000",
        "81 Mpx: under Pillow's bomb threshold, over limits.max_pixels (67 Mpx); refused by our own check")

    # --- frame rates ----------------------------------------------------------------------------------------
    zero = root / "zero_fps.mp4"
    write_video(zero, (index_frame(i, w, h) for i in range(24)), w, h)
    d = bytearray(zero.read_bytes())
    _patch_box_u32(d, b"mdhd", 16, 0)  # media timescale 0: time has no unit, the frame rate is undefined
    zero.write_bytes(bytes(d))
    add("zero_fps.mp4", "zero_frame_rate", "failed", "no usable frame rate", "MP4 whose mdhd timescale is 0")

    # Variable frame rate: gaps of 1, 1, 4 and 2 ticks of 1/48 s (average 24 fps); B-frames reorder on top.
    deltas = [1, 1, 4, 2]
    pts = np.concatenate([[0], np.cumsum([deltas[i % 4] for i in range(71)])]).astype(int).tolist()
    write_video(root / "vfr.mp4", (index_frame(i, w, h) for i in range(72)), w, h, pts=pts,
                time_base=Fraction(1, 48))
    add("vfr.mp4", "variable_frame_rate", "kept", "",
        "72 frames with irregular timestamps; each frame shows its index in binary, so frame indices can be checked")

    # --- odd but valid streams ------------------------------------------------------------------------------
    audio = root / "audio_only.mp4"
    with av.open(str(audio), "w") as c:
        s = c.add_stream("aac", rate=22050)
        t = np.arange(22050 * 2) / 22050
        samples = (0.2 * np.sin(2 * np.pi * 440 * t)).astype(np.float32)
        for k in range(0, len(samples), 1024):
            frame = av.AudioFrame.from_ndarray(samples[None, k:k + 1024], format="fltp", layout="mono")
            frame.sample_rate = 22050
            frame.pts = k
            c.mux(s.encode(frame))
        c.mux(s.encode(None))
    add("audio_only.mp4", "audio_only", "failed", "no video stream (streams: audio)", "2 s AAC tone, no video track")

    write_video(root / "one_frame.mp4", [index_frame(0, w, h)], w, h)
    add("one_frame.mp4", "one_frame", "rejected", "duration_s<1.0", "a single frame (0.04 s)")

    # Rotated: coded landscape 192x128, display matrix says rotate 90 degrees clockwise -> shown 128x192 portrait.
    # The coded frames are the displayed picture turned counter-clockwise, so a correct decoder shows them upright.
    upright = [np.ascontiguousarray(index_frame(i, h, w)) for i in range(48)]  # portrait 128 wide, 192 tall
    coded = [np.ascontiguousarray(np.rot90(f, k=1)) for f in upright]
    write_video(root / "rotated_90.mp4", coded, w, h, rotation=-90)
    add("rotated_90.mp4", "rotated", "kept", "",
        "display matrix: 90 degrees clockwise; width/height must be 128x192 and frames upright (index readable)")

    # --- names ----------------------------------------------------------------------------------------------
    names_dir = root / "names"
    names_dir.mkdir(exist_ok=True)
    small_clip(names_dir / "plain.mp4")
    clip = (names_dir / "plain.mp4").read_bytes()
    add("names/plain.mp4", "plain_name", "kept", "", "reference clip")
    for name in HOSTILE_NAMES:
        (names_dir / name).write_bytes(clip)
        add(f"names/{name}", "hostile_name", "kept", "", f"same clip, file name {name!r}")
    for name in HIDDEN_NAMES:
        (names_dir / name).write_bytes(clip)
        add(f"names/{name}", "hidden_name", "skipped", "hidden file", "hidden: reported by listing as skipped",
            listed=False)
    raw = os.fsencode(str(names_dir)) + b"/bad-\xff\xfe-utf8.mp4"
    with open(raw, "wb") as f:
        f.write(clip)
    add("names/bad-\\xff\\xfe-utf8.mp4", "non_utf8_name", "failed", "not valid UTF-8",
        "file name bytes are not UTF-8; shown with \\x escapes")

    # --- file system traps ----------------------------------------------------------------------------------
    traps = root / "traps"
    traps.mkdir(exist_ok=True)
    os.symlink("loop_b.mp4", traps / "loop_a.mp4")
    os.symlink("loop_a.mp4", traps / "loop_b.mp4")
    add("traps/loop_a.mp4", "symlink_loop", "failed", "symbolic links", "loop_a.mp4 -> loop_b.mp4 -> loop_a.mp4")
    add("traps/loop_b.mp4", "symlink_loop", "failed", "symbolic links", "loop_b.mp4 -> loop_a.mp4 -> loop_b.mp4")
    os.symlink(".", traps / "dir_loop")
    add("traps/dir_loop", "directory_symlink_loop", "skipped", "", "directory symlink to itself: not followed",
        listed=False)
    os.symlink("does/not/exist.mp4", traps / "dangling.mp4")
    add("traps/dangling.mp4", "dangling_symlink", "failed", "file not found", "symlink to nothing")
    os.mkfifo(traps / "fifo.mp4")
    add("traps/fifo.mp4", "fifo", "failed", "not a regular file", "a named pipe: opening it would block forever")
    os.symlink("/dev/zero", traps / "dev_zero.mp4")
    add("traps/dev_zero.mp4", "device", "failed", "not a regular file", "symlink to /dev/zero (endless bytes)")
    unreadable = traps / "unreadable.mp4"
    unreadable.write_bytes(clip)
    os.chmod(unreadable, 0)
    # Root reads through mode 000 (CAP_DAC_OVERRIDE): run the pipeline under `unprivileged_prefix()` to see it fail.
    add("traps/unreadable.mp4", "unreadable", "failed", "permission denied", "mode 000")

    (root / "hostile.json").write_text(json.dumps([asdict(e) for e in entries], indent=1, ensure_ascii=True))
    return entries


def unprivileged_prefix() -> list[str]:
    """A command prefix that runs a program without the capabilities that let root read any file (mode 000 then
    means unreadable, as for any user); empty when not root. Raises if root and `setpriv` is missing."""
    if os.geteuid() != 0:
        return []
    import shutil

    exe = shutil.which("setpriv")
    if exe is None:
        raise RuntimeError("running as root without setpriv (util-linux): cannot make a file unreadable")
    caps = "-dac_override,-dac_read_search"
    return [exe, f"--inh-caps={caps}", f"--bounding-set={caps}"]


def main(argv: list[str] | None = None) -> int:
    """`python -m curation.testing.hostile DIR`: write the corpus and list it."""
    argv = sys.argv[1:] if argv is None else argv
    if len(argv) != 1:
        print("usage: python -m curation.testing.hostile DIR", file=sys.stderr)
        return 2
    for e in make_hostile(argv[0]):
        print(f"{e.expected_status:9s} {e.kind:24s} {e.file!r}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
