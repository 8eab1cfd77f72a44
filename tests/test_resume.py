"""Resume: a run killed part-way, re-run with the same output, ends with exactly one row set per source and
re-processes only the sources that were not finished."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import pandas as pd
import pytest
import yaml

from conftest import DEMO_CONFIG, ROOT, run_pipeline_cli
from curation.manifest import finished_sources, part_files

pytestmark = pytest.mark.slow


def test_resume_after_sigkill(sample_dir, labels, tmp_path):
    cfg = tmp_path / "cfg.yaml"
    # One row per part file, so complete sources land on disk as they finish and the kill falls between them.
    # Batches of one row everywhere, so rows stream out of the graph while it runs.
    data = yaml.safe_load(DEMO_CONFIG.read_text())
    data["rows_per_file"] = 1
    data["operators"] = [{**(o if isinstance(o, dict) else {"name": o}), "batch_size": 1} for o in data["operators"]]
    cfg.write_text(yaml.safe_dump(data))
    out = tmp_path / "out"
    cmd = [sys.executable, str(ROOT / "pipelines" / "pretrain_mix.py"), "--config", str(cfg), "--input",
           str(sample_dir), "--output", str(out)]
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            start_new_session=True)
    deadline = time.time() + 600
    while time.time() < deadline and len(part_files(out / "samples")) < 3:
        time.sleep(0.2)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait(timeout=60)

    done_before = finished_sources(out)
    total = labels["source_uri"].nunique()
    assert 3 <= len(done_before) < total, f"kill landed too late or too early: {len(done_before)}/{total}"

    proc2 = run_pipeline_cli(sample_dir, out, config=cfg)
    assert proc2.returncode == 0, proc2.stderr[-4000:]
    run = json.loads((out / "run.json").read_text())
    assert run["sources_skipped_as_finished"] == len(done_before)
    assert run["sources_processed"] == total - len(done_before)

    df = pd.read_parquet(out / "samples")
    assert df["sample_id"].is_unique
    assert set(df["source_uri"]) == set(labels["source_uri"])
    # The rows of sources finished before the kill were not recomputed: they all come from the first run's files.
    first_run_files = {f.name for f in part_files(out / "samples")} - set(run["files_written_this_run"])
    assert first_run_files


def test_rerun_of_finished_output_processes_nothing(demo_output, sample_dir):
    out, _ = demo_output
    before = pd.read_parquet(out / "samples")
    proc = run_pipeline_cli(sample_dir, out)
    assert proc.returncode == 0, proc.stderr[-3000:]
    run = json.loads((out / "run.json").read_text())
    assert run["sources_processed"] == 0
    after = pd.read_parquet(out / "samples")
    assert len(after) == len(before)
