"""The hostile corpus through the whole graph on Ray, and faults injected into a running graph: every input is
accounted for exactly once, no Ray worker dies, peak memory per process stays under a stated bound."""

from __future__ import annotations

import sys
from pathlib import Path

import pandas as pd
import pytest

from conftest import ROOT
from curation.testing.hostile import make_hostile, uri_of, unprivileged_prefix

sys.path.insert(0, str(ROOT / "bench"))
import reliability  # noqa: E402  (bench/reliability.py: the monitored driver and fault injection)

pytestmark = pytest.mark.slow

# Bounds asserted on the peak RSS (kernel high-water mark) of each process. Generous, but real: measured peaks on
# this corpus are ~0.25 GiB per decoder helper and ~0.4 GiB per Ray worker (bench/BENCHMARKS.md, "Reliability").
# A decoder that inflated the PNG bomb (256 MiB) or decoded the 12000x12000 SPS (~450 MiB in FFmpeg) would not fit.
DECODER_PEAK_MB = 400
WORKER_PEAK_MB = 1024


def test_hostile_corpus_through_the_graph(tmp_path):
    corpus = tmp_path / "corpus"
    entries = make_hostile(corpus)
    cfg = reliability.reliability_config(tmp_path / "cfg.yaml")
    before = {str(p) for p in tmp_path.rglob("*")}
    cwd_before = {p.name for p in ROOT.iterdir()}
    # Without CAP_DAC_OVERRIDE, so that mode 000 is unreadable even though the tests run as root.
    rep = reliability.scenario_monitored(tmp_path, "out", [corpus], cfg, prefix=unprivileged_prefix())
    out = tmp_path / "out"
    df = pd.read_parquet(out / "samples")

    listed = [e for e in entries if e.listed]
    assert rep["audit"]["missing_sources"] == [] and rep["audit"]["unexpected_sources"] == []
    assert rep["audit"]["duplicate_sample_ids"] == 0 and rep["audit"]["incomplete_sources"] == 0
    assert rep["summary"]["sources_listed"] == len(listed)
    hidden = [e for e in entries if e.kind == "hidden_name"]
    assert rep["summary"]["non_media_files_skipped"] == len(hidden) + 1  # + hostile.json
    for e in listed:
        rows = df[df["source_uri"] == uri_of(corpus, e)]
        assert len(rows), e.file
        assert set(rows["status"]) == {e.expected_status}, (e.file, rows[["status", "error"]].to_dict("records"))
        if e.expected_status == "failed":
            assert len(rows) == 1 and e.expect in rows["error"].iloc[0], (e.file, rows["error"].iloc[0])
        elif e.expected_status == "rejected":
            assert all(e.expect in list(r) for r in rows["reject_reasons"]), (e.file, rows["reject_reasons"])
    rot = df[df["source_uri"].str.endswith("rotated_90.mp4")].iloc[0]
    assert (rot["width"], rot["height"], rot["rotation"]) == (128, 192, 90)

    # No worker process died; memory per process stayed bounded.
    assert rep["worker_deaths"] == 0, rep["worker_exits"]
    assert rep["processes"].get("decoder", 0) >= 1
    assert 0 < rep["peak_rss_mb"]["decoder"] < DECODER_PEAK_MB, rep["top_processes"]
    assert 0 < rep["peak_rss_mb"]["worker"] < WORKER_PEAK_MB, rep["top_processes"]
    assert rep["sources_recomputed"] == 0

    # Names with quotes, newlines, `$(...)`, `..` and backslashes steered no write: everything new is inside the
    # output directory (and the per-run report/logs this harness asked for), and no shell ran.
    new = reliability.files_outside(tmp_path, out, before)
    assert [p for p in new if not Path(p).relative_to(tmp_path).parts[0].startswith("out.")] == [], new
    assert {p.name for p in ROOT.iterdir()} == cwd_before
    assert not list(tmp_path.rglob("pwned"))
    # Every file has one of the names the pipeline itself chooses (none derives from an input name).
    assert all(p.name.startswith("part-") or p.name in ("run.json", "report.html") or p.is_dir()
               for p in out.rglob("*")), sorted(p.name for p in out.rglob("*"))


@pytest.mark.parametrize("fault", ["decoder-crash", "worker-kill"])
def test_faults_while_the_graph_runs(sample_dir, labels, tmp_path, fault):
    """SIGSEGV a busy decoder helper, or SIGKILL a busy Ray worker, while the sample set streams through."""
    cfg = reliability.reliability_config(tmp_path / "cfg.yaml", streaming=True)
    rep = reliability.scenario_monitored(tmp_path, "out", [sample_dir], cfg, fault=fault, fault_count=2)
    assert len(rep["faults"]) >= 1, "the fault never found a victim"
    a = rep["audit"]
    assert a["missing_sources"] == [] and a["incomplete_sources"] == 0 and a["duplicate_sample_ids"] == 0
    assert a["sources"] == labels["source_uri"].nunique()
    errors = rep["summary"]["counts"]["errors"]
    if fault == "decoder-crash":
        # A helper that dies once is replaced and the file retried there: no row blames a healthy file, and the
        # Ray worker that owned the helper lived on.
        assert rep["worker_deaths"] == 0, rep["worker_exits"]
        assert "DecoderCrashed" not in errors, errors
    else:
        # The killed workers' tasks were retried by Ray (max_retries=-1): their sources ran again, nothing lost.
        assert rep["worker_deaths"] == len(rep["faults"]), rep["worker_exits"]
        assert rep["sources_recomputed"] >= 1
    failed = set(labels.loc[labels["expected_status"] == "failed", "source_uri"])
    df = pd.read_parquet(tmp_path / "out" / "samples")
    assert set(df.loc[df["status"] == "failed", "source_uri"]) == failed
