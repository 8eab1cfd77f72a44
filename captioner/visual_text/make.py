"""`curation visual-text make OUT --n N --seed S`: synthetic text images with exact captions, checked by OCR.

A Ray Data pass: `range(N)` → render actors (one CPU each; fonts, pictures and the PP-OCRv4 engine loaded once per
actor) that draw sample i from its own generator seeded by (seed, i), write its image under `OUT/images/`, read it
back with PP-OCRv4 (`operators.ocr`, the project's OCR code) and score the reading against the rendered text →
rows sorted by index → `OUT/samples/part-*.parquet` in the manifest schema, `OUT/stages/<stage.name>/` with the kept
rows, and `OUT/run.json` with the counts and the per-font / per-size kept shares.

The gate: a render whose OCR character accuracy (1 - edit distance / length of the rendered text, both sides NFKC
normalised and without whitespace) is below `ocr.min_char_accuracy` is dropped from the stage and kept in
`samples/` as a `rejected` row with reason `ocr_char_accuracy` (its image stays, to look at). Every drop is counted
in run.json, per font and per size too, so a font the recogniser cannot read shows up and can be removed from
`fonts:`. `--n` is the number of renders attempted; the kept count is what passes the gate.
"""

from __future__ import annotations

import functools
import hashlib
import json
import logging
import math
import os
import time
import unicodedata
from dataclasses import asdict, dataclass, field, fields, replace
from pathlib import Path
from typing import Any

import numpy as np

from captioner.visual_text import render as R
from captioner.visual_text.text import KINDS, make_text, read_terms
from curation import typed
from curation.errors import ConfigError
from curation.typed import setting

log = logging.getLogger(__name__)

CAPTION_SOURCE = "synthetic_text"
REJECT_REASON = "ocr_char_accuracy"
EXTRA_COLUMNS = {
    "render_lang": "string", "render_kind": "string", "render_font": "string", "render_font_size": "int64",
    "render_blocks": "int64", "render_background": "string", "render_background_kind": "string",
    "render_params": "string", "ocr_read": "string", "ocr_char_accuracy": "float64", "synthetic_seed": "int64",
    "synthetic_index": "int64",
}


def _weights(keys: tuple[str, ...]):
    """A check: a mapping of some of `keys` to weights >= 0 that do not all vanish."""
    def check(value: dict) -> str | None:
        unknown = [k for k in value if k not in keys]
        if not value or unknown:
            return f"expected a mapping of {'/'.join(keys)} to weights" + (f", got {unknown[0]!r}" if unknown else "")
        if any(v < 0 for v in value.values()):
            return "weights must be >= 0"
        return "the weights add up to 0" if sum(value.values()) <= 0 else None
    return check


def _non_empty(value: tuple) -> str | None:
    return None if value else "expected a non-empty list of numbers >= 0"


def _fonts(value: tuple | None) -> str | None:
    try:
        R.available_fonts(list(value))
    except ValueError as exc:
        return str(exc)
    return None


def _folder(value: str) -> str | None:
    return None if value and "/" not in value and not value.startswith(".") else "expected a plain folder name"


def _spacing(value: tuple) -> str | None:
    return None if len(value) == 2 and value[0] <= value[1] else "expected [low, high]"


def _canvases(value: tuple) -> str | None:
    ok = value and all(w >= 64 and h >= 64 for w, h in value)
    return None if ok else "expected a list of [width, height] pairs (>= 64 px)"


