"""Resume: re-running a finished output processes nothing. (The kill-part-way-then-resume scenario is
tests/test_driver_crash.py, which also counts recomputation from the workers' own source log.)"""

from __future__ import annotations

import json

import pandas as pd
import pytest

from conftest import run_pipeline_cli

pytestmark = pytest.mark.slow


def test_rerun_of_finished_output_processes_nothing(demo_output, demo_models, sample_dir):
    out, _ = demo_output
    before = pd.read_parquet(out / "samples")
    proc = run_pipeline_cli(sample_dir, out, env={"CURATION_MODEL_DIR": str(demo_models)})
    assert proc.returncode == 0, proc.stderr[-3000:]
    run = json.loads((out / "run.json").read_text())
    assert run["sources_processed"] == 0
    after = pd.read_parquet(out / "samples")
    assert len(after) == len(before)
