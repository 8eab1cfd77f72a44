"""`<output>/report.html`: one self-contained page a person reads after a run (docs/ARCHITECTURE.md, "Outputs").

What it shows, from `run.json`, `samples/` and `stages/`:
- the run: inputs, sources listed / processed / resumed, rows per status, time, versions, models;
- reject reasons and error kinds with their counts (and a few error messages of each kind);
- the stage mixes: rows, videos, images, hours, clusters;
- score distributions, kept against rejected, with the `decide` thresholds drawn in;
- motion tiers per status, cluster sizes;
- near-duplicates: how many rows were marked `duplicate_of` another, and pairs side by side;
- cards with a preview, the scores, the OCR text and the caption of a row: examples for every reject reason, kept
  rows at both ends of `quality_score` (or `aesthetic_score`), and the largest clusters. A video row's preview is
  a short looping animation (animated WebP: 8 frames of the middle 2 s of the clip, ~160 px, played at real
  speed), since a still frame cannot show motion or shake; an image row's is a JPEG.

The page embeds its figures (SVG from matplotlib) and previews (base64 data URIs), so it can be copied off a cluster
as one file. Every string from the data (file names, OCR text, error messages) is HTML-escaped by the template
(Jinja2 autoescape): a file named `<script>...` is shown, never run. Previews are decoded with the pipeline's own
isolated decoder (`curation.ingest.row_frames`); one that fails to decode is shown as "no preview". Scores are read
for at most `max_rows` rows (a uniform sample beyond that), so the report stays cheap on a manifest of millions.
The output may be a local folder or an object-store URL (`curation/outfs.py`).
"""

from __future__ import annotations

import base64
import io
import json
import logging
import math
import os
import time
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from curation import outfs

log = logging.getLogger(__name__)

REPORT = "report.html"
SCORE_COLUMNS = ("sharpness", "exposure", "contrast", "black_border_ratio", "motion_score", "camera_motion",
                 "object_motion", "shake_score", "text_area_ratio", "watermark_score", "nsfw_score",
                 "aesthetic_score", "synthetic_score", "quality_score")
ROW_COLUMNS = ("sample_id", "source_uri", "media_type", "start_frame", "end_frame", "fps", "width", "height",
               "rotation", "duration_s", "status", "reject_reasons", "error", "motion_tier", "cluster_id",
               "ocr_text", "caption", "duplicate_of") + SCORE_COLUMNS
PREVIEW_FRAMES = 8  # frames of a video row's looping preview
PREVIEW_WINDOW_S = 2.0  # ... taken from the middle this many seconds of the clip, played at real speed
PREVIEW_LONG_SIDE = 160  # px


def _read_rows(output: str, max_rows: int, seed: int = 0) -> pd.DataFrame:
    from curation.manifest import SAMPLES, read_manifest

    t = read_manifest(outfs.join(output, SAMPLES), list(ROW_COLUMNS), only_existing=True)
    if not t.num_columns:
        return pd.DataFrame(columns=list(ROW_COLUMNS))
    df = t.to_pandas()
    if len(df) > max_rows:
        df = df.sample(n=max_rows, random_state=seed).reset_index(drop=True)
    return df


# -- numbers ---------------------------------------------------------------------------------------------------------


def _missing(v: Any) -> bool:
    return v is None or v is pd.NA or (isinstance(v, (float, np.floating)) and math.isnan(v))


def fmt_num(v: Any) -> str:
    """A number as people read it: thousands separators, a few significant digits, no exponent in the usual
    ranges, `n/a` for a missing value (never `nan`)."""
    if _missing(v):
        return "n/a"
    if isinstance(v, (bool, np.bool_)):
        return str(bool(v)).lower()
    if isinstance(v, (int, np.integer)):
        return f"{int(v):,}"
    if not isinstance(v, (float, np.floating)):
        return str(v)
    a = abs(float(v))
    if a == 0:
        return "0"
    if a >= 1000:
        return f"{v:,.0f}"
    if a >= 100:
        return f"{v:.0f}"
    if a >= 10:
        return f"{v:.1f}"
    if a >= 1:
        return f"{v:.2f}"
    if a >= 0.001:
        return f"{v:.3f}"
    return "<0.001" if v > 0 else ">-0.001"  # e.g. a motion score of 4.9e-05: zero for a reader