@dataclass(frozen=True)
class VisualTextConfig:
    """What to render and how to check it (YAML `visual_text:` section; every key optional; read by
    `curation.typed`)."""

    zh_share: float = setting(0.5, ge=0, le=1)  # share of samples in Chinese; the rest English
    kinds: dict[str, float] = setting(default_factory=lambda: {"word": 0.3, "phrase": 0.4, "passage": 0.3},
                                      check=_weights(KINDS))
    backgrounds: dict[str, float] = setting(default_factory=lambda: {"white": 0.6, "photo": 0.25, "texture": 0.15},
                                            check=_weights(("white", "photo", "texture")))
    blocks: tuple[int | float, ...] = setting((0.7, 0.2, 0.1), ge=0, check=_non_empty)  # weights of 1, 2, 3 ... blocks
    fonts: tuple[str, ...] | None = setting(None, check=_fonts)  # font keys of render.FONTS; None: every one installed
    # font sizes drawn from (px); shrunk to fit, never below min_size
    sizes: tuple[int | float, ...] = setting((24, 32, 40, 56, 72, 96), ge=0, check=_non_empty)
    min_size: int = setting(18, ge=1)
    canvases: tuple[tuple[int, int], ...] = setting(((512, 512), (640, 480), (480, 640), (768, 432)),
                                                    check=_canvases)
    max_angle: float = 4.0  # degrees, for the rotated share
    p_rotate: float = setting(0.3, ge=0, le=1)
    p_perspective: float = setting(0.15, ge=0, le=1)
    max_perspective: float = 0.06  # corner shift as a share of the block height
    spacing: tuple[float, ...] = setting((1.15, 1.6), ge=0, check=_spacing)  # line spacing range, in font sizes
    vocab_size: int = setting(20000, ge=1)
    p_number: float = setting(0.3, ge=0, le=1)
    p_punct: float = setting(0.4, ge=0, le=1)
    max_lines: int = setting(3, ge=1)
    # terms never rendered (text.py): inline, and/or a word-list file (UTF-8, one per line, # comments)
    exclude_words: tuple[str, ...] = ()
    exclude_words_file: str | None = None
    min_contrast: float = 4.5
    min_char_accuracy: float = setting(0.9, ge=0, le=1)  # the OCR gate; 0 keeps everything (OCR still runs)
    ocr: bool = True
    batch_size: int = setting(16, ge=1)
    concurrency: int | None = None  # render actors; None: one per CPU of the cluster
    stage_name: str = setting("s9_visual_text", check=_folder)
    stage_share: float = setting(0.05, ge=0, lt=1)  # share of draws the stage gets when mixed with `mix_with`
    mix_with: str | None = None  # a stages/ folder (or one stage folder) the share is relative to
    part_rows: int = setting(50000, ge=1)


def parse_config(data: Any) -> VisualTextConfig:
    """A VisualTextConfig from a YAML mapping (a `visual_text:` section, or the keys themselves)."""
    if isinstance(data, dict):
        data = data.get("visual_text", data)
    cfg = typed.read(VisualTextConfig, data, "visual_text")
    terms = {t.strip().lower() for t in cfg.exclude_words if t.strip()}
    if cfg.exclude_words_file:
        try:
            terms.update(read_terms(cfg.exclude_words_file))
        except OSError as exc:
            raise ConfigError(f"visual_text.exclude_words_file: cannot read the word list: {exc.strerror or exc}") \
                from None
        except UnicodeDecodeError:
            raise ConfigError("visual_text.exclude_words_file: the word list is not UTF-8 text") from None
    cfg = replace(cfg, exclude_words=tuple(sorted(terms)))  # one sorted list: the file is read here, once
    fonts = R.available_fonts(list(cfg.fonts) if cfg.fonts else None)
    for lang, share in (("zh", cfg.zh_share), ("en", 1 - cfg.zh_share)):
        if share > 0 and not any(f.lang == lang for f in fonts):
            raise ConfigError(f"visual_text: no {lang} font installed or configured (make setup installs them)")
    return cfg


def load_config(path: str | os.PathLike | None) -> VisualTextConfig:
    """The config of a YAML file (None: the defaults)."""
    if path is None:
        return VisualTextConfig()
    return parse_config(typed.load_yaml_file(path))


# ---------------------------------------------------------------------------------------------------------------
# One sample


def _pick(rng: np.random.Generator, weights: dict) -> str:
    keys = list(weights)
    p = np.array([weights[k] for k in keys], float)
    return keys[int(rng.choice(len(keys), p=p / p.sum()))]


def _shrink(lines: list[str], lang: str) -> list[str] | None:
    """The text made one step shorter (last line, else last word / character), None when nothing is left."""
    if len(lines) > 1:
        return lines[:-1]
    line = lines[0]
    if lang == "en" and " " in line:
        return [line.rsplit(" ", 1)[0]]
    return [line[:-1]] if len(line) > 1 else None


@functools.lru_cache(maxsize=4)
def _terms(words: tuple[str, ...]) -> frozenset[str]:
    return frozenset(words)


