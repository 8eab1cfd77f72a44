"""`<output>/report.html`: one self-contained page a person reads after a run (DESIGN.md §6).

What it shows, from `run.json`, `samples/` and `stages/`:
- the run: inputs, sources listed / processed / resumed, rows per status, time, versions, models;
- reject reasons and error kinds with their counts (and a few error messages of each kind);
- the stage mixes: rows, videos, images, hours, clusters;
- score distributions, kept against rejected, with the `decide` thresholds drawn in;
- motion tiers per status, cluster sizes;
- thumbnails (the middle frame of the clip, or the image): examples for every reject reason, kept rows at both ends
  of `quality_score` (or `aesthetic_score`), and the largest clusters.

The page embeds its figures (SVG from matplotlib) and thumbnails (JPEG, base64), so it can be copied off a cluster
as one file. Every string from the data (file names, OCR text, error messages) is HTML-escaped by the template
(Jinja2 autoescape): a file named `<script>...` is shown, never run. Thumbnails are decoded with the pipeline's own
decoders; one that fails to decode is shown as "no preview". Scores are read for at most `max_rows` rows
(a uniform sample beyond that), so the report stays cheap on a manifest of millions.
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

log = logging.getLogger("curation.report")

REPORT = "report.html"
SCORE_COLUMNS = ("sharpness", "exposure", "contrast", "black_border_ratio", "motion_score", "camera_motion",
                 "object_motion", "shake_score", "text_area_ratio", "watermark_score", "nsfw_score",
                 "aesthetic_score", "synthetic_score", "quality_score")
ROW_COLUMNS = ("sample_id", "source_uri", "media_type", "start_frame", "end_frame", "fps", "width", "height",
               "rotation", "duration_s", "status", "reject_reasons", "error", "motion_tier", "cluster_id",
               "ocr_text", "caption") + SCORE_COLUMNS


def _read_rows(output: Path, max_rows: int, seed: int = 0) -> pd.DataFrame:
    from curation.manifest import SAMPLES, read_manifest

    t = read_manifest(output / SAMPLES, list(ROW_COLUMNS), only_existing=True)
    if not t.num_columns:
        return pd.DataFrame(columns=list(ROW_COLUMNS))
    df = t.to_pandas()
    if len(df) > max_rows:
        df = df.sample(n=max_rows, random_state=seed).reset_index(drop=True)
    return df


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

    limits = _thresholds(config)
    figs = []
    for col in SCORE_COLUMNS:
        if col not in df or df[col].notna().sum() == 0:
            continue
        vals = pd.to_numeric(df[col], errors="coerce")
        finite = vals[np.isfinite(vals)]
        lo, hi = float(finite.quantile(0.005)), float(finite.quantile(0.995))
        if hi <= lo:
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
        ax.legend(fontsize=6, frameon=False)
        figs.append({"column": col, "svg": _svg(fig)})
    return figs


def _bar_figure(labels: list[str], series: dict[str, list[int]], title: str) -> str:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(max(3.6, 0.35 * len(labels) + 1.5), 2.4))
    x = np.arange(len(labels))
    bottom = np.zeros(len(labels))
    colors = {"kept": "#2b8a3e", "rejected": "#c92a2a", "failed": "#868e96", "rows": "#1c7ed6"}
    for name, counts in series.items():
        ax.bar(x, counts, bottom=bottom, color=colors.get(name), label=name)
        bottom += np.asarray(counts, dtype=float)
    ax.set_xticks(x, labels, rotation=45, ha="right", fontsize=7)
    ax.tick_params(axis="y", labelsize=7)
    ax.set_title(title, fontsize=9)
    if len(series) > 1:
        ax.legend(fontsize=6, frameon=False)
    return _svg(fig)


# -- thumbnails ------------------------------------------------------------------------------------------------------


def thumbnail(row: dict[str, Any], size: int = 160, timeout_s: float = 30.0) -> str | None:
    """The middle frame of a clip (or the image) as a base64 JPEG data URI, `size` px on the short side; None if it
    cannot be decoded. Decoding goes through the same isolated decoder helper as the pipeline (time limit, memory
    cap, a crash stays in the helper)."""
    from PIL import Image

    from curation.config import FramesConfig, LimitsConfig
    from curation.ingest import row_frames

    try:
        frames = row_frames(row, FramesConfig(num_frames=3, short_side=size, motion_fps=0.5, motion_width=16),
                            LimitsConfig().max_pixels, timeout_s)
        frame = frames[len(frames) // 2]
    except Exception as exc:  # a preview is optional; say why in the log
        log.info("no preview for %s: %s", row.get("sample_id"), exc)
        return None
    buf = io.BytesIO()
    Image.fromarray(np.ascontiguousarray(frame)).save(buf, format="JPEG", quality=80)
    return "data:image/jpeg;base64," + base64.b64encode(buf.getvalue()).decode("ascii")


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


def _card(row: dict[str, Any], size: int, extra: list[str]) -> dict[str, Any]:
    name = os.path.basename(str(row["source_uri"]))
    span = "" if row.get("media_type") == "image" else f" [{int(row['start_frame'])}, {int(row['end_frame'])})"
    caption = row.get("caption")
    if isinstance(caption, str) and caption:
        extra = [*extra, "caption: " + (caption if len(caption) <= 240 else caption[:240].rstrip() + "…")]
    return {"img": thumbnail(row, size), "title": name + span, "sample_id": row["sample_id"],
            "lines": [x for x in extra if x]}


def _fmt(row: dict[str, Any], cols: tuple[str, ...]) -> str:
    parts = []
    for c in cols:
        v = row.get(c)
        if v is None or (isinstance(v, float) and math.isnan(v)):
            continue
        parts.append(f"{c}={v:.3g}" if isinstance(v, (float, np.floating)) else f"{c}={v}")
    return ", ".join(parts)


# -- the page --------------------------------------------------------------------------------------------------------

TEMPLATE = """<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>curation report: {{ run.name }}</title>
<style>
body { font-family: system-ui, sans-serif; margin: 1.5em; color: #212529; }
table { border-collapse: collapse; margin: .5em 0 1em; font-size: 13px; }
td, th { border: 1px solid #dee2e6; padding: 3px 8px; text-align: left; vertical-align: top; }
.figs, .cards { display: flex; flex-wrap: wrap; gap: 10px; }
.card { width: 190px; font-size: 11px; border: 1px solid #dee2e6; padding: 4px; }
.card img { max-width: 182px; display: block; }
.nopreview { width: 182px; height: 100px; background: #f1f3f5; display: flex; align-items: center;
             justify-content: center; color: #868e96; }
.muted { color: #868e96; font-size: 12px; }
h2 { border-bottom: 1px solid #dee2e6; padding-bottom: 2px; }
</style></head><body>
<h1>Curation run: {{ run.name }}</h1>
<p class="muted">output {{ run.output }} · config {{ run.config_path }} · {{ generated }}</p>
<table>
<tr><th>sources listed</th><td>{{ run.sources_listed }}</td><th>processed this run</th><td>{{ run.sources_processed }}</td>
<th>already finished</th><td>{{ run.sources_skipped_as_finished }}</td></tr>
<tr><th>rows</th><td>{{ counts.rows }}</td>
{% for s, n in counts.status.items() %}<th>{{ s }}</th><td>{{ n }}</td>{% endfor %}</tr>
<tr><th>time</th><td colspan="5">{{ timings }}</td></tr>
<tr><th>versions</th><td colspan="5">{{ versions }}</td></tr>
<tr><th>models</th><td colspan="5">{{ models }}</td></tr>
</table>
{% if notes %}<p><b>operator notes</b></p><ul>{% for k, v in notes.items() %}<li>{{ k }}: {{ v }}</li>{% endfor %}</ul>{% endif %}

<h2>Reject reasons</h2>
{% if counts.reject_reasons %}<table><tr><th>reason</th><th>rows</th><th>share of rows</th></tr>
{% for r, n in counts.reject_reasons.items() %}<tr><td>{{ r }}</td><td>{{ n }}</td><td>{{ "%.1f"|format(100 * n / counts.rows) }}%</td></tr>{% endfor %}
</table>{% else %}<p>none</p>{% endif %}

<h2>Errors</h2>
{% if errors %}<table><tr><th>kind</th><th>rows</th><th>examples</th></tr>
{% for e in errors %}<tr><td>{{ e.kind }}</td><td>{{ e.n }}</td><td>{% for m in e.examples %}{{ m }}<br>{% endfor %}</td></tr>{% endfor %}
</table>{% else %}<p>none</p>{% endif %}

<h2>Stage mixes</h2>
{% if stages %}<table><tr><th>stage</th><th>rows</th><th>videos</th><th>images</th><th>video hours</th><th>clusters</th><th>max weight</th></tr>
{% for name, s in stages.items() %}<tr><td>{{ name }}</td><td>{{ s.rows }}</td><td>{{ s.videos }}</td><td>{{ s.images }}</td>
<td>{{ s.video_hours }}</td><td>{{ s.clusters }}</td><td>{{ s.weight_max }}</td></tr>{% endfor %}</table>
{% else %}<p>no stages configured</p>{% endif %}

<h2>Scores (kept vs rejected; dashed: decide thresholds)</h2>
{% if sampled %}<p class="muted">distributions over a uniform sample of {{ sampled }} rows</p>{% endif %}
<div class="figs">{% for f in score_figs %}<div>{{ f.svg|safe }}</div>{% endfor %}</div>
<div class="figs">{% if tier_fig %}<div>{{ tier_fig|safe }}</div>{% endif %}{% if cluster_fig %}<div>{{ cluster_fig|safe }}</div>{% endif %}</div>

{% for section in sections %}
<h2>{{ section.title }}</h2>{% if section.note %}<p class="muted">{{ section.note }}</p>{% endif %}
<div class="cards">{% for c in section.cards %}<div class="card">
{% if c.img %}<img src="{{ c.img }}" alt="{{ c.sample_id }}">{% else %}<div class="nopreview">no preview</div>{% endif %}
<b>{{ c.title }}</b>{% for l in c.lines %}<br>{{ l }}{% endfor %}</div>{% endfor %}</div>
{% endfor %}
</body></html>
"""


def build_report(output: str | os.PathLike, max_examples: int = 6, thumb: int = 160, max_rows: int = 200_000,
                 seed: int = 0) -> Path:
    """Write `<output>/report.html` from the run's manifests; return its path."""
    import jinja2

    output = Path(output)
    run = json.loads((output / "run.json").read_text(encoding="utf-8")) if (output / "run.json").exists() else {}
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
    sections = []
    by_reason: dict[str, list[int]] = {}
    for i, r in enumerate(rows):
        if r["status"] == "rejected":
            for reason in list(r.get("reject_reasons") if r.get("reject_reasons") is not None else []):
                by_reason.setdefault(str(reason), []).append(i)
    for reason in sorted(by_reason, key=lambda k: -len(by_reason[k])):
        idx = by_reason[reason]
        pick = sorted(rng.choice(idx, size=min(max_examples, len(idx)), replace=False).tolist())
        sections.append({"title": f"Rejected: {reason}", "note": f"{len(idx)} rows; {len(pick)} shown",
                         "cards": [_card(rows[j], thumb, [_fmt(rows[j], score_cols),
                                                          f"tier={rows[j].get('motion_tier')}"]) for j in pick]})
    kept = df[df["status"] == "kept"] if len(df) else df
    rank_col = next((c for c in ("quality_score", "aesthetic_score") if c in kept and kept[c].notna().any()), None)
    if rank_col:
        ranked = kept[kept[rank_col].notna()].sort_values(rank_col)
        for title, part in ((f"Kept, highest {rank_col}", ranked.tail(max_examples).iloc[::-1]),
                            (f"Kept, lowest {rank_col}", ranked.head(max_examples))):
            sections.append({"title": title, "note": "", "cards": [
                _card(r, thumb, [_fmt(r, score_cols), f"tier={r.get('motion_tier')}"])
                for r in part.to_dict("records")]})
    elif len(kept):
        part = kept.sample(n=min(max_examples, len(kept)), random_state=seed)
        sections.append({"title": "Kept (random)", "note": "", "cards": [
            _card(r, thumb, [_fmt(r, score_cols)]) for r in part.to_dict("records")]})

    cluster_fig = None
    if "cluster_id" in df and df["cluster_id"].notna().any():
        sizes = df["cluster_id"].dropna().astype(int).value_counts()
        cluster_fig = _bar_figure([str(c) for c in sizes.index[:40]], {"rows": sizes.to_numpy()[:40].tolist()},
                                  f"rows per cluster (largest {min(40, len(sizes))} of {len(sizes)})")
        for cid in sizes.index[:4]:
            members = df[df["cluster_id"] == cid]
            part = members.sample(n=min(4, len(members)), random_state=seed)
            sections.append({"title": f"Cluster {int(cid)}", "note": f"{len(members)} rows; {len(part)} shown",
                             "cards": [_card(r, thumb, [r["status"]]) for r in part.to_dict("records")]})
    tier_fig = None
    if "motion_tier" in df and df["motion_tier"].notna().any():
        tiers = sorted(df["motion_tier"].dropna().unique())
        series = {s: [int(((df["motion_tier"] == t) & (df["status"] == s)).sum()) for t in tiers]
                  for s in ("kept", "rejected")}
        tier_fig = _bar_figure(tiers, series, "motion tiers")

    env = jinja2.Environment(autoescape=True, undefined=jinja2.StrictUndefined)
    page = env.from_string(TEMPLATE).render(
        run={"name": run.get("name", output.name), "output": run.get("output", str(output)),
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
        tier_fig=tier_fig, cluster_fig=cluster_fig, sections=sections,
    )
    path = output / REPORT
    tmp = output / f".{REPORT}.tmp-{os.getpid()}"
    tmp.write_text(page, encoding="utf-8")
    tmp.replace(path)
    return path
