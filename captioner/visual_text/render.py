"""Rendering text images with Pillow: fonts from Debian packages, sizes, weights, colours, alignments, line spacing,
slight rotation and perspective, on white or over real photographs and textures, one or more text blocks; and the
caption that quotes the text and says how it looks.

Fonts (`FONTS`): each entry names the file a Debian package installs (the Makefile's setup installs them), the face
inside a collection, the script it is used for, its style and weight. `available_fonts` keeps those present; a
configured font that is missing is an error naming its package.

Backgrounds: white (the paper's synthetic data), photographs shipped in scikit-image and scikit-learn (astronaut,
cat, coffee, rocket, motorcycle, a Chinese temple, a flower), and textures (brick, grass, gravel from scikit-image,
plus paper-like noise and colour gradients made here). Over a picture, the text colour is picked for contrast with
the region under the block (WCAG contrast ratio at least `min_contrast` against its mean), and a busy region (grey
std above 40) gets an outline in the opposite tone, so the text stays readable.

Blocks are stacked in horizontal bands (one band per block, top to bottom), so the reading order of the picture is
the order of the blocks and of their lines: `ocr_text` is every block's lines joined with newlines in that order.
"""

from __future__ import annotations

import functools
import math
import os
from dataclasses import dataclass
from typing import Any

import numpy as np

CJK = "/usr/share/fonts/opentype/noto"


@dataclass(frozen=True)
class FontSpec:
    """One font face: file (and face inside a collection), the language it renders, how it looks."""

    key: str
    path: str
    lang: str  # zh or en
    style: str  # words used in captions: sans-serif, serif, monospace, brush-style (kai), handwriting-like ...
    weight: str  # regular or bold
    package: str  # Debian package that installs `path`
    face: str | None = None  # family name inside a .ttc collection


FONTS: tuple[FontSpec, ...] = (
    FontSpec("noto-sans-cjk", f"{CJK}/NotoSansCJK-Regular.ttc", "zh", "sans-serif", "regular", "fonts-noto-cjk",
             "Noto Sans CJK SC"),
    FontSpec("noto-sans-cjk-bold", f"{CJK}/NotoSansCJK-Bold.ttc", "zh", "sans-serif", "bold", "fonts-noto-cjk",
             "Noto Sans CJK SC"),
    FontSpec("noto-serif-cjk", f"{CJK}/NotoSerifCJK-Regular.ttc", "zh", "serif", "regular", "fonts-noto-cjk",
             "Noto Serif CJK SC"),
    FontSpec("noto-serif-cjk-bold", f"{CJK}/NotoSerifCJK-Bold.ttc", "zh", "serif", "bold", "fonts-noto-cjk",
             "Noto Serif CJK SC"),
    FontSpec("wqy-microhei", "/usr/share/fonts/truetype/wqy/wqy-microhei.ttc", "zh", "sans-serif", "regular",
             "fonts-wqy-microhei", "WenQuanYi Micro Hei"),
    FontSpec("ar-pl-ukai", "/usr/share/fonts/truetype/arphic/ukai.ttc", "zh", "brush-style", "regular",
             "fonts-arphic-ukai", "AR PL UKai CN"),
    FontSpec("ar-pl-uming", "/usr/share/fonts/truetype/arphic/uming.ttc", "zh", "Song-style serif", "regular",
             "fonts-arphic-uming", "AR PL UMing CN"),
    FontSpec("dejavu-sans", "/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf", "en", "sans-serif", "regular",
             "fonts-dejavu-core"),
    FontSpec("dejavu-sans-bold", "/usr/share/fonts/truetype/dejavu/DejaVuSans-Bold.ttf", "en", "sans-serif", "bold",
             "fonts-dejavu-core"),
    FontSpec("dejavu-serif", "/usr/share/fonts/truetype/dejavu/DejaVuSerif.ttf", "en", "serif", "regular",
             "fonts-dejavu-core"),
    FontSpec("dejavu-sans-mono", "/usr/share/fonts/truetype/dejavu/DejaVuSansMono.ttf", "en", "monospace", "regular",
             "fonts-dejavu-core"),
    FontSpec("liberation-sans", "/usr/share/fonts/truetype/liberation/LiberationSans-Regular.ttf", "en",
             "sans-serif", "regular", "fonts-liberation"),
    FontSpec("liberation-sans-bold", "/usr/share/fonts/truetype/liberation/LiberationSans-Bold.ttf", "en",
             "sans-serif", "bold", "fonts-liberation"),
    FontSpec("liberation-serif", "/usr/share/fonts/truetype/liberation/LiberationSerif-Regular.ttf", "en", "serif",
             "regular", "fonts-liberation"),
    FontSpec("liberation-serif-bold", "/usr/share/fonts/truetype/liberation/LiberationSerif-Bold.ttf", "en", "serif",
             "bold", "fonts-liberation"),
    FontSpec("noto-sans", "/usr/share/fonts/truetype/noto/NotoSans-Regular.ttf", "en", "sans-serif", "regular",
             "fonts-noto-core"),
    FontSpec("noto-sans-bold", "/usr/share/fonts/truetype/noto/NotoSans-Bold.ttf", "en", "sans-serif", "bold",
             "fonts-noto-core"),
    FontSpec("noto-serif", "/usr/share/fonts/truetype/noto/NotoSerif-Regular.ttf", "en", "serif", "regular",
             "fonts-noto-core"),
    FontSpec("noto-serif-bold", "/usr/share/fonts/truetype/noto/NotoSerif-Bold.ttf", "en", "serif", "bold",
             "fonts-noto-core"),
)
FONTS_BY_KEY = {f.key: f for f in FONTS}