def render_sample(seed: int, index: int, cfg: VisualTextConfig,
                  fonts: list[R.FontSpec]) -> tuple[np.ndarray, dict[str, Any]]:
    """The image (H, W, 3) uint8 and the row fields of sample `index`: a pure function of (seed, index, cfg)."""
    rng = np.random.default_rng([int(seed), int(index)])
    lang = "zh" if rng.random() < cfg.zh_share else "en"
    width, height = cfg.canvases[int(rng.integers(len(cfg.canvases)))]
    bg_kind = _pick(rng, cfg.backgrounds)
    canvas, bg_name, bg_desc = R.background(rng, bg_kind, width, height)
    canvas = canvas.copy()
    bw = np.array(cfg.blocks, float)
    n_blocks = 1 + int(rng.choice(len(bw), p=bw / bw.sum()))
    lang_fonts = [f for f in fonts if f.lang == lang]
    band_h = height // n_blocks
    blocks: list[R.Block] = []
    centres: list[tuple[float, float]] = []
    for band in range(n_blocks):
        kind = _pick(rng, cfg.kinds)
        lines = make_text(rng, lang, kind, cfg.vocab_size, cfg.p_number, cfg.p_punct, cfg.max_lines,
                          _terms(cfg.exclude_words))
        font = lang_fonts[int(rng.integers(len(lang_fonts)))]
        size = int(cfg.sizes[int(rng.integers(len(cfg.sizes)))])
        spacing = float(rng.uniform(*cfg.spacing))
        align = ("left", "centre", "right")[int(rng.integers(3))]
        angle = float(rng.uniform(-cfg.max_angle, cfg.max_angle)) if rng.random() < cfg.p_rotate else 0.0
        persp = float(rng.uniform(-cfg.max_perspective, cfg.max_perspective)) \
            if rng.random() < cfg.p_perspective else 0.0
        # Fit: a margin of 8 % of the canvas width and room for the rotation's spread.
        max_w = int(width * 0.84) - int(abs(math.sin(math.radians(angle))) * band_h)
        max_h = int(band_h * 0.8)
        fitted = None
        while lines is not None:
            fitted = R.fit_size(lines, font.key, size, max_w, max_h, spacing, cfg.min_size)
            if fitted is not None:
                break
            lines = _shrink(lines, lang)
        if lines is None or fitted is None:
            raise RuntimeError(f"no text fits a {width}x{band_h} band in {font.key} at {cfg.min_size} px")
        colour_name, rgb, outline = _colour(rng, canvas, bg_kind, band, band_h, width)
        blocks.append(R.Block(lang=lang, kind=kind, lines=lines, font=font.key, size=fitted, colour=colour_name,
                              rgb=rgb, align=align, spacing=round(spacing, 3), angle=round(angle, 2),
                              perspective=round(persp, 4), outline=outline, band=band))
    for b in blocks:
        stroke = None if b.outline is None else ((0, 0, 0) if b.outline == "black" else (255, 255, 255))
        layer = R.draw_block(b, stroke)
        lh, lw = layer.shape[:2]
        x = int(rng.integers(0, max(1, width - lw + 1)))
        y0 = b.band * band_h
        y = y0 + int(rng.integers(0, max(1, band_h - lh + 1)))
        b.x, b.y = x, y
        R.composite(canvas, layer, x, y)
        centres.append(((x + lw / 2) / width, (y + lh / 2) / height))
    text = "\n".join(line for b in blocks for line in b.lines)
    row = {
        "width": width, "height": height, "ocr_text": text, "caption": R.caption(blocks, bg_desc, centres),
        "render_lang": lang, "render_kind": blocks[0].kind, "render_font": blocks[0].font,
        "render_font_size": blocks[0].size, "render_blocks": len(blocks), "render_background": bg_name,
        "render_background_kind": bg_kind,
        "render_params": json.dumps([{k: v for k, v in asdict(b).items()} for b in blocks], ensure_ascii=False),
    }
    return canvas, row



