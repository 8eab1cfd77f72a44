"""Deterministic labeled sample data: small videos and images made from real photos, with their ground truth.

`make_samples(DIR, seed)` writes about thirty files under DIR (videos/, images/, broken/) plus `DIR/labels.parquet`
(one row per file, columns in docs/CONTRACTS.md "Sample data"). Every file is synthesised from photos shipped inside
installed packages (scikit-learn's sample images, scikit-image's `data` module), so the set can be rebuilt offline
from the seed alone (byte for byte, given the same PyAV/FFmpeg/x264 and OpenCV builds). Each category isolates one
property a curation stage must detect: motion tier, burnt-in subtitles, a corner logo, a hard cut, structural rejects
(too short, too small) and undecodable inputs.

Motion is specified in output pixels per frame at the written resolution, so labels map directly onto what an
optical-flow scorer measures: static ≈ 0; camera_driven = coherent global motion of 2–5 px/frame (pans) or a
divergent zoom field (~2–2.6 px/frame at the edges); optimal = large object motion (4–7 px/frame, objects ~10–20 %
of the frame) under a still camera; medium = one small object (80×60) at ~1 px/frame; shaky = i.i.d. 3–8 px window
offsets plus ±1° roll every frame; low_quality = ±15–30 luma flicker (30–60 jumps frame to frame) or incoherent
band-wise content jumps of 12–40 px.
"""

from __future__ import annotations

import math
import os
import zlib
from collections.abc import Iterable, Iterator
from fractions import Fraction
from pathlib import Path
from typing import Any

import av
import cv2
import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
from PIL import Image, ImageDraw, ImageFont

FPS = 24
CLIP_FRAMES = 72  # 3 s at 24 fps
SD = (480, 272)  # (width, height); even sides for yuv420p, ~16:9
HD = (640, 360)

# Column order and Arrow types of labels.parquet (docs/CONTRACTS.md, "Sample data").
LABELS_SCHEMA = pa.schema(
    [
        pa.field("file", pa.string(), nullable=False),
        pa.field("kind", pa.string(), nullable=False),
        pa.field("media_type", pa.string()),
        pa.field("expected_status", pa.string(), nullable=False),
        pa.field("expected_reasons", pa.list_(pa.string())),
        pa.field("expected_motion_tier", pa.string()),
        pa.field("subtitle_text", pa.string()),
        pa.field("subtitle_lang", pa.string()),
        pa.field("has_watermark", pa.bool_(), nullable=False),
        pa.field("logo_corner", pa.string()),
        pa.field("cut_frame", pa.int64()),
        pa.field("fps", pa.float64()),
        pa.field("num_frames", pa.int64()),
        pa.field("width", pa.int64()),
        pa.field("height", pa.int64()),
        pa.field("notes", pa.string()),
    ]
)
# pandas dtypes that survive a Parquet round trip with nulls (plain int64 would turn into float64 with NaN).
_PANDAS_DTYPES = {"cut_frame": "Int64", "num_frames": "Int64", "width": "Int64", "height": "Int64", "fps": "Float64"}

# Subtitles: short, realistic lines. Kept short enough to fit one line at ~24 px on a 480 px wide frame.
SUBTITLES = {
    "en": [
        "Welcome back to the evening news.",
        "I never thought we would make it.",
        "The weather will be sunny tomorrow.",
        "Please keep your seat belt fastened.",
        "We should leave before it gets dark.",
        "This is the best coffee in town.",
        "Thank you all for coming today.",
        "Let me show you how it works.",
    ],
    "zh": [
        "欢迎收看今天的晚间新闻",
        "我们明天早上八点出发",
        "这是我吃过最好吃的蛋糕",
        "请大家注意安全",
        "今天的天气非常好",
        "谢谢你一直陪着我",
        "我们一起去看看吧",
        "这座城市的夜景很美",
    ],
}
LOGO_MARKS = ["TVLOGO", "NEWS24", "CH7 HD", "SPORT+"]

# Groups of sample files, in the order they are generated and listed in labels.parquet.
CATEGORIES = ("static", "camera", "objects", "shaky", "low_quality", "subtitles", "logos", "cuts", "structural",
              "images", "broken")

CJK_FONT_CANDIDATES = [
    "/usr/share/fonts/truetype/wqy/wqy-microhei.ttc",
    "/usr/share/fonts/truetype/wqy/wqy-zenhei.ttc",
    "/usr/share/fonts/opentype/noto/NotoSansCJK-Regular.ttc",
    "/usr/share/fonts/opentype/noto/NotoSansCJK-Bold.ttc",
    "/usr/share/fonts/truetype/arphic/uming.ttc",
]
LATIN_FONT_CANDIDATES = [
    "/usr/share/fonts/truetype/dejavu/DejaVuSans-Bold.ttf",
    "/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf",
]


