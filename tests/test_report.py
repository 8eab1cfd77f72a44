"""report.html: written at the end of a run, one self-contained page; data from the manifests is escaped."""

from __future__ import annotations

import json
import re
from html.parser import HTMLParser

import pandas as pd
import pytest

from curation.report import build_report, fmt_num


class _Tags(HTMLParser):
    def __init__(self):
        super().__init__()
        self.count: dict[str, int] = {}
        self.scripts = 0

    def handle_starttag(self, tag, attrs):
        self.count[tag] = self.count.get(tag, 0) + 1
        self.scripts += tag == "script"


def _parse(text: str) -> _Tags:
    p = _Tags()
    p.feed(text)
    return p


def test_names_and_text_from_the_data_are_escaped(tmp_path):
    """A hostile file name, OCR text and error message show as text; the page runs no script and keeps its shape."""
    (tmp_path / "samples").mkdir()
    evil = "<script>alert(1)</script>"
    rows = [
        dict(sample_id="a", source_uri=f"/nowhere/{evil}.mp4", media_type="video", start_frame=0, end_frame=30,
             fps=30.0, width=320, height=240, rotation=0, duration_s=1.0, status="rejected",
             reject_reasons=[f"sharpness<500{evil}"], error=None, motion_tier="static", ocr_text=evil,
             sharpness=12.0),
        dict(sample_id="b", source_uri="/nowhere/b.mp4", media_type="video", start_frame=0, end_frame=30, fps=30.0,
             width=320, height=240, rotation=0, duration_s=1.0, status="failed", reject_reasons=[],
             error=f"ProbeError: not a readable video {evil}", motion_tier=None, ocr_text=None, sharpness=None),
    ]
    pd.DataFrame(rows).to_parquet(tmp_path / "samples" / "part-00000.parquet")
    (tmp_path / "run.json").write_text(json.dumps({"name": evil, "counts": {
        "rows": 2, "status": {"rejected": 1, "failed": 1}, "reject_reasons": {f"sharpness<500{evil}": 1},
        "errors": {"ProbeError": 1}}, "config": {"decide": [{"column": "sharpness", "min": 500}]}}))
    text = build_report(tmp_path).read_text()
    assert evil not in text
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in text
    tags = _parse(text)
    assert tags.scripts == 0 and tags.count["h2"] >= 5
    assert "no preview" in text  # the file does not exist: a placeholder, not a crash
    assert "ProbeError" in text and "sharpness" in text


@pytest.mark.slow
def test_demo_run_writes_the_report(demo_output):
    out, _ = demo_output
    run = json.loads((out / "run.json").read_text())
    assert run["report"] == str(out / "report.html") and "report_error" not in run
    text = (out / "report.html").read_text()
    tags = _parse(text)
    assert tags.scripts == 0
    # Every reject reason of the run has its section; every status count is on the page.
    titles = re.findall(r"<h2>(.*?)</h2>", text)
    for reason in run["counts"]["reject_reasons"]:
        assert f"Rejected: {reason}".replace("<", "&lt;").replace(">", "&gt;") in titles, reason
    # The rows table: a header per status over its count (numbers as `fmt_num` writes them).
    table = re.search(r"<tr><th>all</th>(.*?)</tr>\s*<tr>(.*?)</tr>", text, re.S)
    shown = dict(zip(["all", *re.findall(r"<th>(.*?)</th>", table.group(1))],
                     re.findall(r'<td class="n">(.*?)</td>', table.group(2))))
    assert shown == {"all": fmt_num(run["counts"]["rows"]),
                     **{s: fmt_num(n) for s, n in run["counts"]["status"].items()}}
    for stage in run["stages"]:
        assert f"<td>{stage}</td>" in text
    assert "Kept, highest quality_score" in titles and any(t.startswith("Cluster ") for t in titles)
    # Figures are inline SVG; previews are embedded (looping WebP for video rows, JPEG for images) and all decoded
    # (the sample clips are readable).
    assert tags.count.get("svg", 0) >= 8
    thumbs = re.findall(r'src="data:image/(?:jpeg|webp);base64,', text)
    assert len(thumbs) >= 20 and "no preview" not in text
    assert re.search(r'src="data:image/webp;base64,', text) and re.search(r'src="data:image/jpeg;base64,', text)