def _colour(rng: np.random.Generator, canvas: np.ndarray, bg_kind: str, band: int, band_h: int,
            width: int) -> tuple[str, tuple[int, int, int], str | None]:
    """(colour name, RGB, outline colour or None): dark on white; over a picture, one that contrasts with the band."""
    if bg_kind == "white":
        dark = R.COLOURS[:7]
        name, rgb = dark[int(rng.integers(len(dark)))]
        return name, rgb, None
    region = canvas[band * band_h:(band + 1) * band_h, :width]
    mean = region.reshape(-1, 3).mean(axis=0)
    ok = [(n, c) for n, c in R.COLOURS if R.contrast_ratio(c, mean) >= 4.5]
    if not ok:  # a mid-grey region: the better of black and white, with an outline
        ok = [max((("black", (0, 0, 0)), ("white", (255, 255, 255))), key=lambda nc: R.contrast_ratio(nc[1], mean))]
    name, rgb = ok[int(rng.integers(len(ok)))]
    busy = float(region.astype(np.float32).mean(axis=2).std()) > 40 or R.contrast_ratio(rgb, mean) < 4.5
    outline = None
    if busy:
        outline = "black" if R.contrast_ratio(rgb, (0, 0, 0)) > R.contrast_ratio(rgb, (255, 255, 255)) else "white"
    return name, rgb, outline


# ---------------------------------------------------------------------------------------------------------------
# The OCR gate


def _norm(text: str) -> str:
    return "".join(unicodedata.normalize("NFKC", text).split())


def edit_distance(a: str, b: str) -> int:
    """Levenshtein distance between two strings."""
    prev = list(range(len(b) + 1))
    for i, ca in enumerate(a, 1):
        cur = [i]
        for j, cb in enumerate(b, 1):
            cur.append(min(prev[j] + 1, cur[j - 1] + 1, prev[j - 1] + (ca != cb)))
        prev = cur
    return prev[-1]


def char_accuracy(truth: str, read: str) -> float:
    """1 - edit distance / length of the truth, both NFKC-normalised without whitespace (0 when nothing matches)."""
    t, r = _norm(truth), _norm(read)
    if not t:
        return 1.0 if not r else 0.0
    return max(0.0, 1.0 - edit_distance(t, r) / len(t))


class OcrGate:
    """PP-OCRv4 (operators.ocr) reading a render back, scored against the rendered text."""

    def __init__(self, threads: int = 1):
        from operators.ocr import OcrEngine

        # The whole image at its own size (det_limit_side_len 0), as the OCR operator reads frames.
        self.engine = OcrEngine(threads=threads)

    def read(self, image: np.ndarray) -> str:
        """What PP-OCRv4 reads in an RGB image, lines in reading order."""
        from operators.ocr import ocr_clip

        return ocr_clip(self.engine, image[None], num_frames=1)["ocr_text"]


# ---------------------------------------------------------------------------------------------------------------
# The Ray pass


def sample_row(seed: int, index: int, cfg: VisualTextConfig, fonts: list[R.FontSpec], images: Path,
               gate: OcrGate | None) -> dict[str, Any]:
    """Render sample `index`, write its image, gate it; the manifest row (status kept / rejected / failed)."""
    from PIL import Image

    from curation.schema import make_sample_id

    uri = f"synthetic-text://seed-{seed}/{index}"
    row: dict[str, Any] = {"sample_id": make_sample_id(uri, None, None), "synthetic_seed": seed,
                           "synthetic_index": index, "media_type": "image", "num_frames": 1, "rotation": 0,
                           "clip_index": 0, "clips_in_source": 1, "caption_source": CAPTION_SOURCE,
                           "status": "kept", "reject_reasons": []}
    path = images / f"{row['sample_id']}.png"
    row["source_uri"] = str(path)
    try:
        image, fields_ = render_sample(seed, index, cfg, fonts)
        row.update(fields_)
        tmp = path.with_name(f".{path.name}.tmp.png")
        Image.fromarray(image).save(tmp, compress_level=1)
        os.replace(tmp, path)  # a half-written image never sits under its final name
        row["source_size_bytes"] = path.stat().st_size
    except Exception as exc:  # noqa: BLE001 - one bad sample is a failed row, not a failed run
        row.update(status="failed", error=f"render: {type(exc).__name__}: {exc}")
        return row
    if gate is not None:
        read = gate.read(image)
        acc = char_accuracy(row["ocr_text"], read)
        row["ocr_read"], row["ocr_char_accuracy"] = read, round(acc, 4)
        if acc < cfg.min_char_accuracy:
            row["status"], row["reject_reasons"] = "rejected", [REJECT_REASON]
    return row