def fmt_duration(seconds: Any) -> str:
    """Seconds as `42 s`, `3.5 min` or `12.3 h`."""
    if _missing(seconds):
        return "n/a"
    s = float(seconds)
    if s == 0:
        return "0 s"
    if s < 120:
        return f"{s:.0f} s" if s >= 10 else f"{s:.1f} s"
    if s < 7200:
        return f"{s / 60:.1f} min"
    return f"{s / 3600:,.1f} h"


def _plural(n: int, word: str) -> str:
    return f"{fmt_num(n)} {word}{'' if n == 1 else 's'}"


def _tick(v: float, _pos: Any = None) -> str:
    """Compact axis labels: 12k, 1.5M, 0.25."""
    a = abs(v)
    if a >= 1e6:
        return f"{v / 1e6:.3g}M"
    if a >= 1e4:
        return f"{v / 1e3:.3g}k"
    if a >= 1000:
        return f"{v:,.0f}"
    return f"{v:.3g}"


# -- figures ---------------------------------------------------------------------------------------------------------


def _svg(fig) -> str:
    buf = io.StringIO()
    fig.savefig(buf, format="svg", bbox_inches="tight")
    import matplotlib.pyplot as plt

    plt.close(fig)
    text = buf.getvalue()
    return text[text.index("<svg"):]  # drop the XML prologue: the SVG is inlined in HTML


def _thresholds(config: dict[str, Any]) -> dict[str, list[float]]:
    out: dict[str, list[float]] = {}
    for rule in config.get("decide") or []:
        for key in ("min", "max"):
            if rule.get(key) is not None:
                out.setdefault(rule["column"], []).append(float(rule[key]))
    return out


def score_figures(df: pd.DataFrame, config: dict[str, Any]) -> list[dict[str, str]]:
    """One histogram per score column that has values: kept and rejected overlaid, decide thresholds as lines."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from matplotlib.ticker import FuncFormatter, MaxNLocator

    limits = _thresholds(config)
    figs = []
    for col in SCORE_COLUMNS:
        if col not in df or df[col].notna().sum() == 0:
            continue
        vals = pd.to_numeric(df[col], errors="coerce")
        finite = vals[np.isfinite(vals)]
        lo, hi = float(finite.quantile(0.005)), float(finite.quantile(0.995))
        lo, hi = min([lo, *limits.get(col, [])]), max([hi, *limits.get(col, [])])  # thresholds in view
        if hi <= lo:  # one value everywhere and no threshold: a unit-wide axis around it
            lo, hi = lo - 0.5, hi + 0.5
        bins = np.linspace(lo, hi, 31)
        fig, ax = plt.subplots(figsize=(3.6, 2.2))
        for status, color in (("kept", "#2b8a3e"), ("rejected", "#c92a2a")):
            v = vals[(df["status"] == status) & np.isfinite(vals)].clip(lo, hi)
            if len(v):
                ax.hist(v, bins=bins, alpha=0.55, color=color, label=f"{status} ({len(v)})")
        for t in limits.get(col, []):
            ax.axvline(t, color="black", linestyle="--", linewidth=1)
        ax.set_title(col, fontsize=9)
        ax.tick_params(labelsize=7)
        # Few ticks with short labels: the default formatter crowds a 3.6-inch axis and writes offsets (1e3).
        ax.xaxis.set_major_locator(MaxNLocator(nbins=5))
        ax.xaxis.set_major_formatter(FuncFormatter(_tick))
        ax.yaxis.set_major_locator(MaxNLocator(nbins=4, integer=True))
        ax.yaxis.set_major_formatter(FuncFormatter(_tick))
        ax.set_ylabel("rows", fontsize=7)
        for side in ("top", "right"):
            ax.spines[side].set_visible(False)
        ax.legend(fontsize=6, frameon=False)
        figs.append({"column": col, "svg": _svg(fig)})
    return figs


def _bar_figure(labels: list[str], series: dict[str, list[int]], title: str) -> str:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from matplotlib.ticker import FuncFormatter, MaxNLocator

    fig, ax = plt.subplots(figsize=(min(9.0, max(3.6, 0.22 * len(labels) + 1.5)), 2.4))
    x = np.arange(len(labels))
    bottom = np.zeros(len(labels))
    colors = {"kept": "#2b8a3e", "rejected": "#c92a2a", "failed": "#868e96", "rows": "#1c7ed6"}
    for name, counts in series.items():
        ax.bar(x, counts, bottom=bottom, color=colors.get(name), label=name)
        bottom += np.asarray(counts, dtype=float)
    # At most ~20 labels on the axis, horizontal when they are short: every label of 40 bars would overlap.
    step = max(1, math.ceil(len(labels) / 20))
    short = max((len(lab) for lab in labels), default=0) <= 3
    ax.set_xticks(x[::step], labels[::step], rotation=0 if short else 40, ha="center" if short else "right",
                  fontsize=7)
    ax.yaxis.set_major_locator(MaxNLocator(nbins=4, integer=True))
    ax.yaxis.set_major_formatter(FuncFormatter(_tick))
    ax.tick_params(axis="y", labelsize=7)
    for side in ("top", "right"):
        ax.spines[side].set_visible(False)
    ax.set_title(title, fontsize=9)
    if len(series) > 1:
        ax.legend(fontsize=6, frameon=False)
    return _svg(fig)


# -- thumbnails ------------------------------------------------------------------------------------------------------


def _jpeg_uri(frame: np.ndarray) -> str:
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(np.ascontiguousarray(frame)).save(buf, format="JPEG", quality=80)
    return "data:image/jpeg;base64," + base64.b64encode(buf.getvalue()).decode("ascii")


def _webp_uri(frames: np.ndarray, frame_ms: int) -> str:
    """Frames as a looping animated WebP data URI (small: lossy, quality 60)."""
    from PIL import Image

    images = [Image.fromarray(np.ascontiguousarray(f)) for f in frames]
    buf = io.BytesIO()
    images[0].save(buf, format="WEBP", save_all=True, append_images=images[1:], duration=frame_ms, loop=0,
                   quality=60, method=4)
    return "data:image/webp;base64," + base64.b64encode(buf.getvalue()).decode("ascii")


def _preview_short_side(row: dict[str, Any], long_side: int) -> int:
    """The short side that puts the displayed picture's long side at `long_side` px (even, at least 16)."""
    try:
        w, h = int(row["width"]), int(row["height"])
    except (TypeError, ValueError, KeyError):
        return long_side
    if w <= 0 or h <= 0:
        return long_side
    return max(16, int(round(long_side * min(w, h) / max(w, h) / 2)) * 2)