def make_samples(out_dir: str | Path, seed: int = 0, *, categories: Iterable[str] | None = None) -> pd.DataFrame:
    """Write the labeled sample set under `out_dir` and return its labels (also written to labels.parquet).

    `categories` (names from `CATEGORIES`) restricts generation to some groups, e.g. for quick tests; a file does
    not depend on which other categories are generated (the frames fed to the encoder are the same bytes on every
    run; libx264 now and then encodes them a little differently, at the level of its own coding noise).
    """
    out = Path(out_dir)
    wanted = list(CATEGORIES) if categories is None else list(categories)
    unknown = sorted(set(wanted) - set(CATEGORIES))
    if unknown:
        raise ValueError(f"unknown sample categories {unknown}; known: {list(CATEGORIES)}")
    fonts = find_fonts()  # fail before writing anything when a CJK font is missing
    out.mkdir(parents=True, exist_ok=True)
    gen = _Generator(out, seed, load_photos(), fonts)
    rows = [row for cat in CATEGORIES if cat in wanted for row in getattr(gen, cat)()]
    df = pd.DataFrame(rows, columns=LABELS_SCHEMA.names).astype(_PANDAS_DTYPES)
    table = pa.Table.from_pandas(df, schema=LABELS_SCHEMA, preserve_index=False)
    path = out / "labels.parquet"
    tmp = out / ".labels.parquet.tmp"
    pq.write_table(table, tmp)
    os.replace(tmp, path)  # a labels file exists only when complete
    return pd.read_parquet(path)


def find_fonts() -> dict[str, str]:
    """Paths of a CJK-capable font (`zh`) and a Latin font (`en`); raises if no CJK font is installed."""
    cjk = next((p for p in CJK_FONT_CANDIDATES if Path(p).is_file()), None)
    if cjk is None:
        raise RuntimeError(
            "no CJK-capable font found for the Chinese subtitle samples (looked for "
            + ", ".join(CJK_FONT_CANDIDATES)
            + "); install one, e.g. `apt-get install -y fonts-wqy-microhei`"
        )
    latin = next((p for p in LATIN_FONT_CANDIDATES if Path(p).is_file()), cjk)  # WenQuanYi has Latin glyphs too
    return {"zh": cjk, "en": latin}


def load_photos() -> dict[str, np.ndarray]:
    """The colour photos shipped in scikit-learn and scikit-image, as RGB uint8 arrays keyed by name."""
    import skimage.data
    from sklearn.datasets import load_sample_images

    sk = load_sample_images()
    photos = {Path(f).stem: np.ascontiguousarray(img) for f, img in zip(sk.filenames, sk.images)}
    for name in ("astronaut", "coffee", "chelsea", "rocket", "immunohistochemistry"):
        photos[name] = np.ascontiguousarray(getattr(skimage.data, name)())
    photos["motorcycle"] = np.ascontiguousarray(skimage.data.stereo_motorcycle()[0])
    return photos


# ----------------------------------------------------------------------------------------------------------------
# Frame synthesis


def fit_photo(photo: np.ndarray, need_w: float, need_h: float) -> np.ndarray:
    """Resize `photo` (aspect kept) to the smallest size covering need_w × need_h, so windows render at ~1:1."""
    h, w = photo.shape[:2]
    f = max(need_w / w, need_h / h) * 1.01
    size = (max(math.ceil(w * f), 2), max(math.ceil(h * f), 2))
    interp = cv2.INTER_AREA if f < 1 else cv2.INTER_CUBIC  # area filter avoids aliasing when shrinking
    return cv2.resize(photo, size, interpolation=interp)


def view(photo: np.ndarray, cx: float, cy: float, w: int, h: int, scale: float = 1.0, angle_deg: float = 0.0):
    """Render a w×h camera window centred at (cx, cy) of `photo`; `scale` source px per output px, rolled by angle."""
    a = math.radians(angle_deg)
    c, s = math.cos(a) * scale, math.sin(a) * scale
    ox, oy = (w - 1) / 2, (h - 1) / 2
    # Inverse map (output -> source) so that every output pixel is sampled exactly once, sub-pixel accurate.
    m = np.array([[c, -s, cx - c * ox + s * oy], [s, c, cy - s * ox - c * oy]], dtype=np.float64)
    return cv2.warpAffine(
        photo, m, (w, h), flags=cv2.INTER_LINEAR | cv2.WARP_INVERSE_MAP, borderMode=cv2.BORDER_REFLECT101
    )