class _Render:
    """Ray map_batches body (CPU actor): fonts, pictures and the OCR engine loaded once, then rows per batch."""

    def __init__(self, cfg: VisualTextConfig, seed: int, images: str):
        self.cfg, self.seed, self.images = cfg, seed, Path(images)
        self.fonts = R.available_fonts(list(cfg.fonts) if cfg.fonts else None)
        self.gate = OcrGate() if cfg.ocr else None

    def __call__(self, batch: dict[str, np.ndarray]) -> Any:
        import pandas as pd

        rows = [sample_row(self.seed, int(i), self.cfg, self.fonts, self.images, self.gate) for i in batch["id"]]
        df = pd.DataFrame(rows)
        for col in ("reject_reasons",):
            df[col] = [list(v) if isinstance(v, list) else [] for v in df[col]]
        return df


def _table(rows: Any) -> Any:
    import pyarrow as pa

    from curation.schema import manifest_schema

    schema = manifest_schema({k: getattr(pa, v)() for k, v in EXTRA_COLUMNS.items()})
    data = {}
    for f in schema:
        values = rows[f.name].tolist() if f.name in rows else [None] * len(rows)
        # Rows of failed renders lack most fields: pandas fills NaN and turns int columns into floats.
        values = [None if (isinstance(x, float) and math.isnan(x)) else x for x in values]
        if pa.types.is_integer(f.type):
            values = [None if x is None else int(x) for x in values]
        data[f.name] = values
    return pa.Table.from_pydict(data, schema=schema)


def _shares(rows: Any, by: str) -> dict[str, dict[str, Any]]:
    out = {}
    done = rows[rows["status"] != "failed"]
    for key, g in done.groupby(by):
        kept = int((g["status"] == "kept").sum())
        out[str(key)] = {"rendered": len(g), "kept": kept, "kept_share": round(kept / len(g), 4),
                         "mean_char_accuracy": round(float(g["ocr_char_accuracy"].mean()), 4)
                         if g["ocr_char_accuracy"].notna().any() else None}
    return out


def _per_block(rows: Any, cfg: VisualTextConfig) -> tuple[dict, dict]:
    """Kept shares per font and per size bucket, counting each block of a sample (a multi-block sample counts once
    under each of its fonts)."""
    import pandas as pd

    recs = []
    sizes = sorted(cfg.sizes)
    for params, status, acc in zip(rows["render_params"], rows["status"], rows["ocr_char_accuracy"]):
        if status == "failed" or not isinstance(params, str):
            continue
        for b in json.loads(params):
            bucket = max([s for s in sizes if s <= b["size"]], default=cfg.min_size)
            recs.append({"font": b["font"], "size": f">={bucket}px", "status": status, "ocr_char_accuracy": acc})
    df = pd.DataFrame(recs, columns=["font", "size", "status", "ocr_char_accuracy"])
    return _shares(df, "font"), _shares(df, "size")


def stage_weight(cfg: VisualTextConfig, n_kept: int) -> tuple[float, float | None]:
    """(weight per stage row, total weight of `mix_with`): the stage draws `stage_share` of all draws when read
    together with `mix_with`'s rows (weight 1 per row without `mix_with`)."""
    if not cfg.mix_with or n_kept == 0:
        return 1.0, None
    import glob

    import pandas as pd

    files = sorted(glob.glob(os.path.join(cfg.mix_with, "**", "*.parquet"), recursive=True))
    if not files:
        raise ConfigError(f"visual_text.mix_with: no parquet files under {cfg.mix_with}")
    import pyarrow.parquet as pq

    total = 0.0
    for f in files:
        if "weight" in pq.read_schema(f).names:
            total += float(pd.read_parquet(f, columns=["weight"])["weight"].fillna(0).sum())
        else:  # a stage without weights is read with weight 1 per row (trainer.data.clips.read_stage_rows)
            total += float(pq.ParquetFile(f).metadata.num_rows)
    return cfg.stage_share / (1 - cfg.stage_share) * total / n_kept, total


def _recorded(cfg: VisualTextConfig) -> dict[str, Any]:
    """The config as run.json records it: the excluded terms as their count and a sha256, not the words."""
    d = asdict(cfg)
    words = d.pop("exclude_words")
    d["exclude_words"] = {"terms": len(words),
                          "sha256": hashlib.sha256("\n".join(words).encode("utf-8")).hexdigest() if words else None}
    return d


