"""Resume after a driver crash: SIGKILL the driver (and the local Ray, workers and decoder helpers it started)
part-way, re-run with the same output: the run completes, nothing is duplicated, finished sources are not
recomputed, and the number of sources processed again is what run.json reports.

Supersedes tests/test_resume.py::test_resume_after_sigkill (same scenario, plus recomputation counted from the
workers' own source log)."""

from __future__ import annotations

import sys

import pandas as pd
import pytest

from conftest import ROOT
from curation.manifest import finished_sources, part_files

sys.path.insert(0, str(ROOT / "bench"))
import reliability  # noqa: E402


@pytest.mark.slow
def test_driver_sigkill_then_resume(sample_dir, labels, tmp_path):
    cfg = reliability.reliability_config(tmp_path / "cfg.yaml", streaming=True)
    rep = reliability.scenario_driver_kill(tmp_path, [sample_dir], cfg, after_parts=3)
    total = labels["source_uri"].nunique()
    done = rep["finished_before_kill"]
    assert not rep["exited_before_kill"], "the first run finished before the kill"
    assert 3 <= done < total, f"kill landed too late or too early: {done}/{total}"

    run = rep["summary"]
    assert run["sources_listed"] == total
    assert run["sources_skipped_as_finished"] == done
    assert run["sources_processed"] == total - done
    # Counted by the workers themselves (CURATION_SOURCE_LOG): the re-run started exactly the unfinished sources.
    assert rep["second_run_started"] == total - done
    assert rep["finished_recomputed"] == 0
    assert rep["sources_recomputed"] <= total - done

    a = rep["audit"]
    assert a["missing_sources"] == [] and a["incomplete_sources"] == 0 and a["duplicate_sample_ids"] == 0
    df = pd.read_parquet(tmp_path / "driver_kill" / "samples")
    assert set(df["source_uri"]) == set(labels["source_uri"])
    failed = set(labels.loc[labels["expected_status"] == "failed", "source_uri"])
    assert set(df.loc[df["status"] == "failed", "source_uri"]) == failed


def test_half_written_part_is_ignored(tmp_path):
    """A SIGKILL during a part write leaves only a hidden temp file: readers and resume ignore it."""
    import pyarrow as pa

    from curation.manifest import SampleWriter
    from curation.schema import base_schema, failed_row

    out = tmp_path / "out"
    w = SampleWriter(out, base_schema(), rows_per_file=1)
    w.add_table(pa.Table.from_pylist([failed_row("/a.mp4", "x")], schema=base_schema()))
    w.close()
    (out / "samples" / ".part-20260101T000000-abcdef-00000.parquet.1234abcd.tmp").write_bytes(b"PAR1\x00\x00half")
    assert len(part_files(out / "samples")) == 1
    assert finished_sources(out) == {"/a.mp4"}
    assert list(pd.read_parquet(out / "samples")["source_uri"]) == ["/a.mp4"]