def pan_frames(photo: np.ndarray, w: int, h: int, n: int, vx: float, vy: float) -> Iterator[np.ndarray]:
    """A constant-velocity pan: content moves by (-vx, -vy) output px per frame (camera moves by (vx, vy))."""
    p = fit_photo(photo, w + abs(vx) * (n - 1) + 4, h + abs(vy) * (n - 1) + 4)
    ph, pw = p.shape[:2]
    cx0, cy0 = pw / 2 - vx * (n - 1) / 2, ph / 2 - vy * (n - 1) / 2
    for i in range(n):
        yield view(p, cx0 + vx * i, cy0 + vy * i, w, h)


def zoom_frames(photo: np.ndarray, w: int, h: int, n: int, s0: float, s1: float, offset=(0.0, 0.0)):
    """A smooth zoom: the window scale goes geometrically from s0 to s1 (s < 1 magnifies) about a fixed point."""
    margin = 1.16
    p = fit_photo(photo, w * max(s0, s1) * margin, h * max(s0, s1) * margin)
    ph, pw = p.shape[:2]
    cx, cy = pw / 2 + offset[0] * w, ph / 2 + offset[1] * h
    for i in range(n):
        s = s0 * (s1 / s0) ** (i / (n - 1))  # geometric, so the apparent zoom speed is constant
        yield view(p, cx, cy, w, h, scale=s)


def still_frames(photo: np.ndarray, w: int, h: int, n: int, rng: np.random.Generator, noise: float = 1.2):
    """A tripod shot: the same window every frame plus faint luma noise (what a real sensor adds)."""
    base = centre_view(photo, w, h).astype(np.int16)
    for _ in range(n):
        grain = np.rint(rng.standard_normal((h, w, 1), dtype=np.float32) * noise).astype(np.int16)
        yield np.clip(base + grain, 0, 255).astype(np.uint8)


def centre_view(photo: np.ndarray, w: int, h: int) -> np.ndarray:
    """The centre w×h window of `photo` scaled to just cover it (a tripod framing)."""
    p = fit_photo(photo, w, h)
    return view(p, p.shape[1] / 2, p.shape[0] / 2, w, h)


def shaky_frames(photo: np.ndarray, w: int, h: int, n: int, rng: np.random.Generator):
    """Hand-held shake: i.i.d. 3–8 px window offsets and ±1° roll each frame around one point (high frequency)."""
    p = fit_photo(photo, w + 48, h + 48)  # room for 8 px offsets plus the corners swung by the roll
    ph, pw = p.shape[:2]
    for _ in range(n):
        r, theta = rng.uniform(3.0, 8.0), rng.uniform(0, 2 * math.pi)
        roll = float(np.clip(rng.normal(0.0, 0.5), -1.0, 1.0))
        yield view(p, pw / 2 + r * math.cos(theta), ph / 2 + r * math.sin(theta), w, h, angle_deg=roll)


def flicker_frames(photo: np.ndarray, w: int, h: int, n: int, rng: np.random.Generator):
    """Exposure flicker on a still shot: luma offset ±15–30 flipping sign most frames (30–60 jumps)."""
    offset = 0.0
    for frame in still_frames(photo, w, h, n, rng, noise=2.0):
        sign = -math.copysign(1.0, offset) if (offset == 0 or rng.random() < 0.75) else math.copysign(1.0, offset)
        offset = sign * rng.uniform(15.0, 30.0)
        yield np.clip(frame.astype(np.int16) + int(round(offset)), 0, 255).astype(np.uint8)


def erratic_frames(photo: np.ndarray, w: int, h: int, n: int, rng: np.random.Generator, bands: int = 3):
    """Glitchy footage: each horizontal band jumps to its own random offset (12–40 px) every frame (incoherent)."""
    p = fit_photo(photo, w + 100, h + 100)
    ph, pw = p.shape[:2]
    edges = np.linspace(0, h, bands + 1).round().astype(int)
    for _ in range(n):
        frame = np.empty((h, w, 3), np.uint8)
        for y0, y1 in zip(edges[:-1], edges[1:]):
            r, theta = rng.uniform(12.0, 40.0), rng.uniform(0, 2 * math.pi)
            full = view(p, pw / 2 + r * math.cos(theta), ph / 2 + r * math.sin(theta), w, h)
            frame[y0:y1] = full[y0:y1]
        yield frame