def make_visual_text(out: str | os.PathLike, n: int, seed: int = 0,
                     cfg: VisualTextConfig = VisualTextConfig()) -> dict[str, Any]:
    """Render, gate and write `n` samples into `out` (Ray Data; a local Ray is started when none runs); the summary
    also written to `out/run.json`."""
    import pandas as pd
    import ray

    from curation.manifest import part_files, write_json_atomic, write_table_atomic

    if n < 1:
        raise ConfigError(f"--n: expected at least 1 sample, got {n}")
    t0 = time.perf_counter()
    root = Path(out)
    images = root / "images"
    images.mkdir(parents=True, exist_ok=True)
    fonts = R.available_fonts(list(cfg.fonts) if cfg.fonts else None)
    if not ray.is_initialized():
        from curation.rayinit import init_ray

        init_ray(None)
    cpus = int(ray.cluster_resources().get("CPU", 1))
    concurrency = cfg.concurrency or max(1, min(cpus, -(-n // cfg.batch_size)))
    # In-memory input: no read tasks competing with the render actors for CPUs (a range() read task waits
    # forever for a CPU when the actors hold them all).
    blocks = max(1, -(-n // cfg.batch_size))
    ds = ray.data.from_items([{"id": i} for i in range(n)], override_num_blocks=blocks)
    ds = ds.map_batches(_Render, fn_constructor_args=(cfg, int(seed), str(images.resolve())), batch_size=cfg.batch_size,
                        concurrency=concurrency, num_cpus=1, batch_format="numpy")
    rows = ds.to_pandas().sort_values("synthetic_index").reset_index(drop=True)
    seconds = time.perf_counter() - t0
    # Manifest parts; a re-run into the same folder replaces them.
    samples = root / "samples"
    samples.mkdir(exist_ok=True)
    for old in part_files(samples):
        os.remove(old)
    for i, start in enumerate(range(0, len(rows), cfg.part_rows)):
        write_table_atomic(_table(rows.iloc[start:start + cfg.part_rows]), samples / f"part-{i:05d}.parquet")
    kept = rows[rows["status"] == "kept"]
    weight, mix_total = stage_weight(cfg, len(kept))
    stage_dir = root / "stages" / cfg.stage_name
    stage_dir.mkdir(parents=True, exist_ok=True)
    for old in part_files(stage_dir):
        os.remove(old)
    import pyarrow as pa

    table = _table(kept).drop_columns(["embedding"])
    table = table.append_column("stage", pa.array([cfg.stage_name] * len(kept), pa.string()))
    table = table.append_column("weight", pa.array([weight] * len(kept), pa.float64()))
    write_table_atomic(table, stage_dir / "part-00000.parquet")
    per_font, per_size = _per_block(rows, cfg)
    acc_kept = {lang: round(float(g["ocr_char_accuracy"].mean()), 4) for lang, g in kept.groupby("render_lang")
                if g["ocr_char_accuracy"].notna().any()}
    summary: dict[str, Any] = {
        "kind": "visual_text", "n": n, "seed": int(seed), "config": _recorded(cfg),
        "fonts": [f.key for f in fonts], "rendered": int((rows["status"] != "failed").sum()), "kept": len(kept),
        "dropped_ocr": int((rows["status"] == "rejected").sum()), "failed": int((rows["status"] == "failed").sum()),
        "failed_examples": [e for e in rows.get("error", pd.Series(dtype=object)).dropna().head(5)],
        "per_language": _shares(rows, "render_lang"), "mean_char_accuracy_kept": acc_kept,
        "per_font": per_font, "per_size": per_size,
        "stage": {"name": cfg.stage_name, "dir": str(stage_dir), "rows": len(kept), "weight": weight,
                  "share": cfg.stage_share if cfg.mix_with else None, "mix_with": cfg.mix_with,
                  "mix_with_total_weight": mix_total},
        "seconds": round(seconds, 3), "renders_per_s": round(n / seconds, 3) if seconds else None,
        "cpus": cpus, "actors": concurrency,
    }
    write_json_atomic(summary, root / "run.json")
    log.info("visual text: %d of %d renders kept (%d dropped by the OCR gate, %d failed) in %.1f s",
             summary["kept"], n, summary["dropped_ocr"], summary["failed"], seconds)
    return summary