def preview(row: dict[str, Any], long_side: int = PREVIEW_LONG_SIDE, timeout_s: float = 30.0,
            animate: bool = True) -> str | None:
    """A row's preview as a data URI, or None if it cannot be decoded: for a video, a looping animated WebP of
    PREVIEW_FRAMES frames spread over the middle PREVIEW_WINDOW_S seconds of the clip (real speed, so motion and
    shake show as they are); for an image (or with `animate=False`), a JPEG of one frame. Decoding goes through the
    pipeline's isolated decoder helper (`curation.ingest.row_frames`: time limit, memory cap, a crash stays there)."""
    from curation.config import LimitsConfig
    from curation.ingest import row_frames

    short = _preview_short_side(row, long_side)
    video = row.get("media_type") == "video"
    try:
        if video and animate:
            start, end, fps = int(row["start_frame"]), int(row["end_frame"]), float(row["fps"])
            span = max(1, min(end - start, int(round(PREVIEW_WINDOW_S * fps))))
            first = start + (end - start - span) // 2
            n = min(PREVIEW_FRAMES, span)
            window = {**row, "start_frame": first, "end_frame": first + span}
            frames = row_frames(window, n, short, LimitsConfig().max_pixels, timeout_s)
            if len(frames) > 1:
                return _webp_uri(frames, frame_ms=int(min(500, max(60, 1000 * span / fps / len(frames)))))
        else:
            frames = row_frames(row, 3, short, LimitsConfig().max_pixels, timeout_s)
        frame = frames[len(frames) // 2]
    except Exception as exc:  # a preview is optional; say why in the log
        log.info("no preview for %s: %s", row.get("sample_id"), exc)
        return None
    return _jpeg_uri(frame)


def _caption_note(summary: dict[str, Any] | None) -> dict[str, str]:
    """One line on the captioning pass for the notes list (off, or how many rows were captioned)."""
    if not summary:
        return {}
    if not summary.get("enabled"):
        return {"captioning": summary.get("note", "off")}
    line = (f"{summary.get('captioned', 0)} of {summary.get('to_caption', 0)} rows captioned this run by "
            f"{summary.get('model')}, {summary.get('failed', 0)} failed")
    examples = summary.get("error_examples") or []
    return {"captioning": line + (f" (e.g. {examples[0]})" if examples else "")}


def _clip(text: str, n: int) -> str:
    text = " ".join(str(text).split())  # OCR lines and captions on one line
    return text if len(text) <= n else text[:n].rstrip() + "…"


def _card(row: dict[str, Any], long_side: int, extra: list[str], animate: bool = True,
          scores: tuple[str, ...] = ()) -> dict[str, Any]:
    name = os.path.basename(str(row["source_uri"]))
    size = "" if _missing(row.get("width")) or _missing(row.get("height")) else \
        f"{int(row['width'])}×{int(row['height'])}"
    if row.get("media_type") == "image":
        sub = " · ".join(x for x in ("image", size) if x)
    else:
        sub = " · ".join(x for x in (f"frames [{int(row['start_frame'])}, {int(row['end_frame'])})",
                                     fmt_duration(row.get("duration_s")), size) if x)
    ocr = row.get("ocr_text")
    if isinstance(ocr, str) and ocr.strip():
        extra = [*extra, "text: “" + _clip(ocr, 120) + "”"]
    caption = row.get("caption")
    if isinstance(caption, str) and caption:
        extra = [*extra, "caption: " + _clip(caption, 240)]
    return {"img": preview(row, long_side, animate=animate), "title": name, "sub": sub, "sample_id": row["sample_id"],
            "scores": [(c, fmt_num(row.get(c))) for c in scores if not _missing(row.get(c))],
            "lines": [x for x in extra if x]}


def _tier(row: dict[str, Any]) -> str:
    """The motion tier line of a card; `n/a` for images and rows without one."""
    t = row.get("motion_tier")
    return f"tier={'n/a' if _missing(t) else t}"


def _duplicate_pairs(output: str, df: pd.DataFrame, limit: int) -> tuple[int, list[dict[str, Any]]]:
    """(rows marked `duplicate_of` another, up to `limit` pairs as (duplicate row, representative row, distance
    note)). The representatives are read from the manifest by id (they may lie outside the sampled rows)."""
    import pyarrow.dataset as pads

    from curation.dedup import hamming
    from curation.manifest import SAMPLES, read_manifest

    if "duplicate_of" not in df:
        return 0, []
    dups = df[df["duplicate_of"].notna()]
    if not len(dups):
        return 0, []
    dups = dups.sort_values("sample_id").head(limit)
    ids = sorted(set(dups["sample_id"]) | set(dups["duplicate_of"].astype(str)))
    t = read_manifest(outfs.join(output, SAMPLES), list(ROW_COLUMNS) + ["phash", "embedding"], only_existing=True,
                      filter=pads.field("sample_id").isin(ids))
    by_id = {r["sample_id"]: r for r in t.to_pylist()}
    pairs = []
    for d in dups.to_dict("records"):
        dup, rep = by_id.get(d["sample_id"]), by_id.get(str(d["duplicate_of"]))
        if dup is None or rep is None:
            continue
        notes = []
        if dup.get("phash") is not None and rep.get("phash") is not None:
            notes.append(f"pHash distance {int(hamming(int(dup['phash']), int(rep['phash'])))} of 64 bits")
        ea, eb = dup.get("embedding"), rep.get("embedding")
        if ea is not None and eb is not None and len(ea) and len(ea) == len(eb):
            a, b = np.asarray(ea, np.float64), np.asarray(eb, np.float64)
            cos = float(a @ b / max(np.linalg.norm(a) * np.linalg.norm(b), 1e-12))
            notes.append(f"cosine {cos:.3f}")
        pairs.append({"dup": dup, "rep": rep, "note": ", ".join(notes)})
    return int(len(df["duplicate_of"].dropna())), pairs


# -- the page --------------------------------------------------------------------------------------------------------

TEMPLATE = """<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>curation report: {{ run.name }}</title>
<style>
body { font-family: system-ui, sans-serif; margin: 1.5em; color: #212529; max-width: 1400px; }
table { border-collapse: collapse; margin: .5em 0 1em; font-size: 13px; }
td, th { border: 1px solid #dee2e6; padding: 3px 8px; text-align: left; vertical-align: top; }
td.n { text-align: right; font-variant-numeric: tabular-nums; }
.figs, .cards { display: flex; flex-wrap: wrap; gap: 10px; }
.card { width: 190px; font-size: 11px; border: 1px solid #dee2e6; padding: 4px; overflow-wrap: anywhere; }
.card img { max-width: 182px; display: block; margin-bottom: 3px; }
.pair { display: flex; gap: 6px; border: 1px solid #dee2e6; padding: 4px; font-size: 11px; }
.pair .card { border: none; padding: 0; }
.nopreview { width: 182px; height: 100px; background: #f1f3f5; display: flex; align-items: center;
             justify-content: center; color: #868e96; }
.muted { color: #868e96; font-size: 12px; }
.card .muted { font-size: 10px; }
.scores { display: grid; grid-template-columns: auto auto; column-gap: 6px; margin: 2px 0; }
.scores span:nth-child(odd) { color: #495057; }
.scores span:nth-child(even) { text-align: right; font-variant-numeric: tabular-nums; }
table.kv { max-width: 1100px; }
h2 { border-bottom: 1px solid #dee2e6; padding-bottom: 2px; }
</style></head><body>
<h1>Curation run: {{ run.name }}</h1>
<p class="muted">output {{ run.output }} · config {{ run.config_path or "n/a" }} · {{ generated }}</p>
<div class="figs">
<table><tr><th colspan="3">sources</th></tr>
<tr><th>listed</th><th>processed this run</th><th>already finished</th></tr>
<tr><td class="n">{{ run.sources_listed|num }}</td><td class="n">{{ run.sources_processed|num }}</td>
<td class="n">{{ run.sources_skipped_as_finished|num }}</td></tr></table>
<table><tr><th colspan="{{ counts.status|length + 1 }}">rows</th></tr>
<tr><th>all</th>{% for s in counts.status %}<th>{{ s }}</th>{% endfor %}</tr>
<tr><td class="n">{{ counts.rows|num }}</td>{% for n in counts.status.values() %}<td class="n">{{ n|num }}</td>{% endfor %}</tr></table>
</div>
<table class="kv">
<tr><th>time</th><td>{{ timings }}</td></tr>
<tr><th>versions</th><td>{{ versions }}</td></tr>
<tr><th>models</th><td>{{ models }}</td></tr>
</table>
{% if notes %}<p><b>operator notes</b></p><ul>{% for k, v in notes.items() %}<li>{{ k }}: {{ v }}</li>{% endfor %}</ul>{% endif %}

<h2>Reject reasons</h2>
{% if counts.reject_reasons %}<table><tr><th>reason</th><th>rows</th><th>share of rows</th></tr>
{% for r, n in counts.reject_reasons.items() %}<tr><td>{{ r }}</td><td class="n">{{ n|num }}</td><td class="n">{{ "%.1f"|format(100 * n / counts.rows) }}%</td></tr>{% endfor %}
</table>{% else %}<p>none</p>{% endif %}

<h2>Errors</h2>
{% if errors %}<table><tr><th>kind</th><th>rows</th><th>examples</th></tr>
{% for e in errors %}<tr><td>{{ e.kind }}</td><td class="n">{{ e.n|num }}</td><td>{% for m in e.examples %}{{ m }}<br>{% endfor %}</td></tr>{% endfor %}
</table>{% else %}<p>none</p>{% endif %}

<h2>Stage mixes</h2>
{% if stages %}<table><tr><th>stage</th><th>rows</th><th>videos</th><th>images</th><th>video duration</th><th>clusters</th><th>max weight</th></tr>
{% for name, s in stages.items() %}<tr><td>{{ name }}</td><td class="n">{{ s.rows|num }}</td><td class="n">{{ s.videos|num }}</td>
<td class="n">{{ s.images|num }}</td><td class="n">{{ ((s.video_hours * 3600) if s.video_hours is number else none)|duration }}</td><td class="n">{{ s.clusters|num }}</td>
<td class="n">{{ s.weight_max|num }}</td></tr>{% endfor %}</table>
{% else %}<p>no stages configured</p>{% endif %}

<h2>Scores (kept vs rejected; dashed: decide thresholds)</h2>
{% if sampled %}<p class="muted">distributions over a uniform sample of {{ sampled|num }} rows</p>{% endif %}
<div class="figs">{% for f in score_figs %}<div>{{ f.svg|safe }}</div>{% endfor %}</div>
<div class="figs">{% if tier_fig %}<div>{{ tier_fig|safe }}</div>{% endif %}{% if cluster_fig %}<div>{{ cluster_fig|safe }}</div>{% endif %}</div>

<h2>Near-duplicates</h2>
{% if dup.enabled %}<p>{{ dup.count }} marked <code>duplicate_of</code> another row{{ dup.action }}{% if dup.pairs %}; {{ dup.shown }} shown (left: the row kept as the group's representative, right: its duplicate){% endif %}.</p>
<div class="cards">{% for p in dup.pairs %}<div class="pair">{% for c in (p.rep, p.dup) %}<div class="card">
{% if c.img %}<img src="{{ c.img }}" alt="{{ c.sample_id }}">{% else %}<div class="nopreview">no preview</div>{% endif %}
<b>{{ c.title }}</b><div class="muted">{{ c.sub }}</div>{% if c.scores %}<div class="scores">{% for k, v in c.scores %}<span>{{ k }}</span><span>{{ v }}</span>{% endfor %}</div>{% endif %}
{% for l in c.lines %}<div>{{ l }}</div>{% endfor %}</div>{% endfor %}</div>{% endfor %}</div>
{% else %}<p>not computed (clustering is off)</p>{% endif %}

{% for section in sections %}
<h2>{{ section.title }}</h2>{% if section.note %}<p class="muted">{{ section.note }}</p>{% endif %}
<div class="cards">{% for c in section.cards %}<div class="card">
{% if c.img %}<img src="{{ c.img }}" alt="{{ c.sample_id }}">{% else %}<div class="nopreview">no preview</div>{% endif %}
<b>{{ c.title }}</b><div class="muted">{{ c.sub }}</div>{% if c.scores %}<div class="scores">{% for k, v in c.scores %}<span>{{ k }}</span><span>{{ v }}</span>{% endfor %}</div>{% endif %}
{% for l in c.lines %}<div>{{ l }}</div>{% endfor %}</div>{% endfor %}</div>
{% endfor %}
</body></html>
"""


def build_report(output: str | os.PathLike, max_examples: int = 6, thumb: int = PREVIEW_LONG_SIDE,
                 max_rows: int = 200_000, seed: int = 0, animate: bool = True) -> Path | str:
    """Write `<output>/report.html` from the run's manifests (a local folder or an object-store URL); return its
    path (its URL on an object store). `animate=False` gives video rows a still JPEG instead of a looping preview."""
    import jinja2

    output = os.fspath(output)
    run_path = outfs.join(output, "run.json")
    run = json.loads(outfs.read_text(run_path)) if outfs.is_file(run_path) else {}
    from curation.manifest import counts as manifest_counts
    from curation.manifest import error_kind

    counts = run.get("counts") or manifest_counts(output)
    df = _read_rows(output, max_rows, seed)
    rows = df.to_dict("records")
    rng = np.random.default_rng(seed)

    errors = []
    failed = df[df["status"] == "failed"] if len(df) else df
    for kind, n in (counts.get("errors") or {}).items():
        msgs = [str(e) for e in failed["error"] if error_kind(e) == kind][:3]
        errors.append({"kind": kind, "n": n, "examples": msgs})

    score_cols = ("sharpness", "motion_score", "watermark_score", "text_area_ratio", "quality_score",
                  "aesthetic_score")

    def card(r: dict[str, Any], extra: list[str], scores: tuple[str, ...] = score_cols) -> dict[str, Any]:
        return _card(r, thumb, extra, animate=animate, scores=scores)

    sections = []
    by_reason: dict[str, list[int]] = {}
    for i, r in enumerate(rows):
        if r["status"] == "rejected":
            for reason in list(r.get("reject_reasons") if r.get("reject_reasons") is not None else []):
                by_reason.setdefault(str(reason), []).append(i)
    for reason in sorted(by_reason, key=lambda k: -len(by_reason[k])):
        idx = by_reason[reason]
        pick = sorted(rng.choice(idx, size=min(max_examples, len(idx)), replace=False).tolist())
        sections.append({"title": f"Rejected: {reason}", "note": f"{_plural(len(idx), 'row')}; {len(pick)} shown",
                         "cards": [card(rows[j], [_tier(rows[j])]) for j in pick]})
    kept = df[df["status"] == "kept"] if len(df) else df
    rank_col = next((c for c in ("quality_score", "aesthetic_score") if c in kept and kept[c].notna().any()), None)
    if rank_col:
        ranked = kept[kept[rank_col].notna()].sort_values(rank_col)
        for title, part in ((f"Kept, highest {rank_col}", ranked.tail(max_examples).iloc[::-1]),
                            (f"Kept, lowest {rank_col}", ranked.head(max_examples))):
            sections.append({"title": title, "note": "", "cards": [
                card(r, [_tier(r)]) for r in part.to_dict("records")]})
    elif len(kept):
        part = kept.sample(n=min(max_examples, len(kept)), random_state=seed)
        sections.append({"title": "Kept (random)", "note": "", "cards": [
            card(r, [_tier(r)]) for r in part.to_dict("records")]})

    cluster_fig = None
    if "cluster_id" in df and df["cluster_id"].notna().any():
        sizes = df["cluster_id"].dropna().astype(int).value_counts()
        cluster_fig = _bar_figure([str(c) for c in sizes.index[:40]], {"rows": sizes.to_numpy()[:40].tolist()},
                                  f"rows per cluster (largest {min(40, len(sizes))} of {len(sizes)})")
        for cid in sizes.index[:4]:
            members = df[df["cluster_id"] == cid]
            part = members.sample(n=min(4, len(members)), random_state=seed)
            sections.append({"title": f"Cluster {int(cid)}", "note": f"{_plural(len(members), 'row')}; {len(part)} shown",
                             "cards": [card(r, [r["status"], _tier(r)], ()) for r in part.to_dict("records")]})
    tier_fig = None
    if "motion_tier" in df and df["motion_tier"].notna().any():
        tiers = sorted(df["motion_tier"].dropna().unique())
        series = {s: [int(((df["motion_tier"] == t) & (df["status"] == s)).sum()) for t in tiers]
                  for s in ("kept", "rejected")}
        tier_fig = _bar_figure(tiers, series, "motion tiers")

    clustering = run.get("clustering") or {}
    dup_enabled = bool(clustering.get("enabled", True)) and "duplicate_of" in df
    dup_n, pairs = _duplicate_pairs(output, df, max_examples) if dup_enabled else (0, [])
    if isinstance(clustering.get("duplicates"), int):
        dup_n = clustering["duplicates"]  # counted over the whole manifest, not the sampled rows
    reject = ((run.get("config") or {}).get("clustering") or {}).get("reject_duplicates")
    dup = {"enabled": dup_enabled, "count": _plural(dup_n, "row"), "shown": _plural(len(pairs), "pair"),
           "action": "" if reject is None else (" (rejected: reason duplicate_of)" if reject else
                                                " (marked, not rejected: reject_duplicates is off)"),
           "pairs": [{"dup": card(p["dup"], [p["note"]], ()), "rep": card(p["rep"], [], ())} for p in pairs]}

    env = jinja2.Environment(autoescape=True, undefined=jinja2.StrictUndefined)
    env.filters["num"] = fmt_num
    env.filters["duration"] = fmt_duration
    page = env.from_string(TEMPLATE).render(
        run={"name": run.get("name", outfs.name(output)), "output": run.get("output", output),
             "config_path": run.get("config_path"), "sources_listed": run.get("sources_listed"),
             "sources_processed": run.get("sources_processed"),
             "sources_skipped_as_finished": run.get("sources_skipped_as_finished")},
        counts={"rows": int(counts.get("rows", 0)),
                "status": counts.get("status", {}), "reject_reasons": counts.get("reject_reasons", {})},
        generated=time.strftime("%Y-%m-%d %H:%M:%S"),
        timings=", ".join(f"{k} {v:.1f} s" for k, v in (run.get("timings_s") or {}).items()),
        versions=", ".join(f"{k} {v}" for k, v in (run.get("versions") or {}).items()),
        models=", ".join(sorted(run.get("models") or {})) or "none",
        notes={**(run.get("operator_notes") or {}), **_caption_note(run.get("captioning"))},
        errors=errors,
        stages=run.get("stages") or {},
        sampled=len(df) if counts.get("rows", 0) > len(df) else 0,
        score_figs=score_figures(df, run.get("config") or {}) if len(df) else [],
        tier_fig=tier_fig, cluster_fig=cluster_fig, sections=sections, dup=dup,
    )
    path = outfs.join(output, REPORT)
    outfs.write_text(page, path)
    return path if outfs.is_url(path) else Path(path)