# Text colours with the names captions use. On white only the dark ones are drawn; over pictures any that contrasts.
COLOURS: tuple[tuple[str, tuple[int, int, int]], ...] = (
    ("black", (0, 0, 0)), ("dark grey", (60, 60, 60)), ("navy blue", (20, 30, 110)), ("dark red", (140, 20, 20)),
    ("dark green", (20, 90, 40)), ("purple", (90, 30, 120)), ("brown", (100, 60, 20)), ("white", (255, 255, 255)),
    ("yellow", (250, 220, 40)), ("light blue", (150, 210, 255)), ("orange", (250, 150, 30)), ("pink", (255, 170, 200)),
)
PHOTOS: tuple[tuple[str, str], ...] = (
    ("astronaut", "a photograph of an astronaut in a white spacesuit beside an American flag"),
    ("chelsea", "a close-up photograph of a tabby cat"),
    ("coffee", "a photograph of a cup of coffee on a saucer"),
    ("rocket", "a photograph of a rocket on its launch pad"),
    ("motorcycle_left", "a photograph of a motorcycle in a garage"),
    ("china", "a photograph of a Chinese temple among trees"),
    ("flower", "a close-up photograph of a flower"),
)
TEXTURES: tuple[tuple[str, str], ...] = (
    ("brick", "a grey brick wall texture"), ("grass", "a grass texture"), ("gravel", "a gravel texture"),
    ("paper", "an off-white paper texture"), ("gradient", "a smooth colour gradient"),
)


def font_path_ok(spec: FontSpec) -> bool:
    """Whether the font's file is installed."""
    return os.path.isfile(spec.path)


def available_fonts(keys: list[str] | tuple[str, ...] | None = None) -> list[FontSpec]:
    """The configured fonts (all of `FONTS` when None, those installed); a named font that is missing is an error."""
    if keys is None:
        return [f for f in FONTS if font_path_ok(f)]
    out = []
    for k in keys:
        if k not in FONTS_BY_KEY:
            raise ValueError(f"unknown font {k!r} (known: {', '.join(FONTS_BY_KEY)})")
        spec = FONTS_BY_KEY[k]
        if not font_path_ok(spec):
            raise ValueError(f"font {k!r}: {spec.path} is missing (apt-get install {spec.package}, or `make setup`)")
        out.append(spec)
    return out