def cutout(photo: np.ndarray, w: int, h: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """A textured w×h object cut from a random spot of `photo` with a soft elliptical alpha mask."""
    p = fit_photo(photo, w * 2.2, h * 2.2)
    ph, pw = p.shape[:2]
    x0, y0 = int(rng.integers(0, pw - w + 1)), int(rng.integers(0, ph - h + 1))
    rgb = p[y0 : y0 + h, x0 : x0 + w].astype(np.float32)
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    d = ((xx - (w - 1) / 2) / (w / 2)) ** 2 + ((yy - (h - 1) / 2) / (h / 2)) ** 2
    alpha = np.clip((1.0 - d) * 8.0, 0.0, 1.0)[..., None]  # ~1 px feathered edge, like a matted object
    return rgb, alpha


def object_frames(background: np.ndarray, objects: list[dict], w: int, h: int, n: int):
    """A still camera over `background` with cut-out objects moving along straight lines (sub-pixel positions)."""
    base = centre_view(background, w, h).astype(np.float32)
    for i in range(n):
        frame = base.copy()
        for obj in objects:
            rgb, alpha = obj["rgb"], obj["alpha"]
            oh, ow = alpha.shape[:2]
            x = obj["x0"] + obj["vx"] * i - ow / 2
            y = obj["y0"] + obj["vy"] * i + obj.get("bob", 0.0) * math.sin(2 * math.pi * i / 48.0) - oh / 2
            m = np.array([[1, 0, x], [0, 1, y]], dtype=np.float64)
            layer = cv2.warpAffine(rgb, m, (w, h), flags=cv2.INTER_LINEAR)
            a = cv2.warpAffine(alpha, m, (w, h), flags=cv2.INTER_LINEAR)[..., None]
            frame = frame * (1.0 - a) + layer * a
        yield np.clip(frame + 0.5, 0, 255).astype(np.uint8)


# ----------------------------------------------------------------------------------------------------------------
# Overlays (subtitles, logos): rendered once as RGBA, blended onto every frame


class Overlay:
    """A pre-rendered RGBA patch placed at a fixed position; blending touches only its bounding box."""

    def __init__(self, rgba: np.ndarray, x0: int, y0: int):
        self.rgb = rgba[..., :3].astype(np.float32)
        self.alpha = rgba[..., 3:4].astype(np.float32) / 255.0
        self.x0, self.y0 = x0, y0

    @classmethod
    def from_canvas(cls, canvas: Image.Image) -> Overlay:
        """Crop a full-frame RGBA canvas to its visible pixels."""
        x0, y0, x1, y1 = canvas.getbbox()
        return cls(np.asarray(canvas.crop((x0, y0, x1, y1))), x0, y0)

    def apply(self, frames: Iterable[np.ndarray]) -> Iterator[np.ndarray]:
        """Blend this overlay onto each frame."""
        h, w = self.alpha.shape[:2]
        for frame in frames:
            frame = frame.copy()
            region = frame[self.y0 : self.y0 + h, self.x0 : self.x0 + w].astype(np.float32)
            blended = region * (1.0 - self.alpha) + self.rgb * self.alpha
            frame[self.y0 : self.y0 + h, self.x0 : self.x0 + w] = np.clip(blended + 0.5, 0, 255).astype(np.uint8)
            yield frame


def subtitle_overlay(text: str, font_path: str, w: int, h: int) -> Overlay:
    """White one-line subtitle with a black outline, centred near the bottom, ~26 px tall at 480 px width."""
    size = round(26 * w / 480)
    stroke = max(2, round(2 * w / 480))
    while True:  # shrink only if a line would not fit; OCR needs it on one line
        font = ImageFont.truetype(font_path, size)
        left, top, right, bottom = font.getbbox(text, stroke_width=stroke)
        if right - left <= 0.92 * w or size <= 14:
            break
        size -= 1
    canvas = Image.new("RGBA", (w, h), (0, 0, 0, 0))
    x = (w - (right - left)) / 2 - left
    y = h - round(0.06 * h) - bottom
    ImageDraw.Draw(canvas).text(
        (x, y), text, font=font, fill=(255, 255, 255, 255), stroke_width=stroke, stroke_fill=(0, 0, 0, 255)
    )
    return Overlay.from_canvas(canvas)


def logo_overlay(mark: str, corner: str, font_path: str, w: int, h: int, opacity: float) -> Overlay:
    """A semi-transparent station logo (emblem + text mark), ~14 % of the width, in one corner."""
    lw = round(0.14 * w)
    lh = round(lw * 0.42)
    logo = Image.new("RGBA", (lw, lh), (0, 0, 0, 0))
    d = ImageDraw.Draw(logo)
    d.rounded_rectangle((0, 0, lw - 1, lh - 1), radius=lh // 4, outline=(255, 255, 255, 255), width=2)
    r = lh * 0.3  # emblem: a disc with a play triangle cut out, like many broadcaster marks
    cx, cy = lh * 0.5, lh * 0.5
    d.ellipse((cx - r, cy - r, cx + r, cy + r), fill=(255, 255, 255, 255))
    d.polygon([(cx - r * 0.35, cy - r * 0.5), (cx - r * 0.35, cy + r * 0.5), (cx + r * 0.55, cy)], fill=(0, 0, 0, 0))
    text_w = lw - lh - 4
    size = lh
    while size > 6:
        font = ImageFont.truetype(font_path, size)
        left, top, right, bottom = font.getbbox(mark)
        if right - left <= text_w and bottom - top <= lh * 0.6:
            break
        size -= 1
    d.text((lh + (text_w - (right - left)) / 2 - left, (lh - (bottom - top)) / 2 - top), mark, font=font,
           fill=(255, 255, 255, 255))
    rgba = np.asarray(logo).copy()
    rgba[..., 3] = (rgba[..., 3].astype(np.float32) * opacity).round().astype(np.uint8)
    margin = round(0.03 * w)
    x0 = margin if corner in ("tl", "bl") else w - lw - margin
    y0 = margin if corner in ("tl", "tr") else h - lh - margin
    return Overlay(rgba, x0, y0)


# ----------------------------------------------------------------------------------------------------------------
# Writers


def write_mp4(path: Path, frames: Iterable[np.ndarray], w: int, h: int, fps: int = FPS) -> int:
    """Encode RGB frames as H.264 (yuv420p, crf 20, veryfast) in MP4; returns the number of frames written."""
    path.parent.mkdir(parents=True, exist_ok=True)
    n = 0
    with av.open(str(path), "w", format="mp4") as container:
        # threads=1: x264's output bytes then do not depend on the machine's core count (determinism), and the
        # shared CI cores stay free.
        stream = container.add_stream("libx264", rate=fps, options={"crf": "20", "preset": "veryfast", "threads": "1"})
        stream.width, stream.height, stream.pix_fmt = w, h, "yuv420p"
        for frame in frames:
            assert frame.shape == (h, w, 3), (path, frame.shape)
            vf = av.VideoFrame.from_ndarray(frame, format="rgb24")
            vf.pts, vf.time_base = n, Fraction(1, fps)
            container.mux(stream.encode(vf))
            n += 1
        container.mux(stream.encode(None))
    return n


# ----------------------------------------------------------------------------------------------------------------
# The sample set


class _Generator:
    """Builds every sample file; each one draws from its own RNG seeded by (seed, file name)."""

    def __init__(self, out: Path, seed: int, photos: dict[str, np.ndarray], fonts: dict[str, str]):
        self.out, self.seed, self.photos, self.fonts = out, seed, photos, fonts
        self.names = sorted(photos)

    def rng(self, key: str) -> np.random.Generator:
        """An RNG private to one file (or one category's photo choice), so adding a sample never changes the others."""
        return np.random.default_rng([self.seed, zlib.crc32(key.encode())])

    def pick(self, key: str, k: int) -> list[str]:
        """k distinct photo names for one category, so clips of a category never show the same photo."""
        rng = self.rng(f"photos-{key}")
        return [self.names[i] for i in rng.choice(len(self.names), size=k, replace=False)]

    def video(self, rel: str, frames, size, kind: str, tier: str | None, notes: str, **labels) -> dict[str, Any]:
        """Write one video and return its label row."""
        w, h = size
        n = write_mp4(self.out / rel, frames, w, h)
        row = dict(file=rel, kind=kind, media_type="video", expected_status="kept", expected_reasons=[],
                   expected_motion_tier=tier, subtitle_text=None, subtitle_lang=None, has_watermark=False,
                   logo_corner=None, cut_frame=None, fps=float(FPS), num_frames=n, width=w, height=h, notes=notes)
        row.update(labels)
        return row

    def static(self):
        """Tripod shots of a still photo; only sensor grain and encoding noise change."""
        specs = [("videos/static/static_0.mp4", SD), ("videos/static/static_1.mp4", SD),
                 ("videos/static/static 2 hd.mp4", HD)]  # a space in the name, on purpose
        for (rel, (w, h)), name in zip(specs, self.pick("static", len(specs))):
            rng = self.rng(rel)
            yield self.video(rel, still_frames(self.photos[name], w, h, CLIP_FRAMES, rng), (w, h), "static",
                             "static", f"still shot of {name}, luma grain sigma 1.2")

    def camera(self):
        """Constant-speed pans (one horizontal, one vertical) and smooth zooms (in and out)."""
        w, h = SD
        photos = self.pick("camera", 4)
        for (rel, axis), name in zip(
            (("videos/camera/pan_horizontal.mp4", "x"), ("videos/camera/pan_vertical.mp4", "y")), photos[:2]
        ):
            rng = self.rng(rel)
            speed = rng.uniform(3.0, 5.0) * rng.choice([-1.0, 1.0])
            vx, vy = (speed, 0.0) if axis == "x" else (0.0, speed)
            direction = {("x", 1): "left->right", ("x", -1): "right->left", ("y", 1): "top->bottom",
                         ("y", -1): "bottom->top"}[(axis, int(np.sign(speed)))]
            yield self.video(rel, pan_frames(self.photos[name], w, h, CLIP_FRAMES, vx, vy), (w, h), "pan",
                             "camera_driven", f"camera pans {direction} at {abs(speed):.2f} px/frame over {name}")
        for (rel, zoom_in), name in zip(
            (("videos/camera/zoom_in.mp4", True), ("videos/camera/zoom_out.mp4", False)), photos[2:]
        ):
            rng = self.rng(rel)
            z = rng.uniform(1.8, 2.2)  # edge speed 240*ln(z)/71 ≈ 2–2.6 px/frame at 480 px
            s0, s1 = (1.0, 1.0 / z) if zoom_in else (1.0 / z, 1.0)
            offset = tuple(rng.uniform(-0.05, 0.05, size=2))
            yield self.video(rel, zoom_frames(self.photos[name], w, h, CLIP_FRAMES, s0, s1, offset), (w, h),
                             "zoom", "camera_driven",
                             f"smooth zoom {'in' if zoom_in else 'out'} x{z:.2f} over {name}")

    def _other(self, rng: np.random.Generator, name: str) -> str:
        """A random photo other than `name`."""
        others = [n for n in self.names if n != name]
        return others[int(rng.integers(len(others)))]

    def _object(self, rng, photo: str, ow: int, oh: int, **motion) -> dict:
        rgb, alpha = cutout(self.photos[photo], ow, oh, rng)
        return dict(rgb=rgb, alpha=alpha, **motion)

    def objects(self):
        """Textured cut-outs moving over a still background: large fast objects (optimal), a small slow one (medium)."""
        w, h = SD
        photos = self.pick("objects", 4)  # backgrounds differ; objects come from another photo of the pool
        for k in range(2):
            rel = f"videos/objects/objects_large_{k}.mp4"
            rng = self.rng(rel)
            bg = photos[k]
            src = self._other(rng, bg)
            objs, desc = [], []
            n_obj = 2 if k == 0 else 1
            for j in range(n_obj):
                speed = rng.uniform(4.0, 7.0)
                angle = rng.uniform(-0.3, 0.3)  # mostly horizontal, so the object stays in frame for 3 s
                dirn = 1.0 if j == 0 else -1.0
                vx, vy = dirn * speed * math.cos(angle), speed * math.sin(angle)
                ow, oh = (150, 116) if n_obj == 2 else (190, 146)
                y0 = h * (0.35 if j == 0 else 0.65) if n_obj == 2 else h / 2
                y0 -= vy * (CLIP_FRAMES - 1) / 2
                x0 = w / 2 - vx * (CLIP_FRAMES - 1) / 2
                objs.append(self._object(rng, src, ow, oh, x0=x0, y0=y0, vx=vx, vy=vy, bob=rng.uniform(0, 8)))
                desc.append(f"{ow}x{oh} at {speed:.2f} px/frame")
            yield self.video(rel, object_frames(self.photos[bg], objs, w, h, CLIP_FRAMES), (w, h),
                             "object_motion_large", "optimal",
                             f"still camera on {bg}; objects cut from {src}: " + ", ".join(desc))
        for k in range(2):
            rel = f"videos/objects/objects_small_{k}.mp4"
            rng = self.rng(rel)
            bg = photos[2 + k]
            src = self._other(rng, bg)
            speed, angle = rng.uniform(0.8, 1.3), rng.uniform(0, 2 * math.pi)
            vx, vy = speed * math.cos(angle), speed * math.sin(angle)
            x0 = rng.uniform(0.3, 0.7) * w - vx * (CLIP_FRAMES - 1) / 2
            y0 = rng.uniform(0.35, 0.65) * h - vy * (CLIP_FRAMES - 1) / 2
            obj = self._object(rng, src, 80, 60, x0=x0, y0=y0, vx=vx, vy=vy)
            yield self.video(rel, object_frames(self.photos[bg], [obj], w, h, CLIP_FRAMES), (w, h),
                             "object_motion_small", "medium",
                             f"still camera on {bg}; one 80x60 object from {src} at {speed:.2f} px/frame")

    def shaky(self):
        """Hand-held shake around a fixed point."""
        w, h = SD
        for k, name in enumerate(self.pick("shaky", 2)):
            rel = f"videos/shaky/shaky_{k}.mp4"
            rng = self.rng(rel)
            yield self.video(rel, shaky_frames(self.photos[name], w, h, CLIP_FRAMES, rng), (w, h), "shake", "shaky",
                             f"hand-held shake over {name}: i.i.d. 3-8 px offsets, roll sd 0.5 deg per frame")

    def low_quality(self):
        """Exposure flicker and incoherent glitch jumps."""
        w, h = SD
        photos = self.pick("low_quality", 2)
        rel, name = "videos/low_quality/flicker.mp4", photos[0]
        rng = self.rng(rel)
        yield self.video(rel, flicker_frames(self.photos[name], w, h, CLIP_FRAMES, rng), (w, h), "flicker",
                         "low_quality", f"still shot of {name} with luma offset +-15..30 flipping sign (jumps 30-60)")
        rel, name = "videos/low_quality/erratic.mp4", photos[1]
        rng = self.rng(rel)
        yield self.video(rel, erratic_frames(self.photos[name], w, h, CLIP_FRAMES, rng), (w, h), "erratic",
                         "low_quality", f"{name} in 3 horizontal bands, each jumping 12-40 px at random every frame")

    def subtitles(self):
        """Burnt-in one-line subtitles (English, Chinese) over a still shot or a gentle pan."""
        w, h = SD
        photos = iter(self.pick("subtitles", 4))
        for lang in ("en", "zh"):
            rng = self.rng(f"subtitles-{lang}")
            texts = [SUBTITLES[lang][i] for i in rng.choice(len(SUBTITLES[lang]), size=2, replace=False)]
            for k, text in enumerate(texts):
                rel, name = f"videos/text/subtitle_{lang}_{k}.mp4", next(photos)
                rng = self.rng(rel)
                if k == 0:
                    frames, tier, motion = still_frames(self.photos[name], w, h, CLIP_FRAMES, rng), "static", "still"
                else:
                    speed = rng.uniform(2.0, 3.0) * rng.choice([-1.0, 1.0])
                    frames = pan_frames(self.photos[name], w, h, CLIP_FRAMES, speed, 0.0)
                    tier, motion = "camera_driven", f"horizontal pan {speed:+.2f} px/frame"
                overlay = subtitle_overlay(text, self.fonts[lang], w, h)
                yield self.video(rel, overlay.apply(frames), (w, h), f"subtitle_{lang}", tier,
                                 f"{motion} over {name}; subtitle in {Path(self.fonts[lang]).name}",
                                 subtitle_text=text, subtitle_lang=lang)

    def logos(self):
        """A semi-transparent logo fixed in a corner while the content pans underneath."""
        w, h = SD
        rng = self.rng("logo-corners")
        corners = [["tl", "tr", "bl", "br"][i] for i in rng.permutation(4)[:3]]
        for k, (corner, name) in enumerate(zip(corners, self.pick("logos", len(corners)))):
            rel = f"videos/logo/logo_{k}.mp4"
            rng = self.rng(rel)
            mark = LOGO_MARKS[int(rng.integers(len(LOGO_MARKS)))]
            opacity = rng.uniform(0.4, 0.6)
            speed, angle = rng.uniform(2.5, 4.5), rng.uniform(0, 2 * math.pi)
            vx, vy = speed * math.cos(angle), speed * math.sin(angle)
            overlay = logo_overlay(mark, corner, self.fonts["en"], w, h, opacity)
            frames = overlay.apply(pan_frames(self.photos[name], w, h, CLIP_FRAMES, vx, vy))
            yield self.video(rel, frames, (w, h), "logo", "camera_driven",
                             f"'{mark}' logo, alpha {opacity:.2f}, over a pan of {name} at {speed:.2f} px/frame",
                             has_watermark=True, logo_corner=corner)

    def cuts(self):
        """Two scenes of different photos (slow pans, >= 1.5 s each) joined by a hard cut."""
        photos = self.pick("cuts", 4)
        for k, (w, h) in enumerate((SD, HD)):
            rel = f"videos/cuts/hard_cut_{k}.mp4"
            rng = self.rng(rel)
            a, b = photos[2 * k : 2 * k + 2]
            n1, n2 = int(rng.integers(38, 47)), int(rng.integers(38, 47))
            v1, v2 = rng.uniform(1.5, 2.5), -rng.uniform(1.5, 2.5)

            def frames(a=a, b=b, n1=n1, n2=n2, v1=v1, v2=v2, w=w, h=h):
                yield from pan_frames(self.photos[a], w, h, n1, v1, 0.0)
                yield from pan_frames(self.photos[b], w, h, n2, 0.0, v2)

            yield self.video(rel, frames(), (w, h), "hard_cut", "camera_driven",
                             f"{n1} frames of {a} (pan {v1:+.2f} px/frame x) then {n2} frames of {b} "
                             f"(pan {v2:+.2f} px/frame y)", cut_frame=n1)

    def structural(self):
        """Clips a structural filter must reject: under 1 s, and a short side under 128 px."""
        photos = self.pick("structural", 2)
        rel, name = "videos/structural/too_short.mp4", photos[0]
        w, h = SD
        yield self.video(rel, pan_frames(self.photos[name], w, h, 14, 3.0, 0.0), (w, h), "too_short", None,
                         f"14 frames (0.58 s) pan of {name}", expected_status="rejected",
                         expected_reasons=["duration_s<1.0"])
        rel, name = "videos/structural/too_small.mp4", photos[1]
        w, h = 96, 64
        yield self.video(rel, pan_frames(self.photos[name], w, h, CLIP_FRAMES, 0.6, 0.0), (w, h), "too_small", None,
                         f"96x64 slow pan of {name}", expected_status="rejected",
                         expected_reasons=["short_side<128"])

    def images(self):
        """Still photos as JPEG and PNG at their native size (short side >= 256)."""
        names = self.pick("images", 3)
        for rel, name in zip(("images/photo_0.jpg", "images/photo 1.jpg", "images/photo_2.png"), names):
            path = self.out / rel
            path.parent.mkdir(parents=True, exist_ok=True)
            img = Image.fromarray(self.photos[name])
            if rel.endswith(".jpg"):
                img.save(path, quality=92)
            else:
                img.save(path)
            yield dict(file=rel, kind="image", media_type="image", expected_status="kept", expected_reasons=[],
                       expected_motion_tier=None, subtitle_text=None, subtitle_lang=None, has_watermark=False,
                       logo_corner=None, cut_frame=None, fps=None, num_frames=1, width=img.width, height=img.height,
                       notes=f"photo {name}")

    def broken(self):
        """Inputs no decoder can read: an MP4 cut before its index, a zero-byte file, random bytes."""
        d = self.out / "broken"
        d.mkdir(parents=True, exist_ok=True)
        (name,) = self.pick("broken", 1)
        path = d / "truncated.mp4"
        w, h = SD
        write_mp4(path, pan_frames(self.photos[name], w, h, CLIP_FRAMES, 3.0, 0.0), w, h)
        data = path.read_bytes()
        # The MP4 index (moov) is written last, so keeping the first 30 % leaves media data without any index.
        path.write_bytes(data[: int(len(data) * 0.3)])
        (d / "empty.mp4").write_bytes(b"")
        (d / "random_bytes.mp4").write_bytes(self.rng("broken/random_bytes.mp4").bytes(64 * 1024))
        notes = {"truncated.mp4": f"valid H.264 MP4 of {name} cut to 30 % of {len(data)} bytes (no moov)",
                 "empty.mp4": "zero bytes", "random_bytes.mp4": "64 KiB of random bytes"}
        for fname, note in notes.items():
            yield dict(file=f"broken/{fname}", kind=Path(fname).stem, media_type=None, expected_status="failed",
                       expected_reasons=[], expected_motion_tier=None, subtitle_text=None, subtitle_lang=None,
                       has_watermark=False, logo_corner=None, cut_frame=None, fps=None, num_frames=None, width=None,
                       height=None, notes=note)
