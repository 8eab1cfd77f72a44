"""Split a video into clips: PySceneDetect on a low-resolution decode, frame-accurate, long scenes cut at the max."""

from __future__ import annotations

import math
import time
from dataclasses import dataclass

import av
import numpy as np
from scenedetect.common import FrameTimecode
from scenedetect.detectors import AdaptiveDetector, ContentDetector

from curation.config import SplitConfig
from curation.ingest.probe import rotation_cw


class DecodeTimeout(Exception):
    """Decoding one source took longer than `limits.decode_timeout_s`."""


@dataclass
class SplitResult:
    """Clips as [start, end) frame ranges, the true decoded frame count, and the clockwise display rotation seen
    on the first decoded frame."""

    clips: list[tuple[int, int]]
    num_frames: int
    cuts: list[int]
    rotation: int = 0
    decode_errors: int = 0


def _detector(cfg: SplitConfig, fps: float):
    min_len = max(1, int(round(cfg.min_scene_s * fps)))
    if cfg.detector == "adaptive":
        return AdaptiveDetector(adaptive_threshold=cfg.threshold, min_scene_len=min_len)
    return ContentDetector(threshold=cfg.threshold, min_scene_len=min_len)


def analysis_size(width: int, height: int, target_width: int) -> tuple[int, int]:
    """Even-sized (w, h) no larger than the source, `target_width` wide, aspect kept."""
    if width <= target_width:
        return width - width % 2 or 2, height - height % 2 or 2
    w = target_width
    h = max(2, int(round(height * target_width / width / 2)) * 2)
    return w, h


def detect_scenes(path: str, fps: float, coded_wh: tuple[int, int], cfg: SplitConfig,
                  deadline: float | None = None, max_pixels: int | None = None) -> SplitResult:
    """Decode every frame at low resolution, feed PySceneDetect, and return the cut frame indices.

    Frame indices are counted in decode order, which is presentation order for the frames FFmpeg returns; the count
    is the true number of decodable frames (container headers are often wrong, truncated files always are).
    `deadline` (time.monotonic()) is checked every 32 frames; `max_pixels` makes FFmpeg refuse, without allocating,
    a frame larger than the probe allowed (a stream may change resolution mid-way).
    """
    w, h = analysis_size(coded_wh[0], coded_wh[1], cfg.analysis_width)
    detector = _detector(cfg, fps) if cfg.detector != "none" else None
    cuts: list[int] = []
    n = 0
    rotation = 0
    errors = 0
    with av.open(path, mode="r", timeout=30.0) as container:
        stream = container.streams.video[0]
        stream.thread_type = "AUTO"
        if max_pixels:
            stream.codec_context.options = {"max_pixels": str(int(max_pixels))}
        try:
            for frame in container.decode(stream):
                if deadline is not None and (n & 31) == 0 and time.monotonic() > deadline:
                    raise DecodeTimeout(f"decoding exceeded the per-file time limit (limits.decode_timeout_s) "
                                        f"after {n} frames")
                if n == 0:
                    rotation = rotation_cw(frame)
                if detector is not None:
                    img = frame.to_ndarray(width=w, height=h, format="bgr24")
                    for tc in detector.process_frame(FrameTimecode(n, fps), img):
                        cuts.append(int(tc.frame_num))
                n += 1
        except av.error.InvalidDataError:
            # A damaged tail (truncated upload) ends the stream; the frames decoded so far are still good.
            errors += 1
        except av.error.EOFError:
            errors += 1
    if detector is not None and n:
        for tc in detector.post_process(FrameTimecode(n, fps)) or []:
            cuts.append(int(tc.frame_num) if hasattr(tc, "frame_num") else int(tc))
    cuts = sorted({c for c in cuts if 0 < c < n})
    return SplitResult(clips=[], num_frames=n, cuts=cuts, rotation=rotation, decode_errors=errors)


def clips_from_cuts(num_frames: int, cuts: list[int], fps: float, max_clip_s: float) -> list[tuple[int, int]]:
    """Scenes between cuts as [start, end); a scene longer than `max_clip_s` becomes equal parts no longer than it."""
    bounds = [0, *cuts, num_frames]
    max_len = max(1, int(math.floor(max_clip_s * fps)))
    clips: list[tuple[int, int]] = []
    for s, e in zip(bounds[:-1], bounds[1:]):
        length = e - s
        if length <= 0:
            continue
        parts = max(1, math.ceil(length / max_len))
        edges = np.linspace(s, e, parts + 1).round().astype(int)
        clips.extend((int(a), int(b)) for a, b in zip(edges[:-1], edges[1:]) if b > a)
    return clips


def split_video(path: str, fps: float, coded_wh: tuple[int, int], cfg: SplitConfig,
                deadline: float | None = None, max_pixels: int | None = None) -> SplitResult:
    """Detect scenes and turn them into clips."""
    result = detect_scenes(path, fps, coded_wh, cfg, deadline=deadline, max_pixels=max_pixels)
    result.clips = clips_from_cuts(result.num_frames, result.cuts, fps, cfg.max_clip_s)
    return result
