"""Shared fixtures: the labeled sample set (generated once per session) and one demo run over it."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

ROOT = Path(__file__).resolve().parent.parent
DEMO_CONFIG = ROOT / "pipelines" / "configs" / "demo.yaml"


@pytest.fixture(autouse=True)
def _no_realtime_scheduling():
    """Fail a test that leaves this process on a real-time scheduling policy, and put it back.

    Some native code raises the calling thread to SCHED_FIFO when it runs as root (SVT-AV1's encoder does). Every
    process started afterwards (Ray workers, the decoder helper, Chromium and Playwright's driver) inherits it, and
    a few spinning real-time threads then starve a 2-core machine until CI's time limit."""
    yield
    if os.sched_getscheduler(0) != os.SCHED_OTHER:
        os.sched_setscheduler(0, os.SCHED_OTHER, os.sched_param(0))
        pytest.fail("this test left the test process on a real-time scheduling policy (SCHED_FIFO/RR): run the "
                    "code that does it in a child process")


def run_pipeline_cli(inputs, output, config=DEMO_CONFIG, extra=(), env=None, timeout=900):
    """Run pipelines/pretrain_mix.py as a user would, in its own process with its own local Ray."""
    cmd = [sys.executable, str(ROOT / "pipelines" / "pretrain_mix.py"), "--config", str(config),
           "--output", str(output), *extra]
    for i in inputs if isinstance(inputs, (list, tuple)) else [inputs]:
        cmd += ["--input", str(i)]
    e = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    e.update(env or {})
    return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=e, cwd=ROOT)


@pytest.fixture(scope="session")
def sample_dir(tmp_path_factory) -> Path:
    """The labeled sample set, seed 0."""
    from curation.testing.samples import make_samples

    d = tmp_path_factory.mktemp("samples")
    make_samples(d, seed=0)
    return d


@pytest.fixture(scope="session")
def labels(sample_dir) -> pd.DataFrame:
    """labels.parquet of the sample set, with absolute `source_uri`."""
    df = pd.read_parquet(sample_dir / "labels.parquet")
    df["source_uri"] = [str((sample_dir / f).absolute()) for f in df["file"]]
    return df


@pytest.fixture(scope="session")
def demo_models(tmp_path_factory) -> Path:
    """A model dir holding the demo's quality scorer, built as `make demo` builds it (`curation scorer demo`:
    proxy labels on a seed-1 sample set, so the demo's seed-0 clips are unseen)."""
    models = tmp_path_factory.mktemp("demo_models")
    work = tmp_path_factory.mktemp("demo_scorer")
    proc = subprocess.run([sys.executable, "-m", "curation.cli", "scorer", "demo", "--model-dir", str(models),
                           "--work", str(work)], capture_output=True, text=True, timeout=900, cwd=ROOT,
                          env={k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"})
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-5000:]
    assert (models / "quality-scorer" / "quality_scorer.safetensors").exists()
    return models


@pytest.fixture(scope="session")
def demo_output(sample_dir, demo_models, tmp_path_factory):
    """One run of the demo config over the sample set, as `make demo` runs it: (output dir, completed process)."""
    out = tmp_path_factory.mktemp("demo_out")
    proc = run_pipeline_cli(sample_dir, out, env={"CURATION_MODEL_DIR": str(demo_models)},
                            extra=["--progress-interval", "2"])
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-5000:]
    return out, proc