@functools.lru_cache(maxsize=512)
def load_font(key: str, size: int) -> Any:
    """A Pillow FreeType font of `key` at `size` px (the named face of a collection)."""
    from PIL import ImageFont

    spec = FONTS_BY_KEY[key]
    if spec.face is None:
        return ImageFont.truetype(spec.path, size)
    for index in range(32):
        try:
            font = ImageFont.truetype(spec.path, size, index=index)
        except OSError:
            break
        if font.getname()[0] == spec.face:
            return font
    raise ValueError(f"font {key!r}: no face {spec.face!r} in {spec.path}")


def _package_dir(package: str) -> str:
    """A package's folder, found without importing it (importing scikit-learn costs seconds per actor)."""
    import importlib.util

    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError(f"package {package} is not installed")
    return list(spec.submodule_search_locations)[0]


# Where each picture ships: scikit-learn's sample images and scikit-image's data folder.
_PICTURE_FILES = {"china": ("sklearn", "datasets/images/china.jpg"),
                  "flower": ("sklearn", "datasets/images/flower.jpg"),
                  **{n: ("skimage", f"data/{n}.{'jpg' if n == 'rocket' else 'png'}")
                     for n in ("astronaut", "chelsea", "coffee", "rocket", "motorcycle_left", "brick", "grass",
                               "gravel")}}


@functools.lru_cache(maxsize=16)
def _picture(name: str) -> np.ndarray:
    """A shipped photograph or texture as (H, W, 3) uint8 RGB."""
    from PIL import Image

    package, rel = _PICTURE_FILES[name]
    with Image.open(os.path.join(_package_dir(package), rel)) as im:
        return np.asarray(im.convert("RGB"), dtype=np.uint8)


