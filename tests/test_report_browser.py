"""report.html as a person sees it: rendered by headless Chromium (Debian's, driven through the DevTools protocol by
Playwright, in a child process with a deadline: tests/browser.py), screenshotted, with no console error, every
preview decoded by the browser, looping previews for video rows, near-duplicate pairs, OCR text on cards and no `nan` anywhere. `make setup` installs Chromium."""

from __future__ import annotations

import base64
import io
import re
import shutil
import tempfile
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from curation.report import build_report, fmt_num


def render(html: Path, png: Path, width: int = 1400) -> dict:
    """Render in headless Chromium (a killable child process: tests/browser.py); fail the test if it cannot."""
    from tests.browser import render as browser_render

    try:
        return browser_render(html, png, width)
    except RuntimeError as e:
        pytest.fail(str(e))


def _data_uris(text: str, kind: str) -> list[bytes]:
    return [base64.b64decode(b) for b in re.findall(rf'src="data:image/{kind};base64,([^"]+)"', text)]


def _output(tmp_path: Path) -> Path:
    """A small output over real sample files: probed and split as the pipeline does (`source_to_rows`), then given
    statuses, scores, a near-duplicate mark and hostile OCR text by hand."""
    from curation.config import PipelineConfig
    from curation.ingest import source_to_rows
    from curation.testing.samples import make_samples

    media = tmp_path / "media"
    make_samples(media, seed=0, categories=["images", "camera"])
    rows = [r for f in sorted(p for p in media.rglob("*") if p.suffix in (".jpg", ".png", ".mp4"))
            for r in source_to_rows(str(f), PipelineConfig())]
    assert len(rows) == 7 and {r["media_type"] for r in rows} == {"image", "video"}
    evil = "<script>alert(1)</script>"
    for i, r in enumerate(rows):
        r.update(status="kept" if i % 2 else "rejected", reject_reasons=[] if i % 2 else ["sharpness<500"],
                 sharpness=18889.3 + i, motion_score=4.9e-05 if r["media_type"] == "video" else None,
                 motion_tier="optimal" if r["media_type"] == "video" else None,
                 watermark_score=0.1, text_area_ratio=0.05, cluster_id=i % 2, phash=(1 << 62) + i,
                 embedding=[1.0, float(i) / 100, 0.0], ocr_text=f"Welcome back {evil}" if i == 3 else None)
    rows[2]["duplicate_of"] = rows[1]["sample_id"]
    out = tmp_path / "out"
    (out / "samples").mkdir(parents=True)
    pd.DataFrame(rows).to_parquet(out / "samples" / "part-00000.parquet")
    return out


def test_report_renders_in_chromium_with_previews_duplicates_and_text(tmp_path):
    out = _output(tmp_path)
    text = build_report(out).read_text()
    got = render(out / "report.html", tmp_path / "report.png")
    assert got["errors"] == [], got["errors"]
    assert got["images"] and got["undecoded"] == 0, got
    shot = np.asarray(Image.open(tmp_path / "report.png").convert("L"))
    assert shot.shape[1] == 1400 and shot.shape[0] > 900 and shot.std() > 10  # a page, not a blank

    # Video rows loop: animated WebP of several frames, ~160 px on the long side, small. Images are still JPEGs.
    anims = [Image.open(io.BytesIO(b)) for b in _data_uris(text, "webp")]
    assert anims and all(getattr(a, "n_frames", 1) >= 4 for a in anims)
    assert all(max(a.size) <= 160 for a in anims)
    assert max(len(b) for b in _data_uris(text, "webp")) < 120_000
    assert _data_uris(text, "jpeg")

    # Near-duplicates: the count and the pair side by side with its pHash distance.
    assert "<h2>Near-duplicates</h2>" in text and "1 row marked" in text
    assert text.count('<div class="pair">') == 1 and "pHash distance 2 of 64 bits" in text

    # OCR text on the card, escaped; readable numbers; no `nan`, `n/a` for an image's motion tier.
    assert "Welcome back &lt;script&gt;alert(1)&lt;/script&gt;" in text and "<script>" not in text
    assert "18,889" in text and "&lt;0.001" in text and "e-05" not in text
    assert not re.search(r"\bnan\b", text, re.I) and "tier=n/a" in text


def test_numbers_read_as_people_write_them():
    assert [fmt_num(v) for v in (18889.3, 372.4, 0.1234, 4.9e-05, 0.0, 3, 12345, None, float("nan"))] == \
        ["18,889", "372", "0.123", "<0.001", "0", "3", "12,345", "n/a", "n/a"]


@pytest.mark.slow
def test_demo_report_in_chromium(demo_output, tmp_path):
    """The demo run's report, as `make demo` leaves it: rendered without errors, every preview decoded."""
    out, _ = demo_output
    got = render(out / "report.html", tmp_path / "demo_report.png")
    assert got["errors"] == [], got["errors"]
    assert len(got["images"]) >= 20 and got["undecoded"] == 0
    text = (out / "report.html").read_text()
    assert _data_uris(text, "webp") and "<h2>Near-duplicates</h2>" in text
    keep = Path(tempfile.gettempdir()) / "curation-demo-report.png"  # for a person to look at after the run
    shutil.copy(tmp_path / "demo_report.png", keep)
