"""Probe a source with PyAV (videos) or Pillow (images): fps, frame count, duration, size, codec, rotation."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from fractions import Fraction

import av
from PIL import Image

from curation.config import LimitsConfig
from curation.ingest.sources import sniff_media_type

# A video outside this frame-rate range has broken timing (a zero timescale, a missing or absurd rate); probing
# refuses it rather than invent clip durations.
MIN_FPS = 0.1
MAX_FPS = 1000.0


class ProbeError(Exception):
    """The source cannot be used; the message says why in words a data engineer can act on."""


@dataclass
class ProbeInfo:
    """What the probe learned about one source. Width and height are of the displayed (rotated) picture."""

    media_type: str
    width: int
    height: int
    codec: str | None
    fps: float | None = None
    num_frames: int | None = None  # from the container; the split pass counts the real number
    duration_s: float | None = None
    rotation: int = 0

    def as_row(self) -> dict:
        """The probe columns of the row schema."""
        return asdict(self)


def probe(path: str, header: bytes, limits: LimitsConfig) -> ProbeInfo:
    """Probe a local file; raise ProbeError with a clear reason when it cannot be used."""
    kind = sniff_media_type(header)
    if len(header) == 0:
        raise ProbeError("empty file (0 bytes)")
    if kind == "image":
        info = _probe_image(path, limits)
        if info.codec == "gif" and _is_animated(path):
            # An animated GIF is a short video (frames with delays): FFmpeg reads it as one, so it is probed,
            # split and decoded as video (decord cannot open GIF; the PyAV fallback does).
            return _probe_video(path, limits, sniffed="video")
        return info
    # Unknown magic: let FFmpeg try (many containers have no fixed magic), and say so if it fails.
    return _probe_video(path, limits, sniffed=kind)


def _probe_image(path: str, limits: LimitsConfig) -> ProbeInfo:
    try:
        with Image.open(path) as im:
            # Reading the header only: the size is known before any pixel is decoded, so a decompression bomb
            # is refused here at no cost.
            w, h = im.size
            fmt = (im.format or "image").lower()
            _check_size(w, h, limits)
            orientation = _exif_orientation(im)
    except ProbeError:
        raise
    except Image.DecompressionBombError as exc:
        raise ProbeError(f"image refused as a decompression bomb: {exc}") from None
    except Exception as exc:  # noqa: BLE001 - Pillow raises many types for bad files
        raise ProbeError(f"not a readable image: {type(exc).__name__}: {exc}") from None
    _check_size(w, h, limits)
    # EXIF orientation: width/height are of the displayed picture (frames.py applies the same transpose).
    rotation = {3: 180, 6: 90, 8: 270}.get(orientation, 0)
    if orientation in (5, 6, 7, 8):
        w, h = h, w
    return ProbeInfo(media_type="image", width=w, height=h, codec=fmt, num_frames=1, rotation=rotation)


def _is_animated(path: str) -> bool:
    """True for an image file holding more than one frame (Pillow reads up to the second frame's header)."""
    try:
        with Image.open(path) as im:
            return bool(getattr(im, "is_animated", False))
    except Exception:  # noqa: BLE001 - a damaged later frame: treat the file as the still image it starts with
        return False


def _exif_orientation(im) -> int:
    # Pillow's PNG getexif() decodes the whole image when the eXIf chunk is not before the pixels: never do that
    # in a probe.
    if im.format == "PNG" and "exif" not in im.info:
        return 1
    try:
        return int(im.getexif().get(0x0112) or 1)
    except Exception:  # noqa: BLE001 - a damaged EXIF block is no reason to refuse the picture
        return 1


def decoder_options(limits: LimitsConfig) -> dict[str, str]:
    """FFmpeg options that make the decoder itself refuse a frame above `limits.max_pixels` (no allocation)."""
    return {"max_pixels": str(int(limits.max_pixels))}


def _probe_video(path: str, limits: LimitsConfig, sniffed: str | None) -> ProbeInfo:
    try:
        # FFmpeg decodes a frame while finding stream parameters; `max_pixels` stops that decode before it
        # allocates a frame of absurd size (a 12000x12000 SPS would otherwise cost ~450 MB here).
        container = av.open(path, mode="r", timeout=30.0, options=decoder_options(limits))
    except Exception as exc:  # noqa: BLE001 - PyAV raises FFmpeg errors of many types
        what = "not a readable video" if sniffed == "video" else "not a recognised image or video"
        raise ProbeError(f"{what}: {type(exc).__name__}: {exc}") from None
    with container:
        if not container.streams.video:
            kinds = sorted({s.type for s in container.streams}) or ["none"]
            raise ProbeError(f"no video stream (streams: {', '.join(kinds)})")
        stream = container.streams.video[0]
        cc = stream.codec_context
        w, h = int(cc.width or 0), int(cc.height or 0)
        if w <= 0 or h <= 0:
            raise ProbeError(f"video stream has no valid size ({w}x{h}): its header is missing, damaged or declares "
                             "dimensions the decoder refuses")
        _check_size(w, h, limits)
        rate = stream.average_rate or stream.guessed_rate or stream.base_rate
        fps = float(rate) if rate else None
        if not fps or fps < MIN_FPS or fps > MAX_FPS:
            shown = "none" if fps is None else f"{fps:.4g} fps"
            raise ProbeError(f"video has no usable frame rate ({shown}; usable: {MIN_FPS:g}..{MAX_FPS:g} fps): the "
                             "container's timing is missing, zero or absurd")
        duration = None
        if stream.duration is not None and stream.time_base is not None:
            duration = float(stream.duration * Fraction(stream.time_base))
        elif container.duration is not None:
            duration = container.duration / av.time_base
        if duration is not None and duration > limits.max_duration_s:
            raise ProbeError(f"video too long: {duration:.0f} s > limits.max_duration_s={limits.max_duration_s:.0f}")
        frames = int(stream.frames) if stream.frames else (round(duration * fps) if duration else None)
        rotation = _first_frame_rotation(container, stream, limits)
        if rotation in (90, 270):
            w, h = h, w
        return ProbeInfo(media_type="video", width=w, height=h, codec=codec_name(cc), fps=fps, num_frames=frames,
                         duration_s=duration, rotation=rotation)


def codec_name(codec_context) -> str | None:
    """The codec of a stream (`av1`, `h264`, `vp9`), not the decoder FFmpeg picked for it (`libdav1d`, `libvpx-vp9`)."""
    codec = getattr(codec_context, "codec", None)
    # FFmpeg's codec descriptor name (avcodec_get_name of the codec id) names the format whatever library decodes it.
    return getattr(codec, "canonical_name", None) or getattr(codec_context, "name", None)


def rotation_cw(frame) -> int:
    """Display rotation of a decoded PyAV frame in degrees clockwise (0, 90, 180, 270).

    PyAV reports the display matrix's angle counter-clockwise (a phone's portrait video says -90); the picture is
    shown turned the other way, so clockwise = -angle.
    """
    angle = int(round(float(getattr(frame, "rotation", 0) or 0)))
    return int(round(((-angle) % 360) / 90.0)) % 4 * 90


def _first_frame_rotation(container, stream, limits: LimitsConfig) -> int:
    # PyAV exposes the display matrix on decoded frames only: decode the first one (cheap, and the size is
    # already known to be within limits). A stream whose first frame does not decode is left to the split pass.
    try:
        stream.codec_context.options = decoder_options(limits)
        for frame in container.decode(stream):
            return rotation_cw(frame)
    except Exception:  # noqa: BLE001 - damage here is reported by the split pass, which decodes every frame
        return 0
    return 0


def _check_size(w: int, h: int, limits: LimitsConfig) -> None:
    if w * h > limits.max_pixels:
        raise ProbeError(f"absurd dimensions {w}x{h}: {w * h} pixels > limits.max_pixels={limits.max_pixels}")
