"""Decode once: each clip is decoded one time, at reduced resolution, into the named frame views (docs/ARCHITECTURE.md,
"Frame views").

- `frames`: K uniformly spaced RGB frames, short side `short_side` (never upscaled), for vision models, OCR, NSFW;
- `motion_frames`: grayscale frames at ~`motion_fps`, `motion_width` wide, for optical flow.

Both views come out of one decoder call: the union of the two index sets is decoded at the `frames` size and the
motion view is a downscaled grayscale copy. decord is the primary decoder (decoder-side resize, index-based seeking);
PyAV is the fallback for what decord cannot open.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import cv2
import numpy as np
from PIL import Image, ImageOps

from curation.config import FramesConfig

# Frame views keep the aspect ratio, but the long side is capped at this multiple of the short side, so a
# 320x200000 strip cannot turn K frames into gigabytes (such rows are rejected on aspect ratio anyway).
MAX_VIEW_ASPECT = 8


@dataclass
class FrameViews:
    """The decoded views of one clip."""

    frames: np.ndarray  # (K, H, W, 3) uint8 RGB
    frame_indices: np.ndarray  # (K,) int64
    motion_frames: np.ndarray  # (T, h, w) uint8 gray
    motion_frame_indices: np.ndarray  # (T,) int64
    motion_fps: float
    decoder: str

    def as_columns(self) -> dict:
        """The view columns of a row."""
        return {
            "frames": self.frames,
            "frame_indices": self.frame_indices,
            "motion_frames": self.motion_frames,
            "motion_frame_indices": self.motion_frame_indices,
            "motion_fps": float(self.motion_fps),
        }


def scaled_size(width: int, height: int, short_side: int) -> tuple[int, int]:
    """(w, h) with the short side at most `short_side`, aspect kept, even sizes (never upscaled).

    The long side is also capped at MAX_VIEW_ASPECT × `short_side`: the memory of a clip's views stays bounded
    whatever the aspect ratio of the source (only sources beyond 8:1 are affected; they fail any aspect filter).
    """
    s, long_side = min(width, height), max(width, height)
    scale = min(1.0, short_side / s, MAX_VIEW_ASPECT * short_side / long_side)
    if scale >= 1.0:
        return max(2, width - width % 2), max(2, height - height % 2)
    return max(2, int(round(width * scale / 2)) * 2), max(2, int(round(height * scale / 2)) * 2)


def uniform_indices(start: int, end: int, k: int) -> np.ndarray:
    """At most `k` frame indices spread uniformly over the clip [start, end) (the `frames` view's indices)."""
    k = min(k, max(1, end - start))
    return np.unique(np.linspace(start, end - 1, k).round().astype(np.int64))


def sample_indices(start: int, end: int, fps: float | None, cfg: FramesConfig) -> tuple[np.ndarray, np.ndarray, float]:
    """Frame indices of the uniform view and of the motion view for the clip [start, end), and the motion rate."""
    n = max(1, end - start)
    uniform = uniform_indices(start, end, cfg.num_frames)
    src_fps = fps or cfg.motion_fps
    step = max(1, int(round(src_fps / cfg.motion_fps)))
    # Long clips: widen the step rather than carry an unbounded number of motion frames.
    while n / step > cfg.max_motion_frames:
        step += 1
    motion = np.arange(start, end, step, dtype=np.int64)
    if len(motion) < 2 and n >= 2:
        motion = np.array([start, end - 1], dtype=np.int64)
    return uniform, motion, src_fps / step


def _to_motion(rgb: np.ndarray, width: int) -> np.ndarray:
    gray = cv2.cvtColor(rgb, cv2.COLOR_RGB2GRAY)
    h, w = gray.shape
    if w > width:
        nh = max(2, int(round(h * width / w / 2)) * 2)
        gray = cv2.resize(gray, (width, nh), interpolation=cv2.INTER_AREA)
    return gray


def _rotate(frames: np.ndarray, rotation: int) -> np.ndarray:
    """Apply a clockwise display rotation to (N, H, W, C) frames."""
    k = {90: 3, 180: 2, 270: 1}.get(rotation % 360, 0)  # np.rot90 turns counter-clockwise
    return np.ascontiguousarray(np.rot90(frames, k=k, axes=(1, 2))) if k else frames


def decode_video_views(path: str, start: int, end: int, fps: float | None, coded_wh: tuple[int, int],
                       rotation: int, cfg: FramesConfig, deadline: float | None = None,
                       max_pixels: int | None = None) -> FrameViews:
    """Decode the clip [start, end) of a video once into both views (decord first, PyAV fallback), upright.

    `coded_wh` is the size of the coded picture and `rotation` the clockwise display rotation; the views are of
    the displayed picture. decord applies the display matrix itself (and resizes after rotating), so it is asked
    for the displayed size; PyAV returns coded frames, which are turned here.
    """
    uniform, motion, motion_fps = sample_indices(start, end, fps, cfg)
    wanted = np.union1d(uniform, motion)
    decoded, decoder = decode_video_frames(path, wanted, fps, coded_wh, rotation, cfg.short_side, deadline, max_pixels)
    pos = {int(i): j for j, i in enumerate(wanted)}
    frames = decoded[[pos[int(i)] for i in uniform]]
    motion_frames = np.stack([_to_motion(decoded[pos[int(i)]], cfg.motion_width) for i in motion])
    return FrameViews(frames, uniform, motion_frames, motion, motion_fps, decoder)


def decode_video_frames(path: str, indices: np.ndarray, fps: float | None, coded_wh: tuple[int, int], rotation: int,
                        short_side: int, deadline: float | None = None,
                        max_pixels: int | None = None) -> tuple[np.ndarray, str]:
    """(frames (N, H, W, 3) uint8 upright, decoder name) of the sorted frame `indices`, short side at most
    `short_side`; the one decoder behind the frame views, captions, report thumbnails and the trainer's clips.

    Indices count decoded frames from the start of the file (as the split pass does), so a variable-frame-rate file
    gives the same frames to every consumer.
    """
    disp = (coded_wh[1], coded_wh[0]) if rotation in (90, 270) else coded_wh
    dw, dh = scaled_size(disp[0], disp[1], short_side)
    try:
        decoded, decoder = _decode_decord(path, indices, dw, dh), "decord"
    except Exception:  # noqa: BLE001 - decord fails on AV1, some containers and damaged files: fall back
        cw, ch = (dh, dw) if rotation in (90, 270) else (dw, dh)
        decoded = _decode_pyav(path, indices, cw, ch, fps, deadline, max_pixels)
        decoded, decoder = _rotate(decoded, rotation), "pyav"
    if deadline is not None and time.monotonic() > deadline:
        raise TimeoutError("decoding exceeded the per-file time limit (limits.decode_timeout_s)")
    return decoded, decoder


def _decode_decord(path: str, indices: np.ndarray, w: int, h: int) -> np.ndarray:
    import decord

    vr = decord.VideoReader(path, ctx=decord.cpu(0), width=w, height=h, num_threads=1)
    n = len(vr)
    if n == 0:
        raise ValueError("decord found no frames")
    if int(indices.max()) >= n:
        raise IndexError(f"decord sees {n} frames, clip needs index {int(indices.max())}")
    out = vr.get_batch(indices.tolist()).asnumpy()
    if out.shape[0] != len(indices):
        raise ValueError("decord returned a short batch")
    return out


def _decode_pyav(path: str, indices: np.ndarray, w: int, h: int, fps: float | None,
                 deadline: float | None, max_pixels: int | None = None) -> np.ndarray:
    """Sequential decode counting frames from the start, so indices match the split pass exactly."""
    import av

    want = set(int(i) for i in indices)
    last = int(indices.max())
    got: dict[int, np.ndarray] = {}
    opts = {"max_pixels": str(int(max_pixels))} if max_pixels else {}
    with av.open(path, mode="r", timeout=30.0, options=opts) as container:
        stream = container.streams.video[0]
        stream.thread_type = "AUTO"
        if opts:
            stream.codec_context.options = opts
        n = 0
        try:
            for frame in container.decode(stream):
                if n in want:
                    got[n] = frame.to_ndarray(width=w, height=h, format="rgb24")
                n += 1
                if n > last:
                    break
                if deadline is not None and (n & 31) == 0 and time.monotonic() > deadline:
                    raise TimeoutError(f"decoding exceeded the per-file time limit after {n} frames")
        except (av.error.InvalidDataError, av.error.EOFError):
            pass
    missing = sorted(want - set(got))
    if missing:
        raise ValueError(f"could not decode frames {missing[:5]} (of {len(want)} wanted); file damaged?")
    return np.stack([got[int(i)] for i in indices])


def decode_image(path: str, short_side: int, max_pixels: int | None = None) -> np.ndarray:
    """One image as upright RGB uint8 (H, W, 3), short side at most `short_side`, EXIF orientation applied."""
    with Image.open(path) as im:
        if max_pixels and im.width * im.height > max_pixels:
            # Checked again here (the probe ran in another task): nothing is decoded above the limit.
            raise ValueError(f"absurd dimensions {im.width}x{im.height} > limits.max_pixels={max_pixels}")
        # draft() lets JPEG decode at a reduced scale directly: the decoder-side resize for images.
        im.draft("RGB", scaled_size(im.width, im.height, short_side))
        im = ImageOps.exif_transpose(im)
        w, h = scaled_size(im.width, im.height, short_side)
        return np.asarray(im.convert("RGB").resize((w, h), Image.BILINEAR))


def decode_image_views(path: str, cfg: FramesConfig, max_pixels: int | None = None) -> FrameViews:
    """An image is a one-frame clip: both views from a single decode, EXIF orientation applied."""
    rgb = decode_image(path, cfg.short_side, max_pixels)
    frames = rgb[None]
    motion = _to_motion(rgb, cfg.motion_width)[None]
    idx = np.zeros(1, dtype=np.int64)
    return FrameViews(frames, idx, motion, idx.copy(), 0.0, "pillow")