def background(rng: np.random.Generator, kind: str, width: int, height: int) -> tuple[np.ndarray, str, str]:
    """(picture (H, W, 3) uint8, its name, its description) for a background kind: white, photo or texture."""
    import cv2

    if kind == "white":
        return np.full((height, width, 3), 255, np.uint8), "white", "a plain white background"
    if kind == "texture":
        name, desc = TEXTURES[int(rng.integers(len(TEXTURES)))]
        if name == "paper":
            noise = rng.normal(0, 6, (height // 4 + 1, width // 4 + 1)).astype(np.float32)
            noise = cv2.resize(noise, (width, height), interpolation=cv2.INTER_CUBIC)
            base = np.array([242, 236, 222], np.float32)
            return np.clip(base + noise[..., None], 0, 255).astype(np.uint8), name, desc
        if name == "gradient":
            a, b = rng.integers(0, 256, 3), rng.integers(0, 256, 3)
            t = np.linspace(0, 1, width if rng.random() < 0.5 else height, dtype=np.float32)
            line = (a[None] * (1 - t[:, None]) + b[None] * t[:, None]).astype(np.uint8)
            img = np.broadcast_to(line[None], (height, width, 3)) if len(t) == width else \
                np.broadcast_to(line[:, None], (height, width, 3))
            return np.ascontiguousarray(img), name, desc
        src = _picture(name)
    else:
        name, desc = PHOTOS[int(rng.integers(len(PHOTOS)))]
        src = _picture(name)
    # A random crop with the canvas' aspect, scaled to the canvas.
    h, w = src.shape[:2]
    scale = max(width / w, height / h) * float(rng.uniform(1.0, 1.4))
    cw, ch = min(w, int(math.ceil(width / scale))), min(h, int(math.ceil(height / scale)))
    x0, y0 = int(rng.integers(0, w - cw + 1)), int(rng.integers(0, h - ch + 1))
    crop = cv2.resize(np.ascontiguousarray(src[y0:y0 + ch, x0:x0 + cw]), (width, height),
                      interpolation=cv2.INTER_AREA)
    return crop, name, desc


def _luminance(rgb: np.ndarray) -> np.ndarray:
    c = np.asarray(rgb, np.float64) / 255.0
    c = np.where(c <= 0.03928, c / 12.92, ((c + 0.055) / 1.055) ** 2.4)
    return 0.2126 * c[..., 0] + 0.7152 * c[..., 1] + 0.0722 * c[..., 2]


def contrast_ratio(a: Any, b: Any) -> float:
    """WCAG contrast ratio between two RGB colours (1..21)."""
    la, lb = float(_luminance(np.asarray(a))), float(_luminance(np.asarray(b)))
    return (max(la, lb) + 0.05) / (min(la, lb) + 0.05)


@dataclass
class Block:
    """One text block as drawn: its lines and how they look."""

    lang: str
    kind: str
    lines: list[str]
    font: str
    size: int
    colour: str
    rgb: tuple[int, int, int]
    align: str
    spacing: float
    angle: float
    perspective: float
    outline: str | None
    band: int
    x: int = 0
    y: int = 0

    @property
    def weight_word(self) -> str:
        """The font's weight as a caption says it."""
        return FONTS_BY_KEY[self.font].weight

    @property
    def style(self) -> str:
        """The font's style as a caption says it."""
        return FONTS_BY_KEY[self.font].style

    @property
    def align_word(self) -> str:
        """The alignment as a caption says it."""
        return {"left": "left-aligned", "centre": "centred", "right": "right-aligned"}[self.align]


def fit_size(lines: list[str], font_key: str, size: int, max_w: int, max_h: int, spacing: float,
             min_size: int) -> int | None:
    """The largest size <= `size` (down in 10 % steps to `min_size`) at which the lines fit max_w x max_h."""
    while size >= min_size:
        w, h = text_extent(lines, font_key, size, spacing)
        if w <= max_w and h <= max_h:
            return size
        size = int(size * 0.9) if int(size * 0.9) < size else size - 1
    return None


def text_extent(lines: list[str], font_key: str, size: int, spacing: float) -> tuple[int, int]:
    """Width and height of the lines drawn with the font at `size` and line spacing `spacing` (x the size)."""
    font = load_font(font_key, size)
    w = max(int(math.ceil(font.getlength(line))) for line in lines)
    h = int(math.ceil(size * (1 + spacing * (len(lines) - 1)))) + size // 3
    return w, h


def draw_block(block: Block, stroke_rgb: tuple[int, int, int] | None) -> np.ndarray:
    """The block as an RGBA layer: lines drawn with alignment and spacing, then rotated / perspective-warped."""
    import cv2
    from PIL import Image, ImageDraw

    font = load_font(block.font, block.size)
    stroke = max(1, block.size // 14) if stroke_rgb is not None else 0
    w, h = text_extent(block.lines, block.font, block.size, block.spacing)
    pad = block.size // 2 + stroke
    layer = Image.new("RGBA", (w + 2 * pad, h + 2 * pad), (0, 0, 0, 0))
    draw = ImageDraw.Draw(layer)
    for i, line in enumerate(block.lines):
        lw = font.getlength(line)
        x = {"left": 0, "centre": (w - lw) / 2, "right": w - lw}[block.align]
        y = i * block.size * block.spacing
        draw.text((pad + x, pad + y), line, font=font, fill=(*block.rgb, 255), stroke_width=stroke,
                  stroke_fill=(*stroke_rgb, 255) if stroke_rgb is not None else None)
    if block.angle:
        layer = layer.rotate(block.angle, resample=Image.BICUBIC, expand=True)
    arr = np.asarray(layer)
    if block.perspective:
        lh, lw_ = arr.shape[:2]
        d = block.perspective * lh
        src = np.float32([[0, 0], [lw_, 0], [lw_, lh], [0, lh]])
        # One side a little shorter than the other: text seen slightly from the side.
        dst = np.float32([[0, max(d, 0)], [lw_, max(-d, 0)], [lw_, lh - max(-d, 0)], [0, lh - max(d, 0)]])
        arr = cv2.warpPerspective(arr, cv2.getPerspectiveTransform(src, dst), (lw_, lh), flags=cv2.INTER_CUBIC)
    return arr


def composite(canvas: np.ndarray, layer: np.ndarray, x: int, y: int) -> None:
    """Alpha-blend an RGBA layer onto the RGB canvas in place at (x, y), clipped to the canvas."""
    h, w = layer.shape[:2]
    ch, cw = canvas.shape[:2]
    x0, y0, x1, y1 = max(x, 0), max(y, 0), min(x + w, cw), min(y + h, ch)
    if x1 <= x0 or y1 <= y0:
        return
    part = layer[y0 - y:y1 - y, x0 - x:x1 - x].astype(np.float32)
    alpha = part[..., 3:4] / 255.0
    region = canvas[y0:y1, x0:x1].astype(np.float32)
    canvas[y0:y1, x0:x1] = np.round(region * (1 - alpha) + part[..., :3] * alpha).astype(np.uint8)


_COUNT = {1: "one", 2: "two", 3: "three", 4: "four", 5: "five", 6: "six"}


def _quote_list(lines: list[str]) -> str:
    q = [f'"{line}"' for line in lines]
    return q[0] if len(q) == 1 else ", ".join(q[:-1]) + " and " + q[-1]


def describe_block(b: Block) -> str:
    """How one block reads and looks, quoting each of its lines exactly."""
    script = "Chinese characters" if b.lang == "zh" else (
        "capital letters" if all(ln.upper() == ln for ln in b.lines) else "letters")
    look = f"{b.weight_word} {b.colour} {b.style} {script}"
    if b.outline:
        look += f" with a {b.outline} outline"
    if len(b.lines) == 1:
        noun = ("the characters" if b.lang == "zh" else "the word") if b.kind == "word" else (
            "the phrase" if b.lang == "zh" else "the words")
        text = f'{noun} "{b.lines[0]}" in {look}'
    else:
        text = f"{_COUNT.get(len(b.lines), str(len(b.lines)))} lines of {look}, {b.align_word}, reading " \
               f"{_quote_list(b.lines)}"
    if abs(b.angle) >= 1 or b.perspective:
        text += ", slightly tilted" if not b.perspective else ", slightly slanted in perspective"
    return text


def _position(band: int, bands: int, x_frac: float, y_frac: float) -> str:
    """Where a block sits, in words: its band among several, or for one block where its centre is."""
    horizontal = "on the left" if x_frac < 0.3 else ("on the right" if x_frac > 0.7 else "")
    if bands == 1:
        vertical = "at the top" if y_frac < 0.3 else ("at the bottom" if y_frac > 0.7 else "")
        if not vertical and not horizontal:
            return "centred"
        return f"{vertical} {horizontal}".strip() if vertical else f"in the middle {horizontal}"
    names = {2: ["at the top", "at the bottom"], 3: ["at the top", "in the middle", "at the bottom"]}
    vertical = names[bands][band] if bands in names else f"in band {band + 1} of {bands}"
    return f"{vertical} {horizontal}".strip()


def caption(blocks: list[Block], bg_desc: str, centres: list[tuple[float, float]]) -> str:
    """The sample's caption: every line of every block quoted exactly, the look, the position, the background.
    `centres`: each block's centre as fractions (x, y) of the canvas."""
    parts = []
    for b, (xf, yf) in zip(blocks, centres):
        parts.append((describe_block(b), _position(b.band, len(blocks), xf, yf)))
    if len(blocks) == 1:
        desc, pos = parts[0]
        return f"{desc[0].upper()}{desc[1:]}, {pos} on {bg_desc}."
    intro = f"{_COUNT.get(len(blocks), str(len(blocks))).capitalize()} blocks of text on {bg_desc}."
    body = "; ".join(f"{pos}, {desc}" for desc, pos in parts)
    return f"{intro} {body[0].upper()}{body[1:]}."

