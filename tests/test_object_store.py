"""Outputs on object storage (`--output s3://bucket/prefix`), against a real S3-compatible server started here
(moto's server mode on 127.0.0.1, tests/s3_server.py) and reached through s3fs over HTTP: no mock of any client."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys

import numpy as np
import pandas as pd
import pyarrow as pa
import pytest
import yaml

from conftest import run_pipeline_cli
from s3_server import s3_server

BUCKET = "curation-test"


@pytest.fixture(scope="module")
def s3env(tmp_path_factory):
    """The server's client environment, also set in this process; a fresh bucket."""
    import s3fs

    with s3_server(tmp_path_factory.mktemp("moto")) as env, pytest.MonkeyPatch.context() as mp:
        for k, v in env.items():
            mp.setenv(k, v)
        s3fs.S3FileSystem.clear_instance_cache()  # a cached client would keep another endpoint
        s3fs.S3FileSystem().mkdir(BUCKET)
        yield env
        s3fs.S3FileSystem.clear_instance_cache()


def _objects(prefix: str) -> list[str]:
    import s3fs

    fs = s3fs.S3FileSystem(use_listings_cache=False)
    return sorted(p[len(prefix.replace("s3://", "")):].lstrip("/") for p in fs.find(prefix))


def _rows(src, n, status="kept"):
    from curation.schema import empty_row, make_sample_id

    rows = []
    for i in range(n):
        r = empty_row(src)
        r.update(sample_id=make_sample_id(src, i * 10, i * 10 + 10), start_frame=i * 10, end_frame=i * 10 + 10,
                 clip_index=i, clips_in_source=n, status=status, media_type="video", fps=10.0, duration_s=1.0,
                 width=320, height=240)
        rows.append(r)
    return rows


def test_manifests_resume_and_run_json_on_s3(s3env, tmp_path, monkeypatch):
    """Parts appear whole in one PUT (no temporary objects), are listed for resume and read back by pandas."""
    from curation import outfs
    from curation.manifest import (OutputError, SampleWriter, counts, finished_sources, output_summary, part_files,
                                   read_manifest, require_output, write_json_atomic)
    from curation.schema import base_schema

    monkeypatch.chdir(tmp_path)  # nothing may land in a local folder named after the URL
    out = f"s3://{BUCKET}/manifests"
    schema = base_schema()
    w = SampleWriter(out, schema, rows_per_file=2)
    w.add_table(pa.Table.from_pylist(_rows("/in/a.mp4", 3) + _rows("/in/b.mp4", 1, "rejected"), schema=schema))
    assert w.close() == {}
    assert finished_sources(out) == {"/in/a.mp4", "/in/b.mp4"}
    # A hidden object (what a local temporary file looks like) is never a part.
    outfs.write_bytes(b"half a file", out + "/samples/.part-x.parquet.1234.tmp")
    parts = part_files(out + "/samples")
    assert len(parts) == 2 and all(p.startswith(f"s3://{BUCKET}/manifests/samples/part-") for p in parts)
    assert _objects(out + "/samples") == sorted([".part-x.parquet.1234.tmp"] + [p.rsplit("/", 1)[1] for p in parts])
    assert read_manifest(out + "/samples").num_rows == 4
    assert counts(out)["status"] == {"kept": 3, "rejected": 1}
    df = pd.read_parquet(out + "/samples")  # pandas through s3fs, as a user reads it
    assert len(df) == 4 and set(df["source_uri"]) == {"/in/a.mp4", "/in/b.mp4"}
    with pytest.raises(OutputError, match="no run.json"):
        require_output(out, "summary")  # parts but no run.json yet: an unfinished run
    write_json_atomic({"x": 1}, out + "/run.json")
    assert json.loads(outfs.read_text(out + "/run.json")) == {"x": 1}
    assert require_output(out, "summary") == out
    assert output_summary(out)["status"] == {"kept": 3, "rejected": 1}
    with pytest.raises(OutputError, match="not a pipeline output"):
        require_output(f"s3://{BUCKET}/nothing-here", "summary")
    assert list(tmp_path.iterdir()) == []


def test_stages_centroids_and_report_on_s3(s3env, tmp_path, monkeypatch):
    """A re-mix replaces the whole `stages/` tree; centroids and report.html round-trip through the store."""
    from curation import outfs
    from curation.clustering import load_centroids, save_centroids
    from curation.config import StageSpec
    from curation.report import build_report
    from curation.stages import write_stages
    from test_stages import _rows as stage_rows

    monkeypatch.chdir(tmp_path)
    out = f"s3://{BUCKET}/post"
    rows = stage_rows().assign(reject_reasons=lambda d: [[] for _ in range(len(d))], error="")
    outfs.write_parquet(pa.Table.from_pandas(rows, preserve_index=False), out + "/samples/part-00000.parquet")
    write_stages(out, (StageSpec(name="old"), StageSpec(name="also_old", media_types=("image",))))
    assert _objects(out + "/stages") == ["also_old/part-00000.parquet", "old/part-00000.parquet"]
    summary = write_stages(out, (StageSpec(name="new", media_types=("image",)),))
    assert _objects(out + "/stages") == ["new/part-00000.parquet"]
    st = pd.read_parquet(out + "/stages/new")
    assert len(st) == summary["new"]["rows"] > 0 and (st["media_type"] == "image").all()

    c = np.arange(12, dtype=np.float32).reshape(3, 4)
    save_centroids(out, c, {"k": 3})
    assert np.array_equal(load_centroids(out), c)

    path = build_report(out)
    assert path == out + "/report.html"
    text = outfs.read_text(path)
    assert "<h2>Stage mixes</h2>" in text and "<h2>Near-duplicates</h2>" in text
    assert list(tmp_path.iterdir()) == []


def _config(path):
    cfg = {"name": "s3", "operators": ["basic", "quality", "descriptor", "phash"],
           "decide": {"duration_s": {"min": 1.0}},
           "clustering": {"enabled": True, "k": 3, "reject_duplicates": False},
           "stages": [{"name": "s1_all", "min_short_side": 0}], "rows_per_file": 1000}
    path.write_text(yaml.safe_dump(cfg))
    return path


@pytest.mark.slow
def test_pipeline_writes_to_s3_and_resumes(s3env, tmp_path):
    """`--output s3://...`: a run writes samples, stages, centroids, run.json and report into the bucket; a re-run
    with more inputs processes only the new sources."""
    from curation import outfs
    from curation.testing.samples import make_samples

    made = tmp_path / "made"
    make_samples(made, seed=0, categories=["images", "camera"])
    inputs = tmp_path / "in"
    files = sorted(p for p in made.rglob("*") if p.suffix in (".jpg", ".png", ".mp4"))
    first, later = files[:5], files[5:]
    assert len(first) == 5 and len(later) == 2
    for p in first:
        (inputs / p.relative_to(made)).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(p, inputs / p.relative_to(made))
    out = f"s3://{BUCKET}/run"
    cfg = _config(tmp_path / "s3.yaml")
    env = {**s3env, "RAY_DEDUP_LOGS": "0"}

    proc = run_pipeline_cli(inputs, out, config=cfg, env=env)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-5000:]
    objects = _objects(out)
    assert {"run.json", "centroids.npy", "centroids.json", "report.html", "stages/s1_all/part-00000.parquet"} <= \
        set(objects), objects
    assert not [o for o in objects if o.rsplit("/", 1)[-1].startswith(".")]  # no temporary objects
    samples = pd.read_parquet(out + "/samples")
    assert samples["source_uri"].nunique() == 5 and samples["cluster_id"].notna().any()
    run = json.loads(outfs.read_text(out + "/run.json"))
    assert run["sources_processed"] == 5 and run["output"] == out and run["report"] == out + "/report.html"

    for p in later:
        (inputs / p.relative_to(made)).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(p, inputs / p.relative_to(made))
    proc = run_pipeline_cli(inputs, out, config=cfg, env=env)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-5000:]
    run = json.loads(outfs.read_text(out + "/run.json"))
    assert run["sources_skipped_as_finished"] == 5 and run["sources_processed"] == 2
    samples = pd.read_parquet(out + "/samples")
    assert samples["source_uri"].nunique() == 7 and not samples["sample_id"].duplicated().any()
    assert len([o for o in _objects(out + "/samples")]) == 2  # one part per run
    # The inspection verbs take the URL as they take a folder.
    proc = subprocess.run([sys.executable, "-m", "curation.cli", "summary", out], capture_output=True, text=True,
                          timeout=300, env={**os.environ, **env})
    assert proc.returncode == 0, proc.stderr[-3000:]
    summary = json.loads(proc.stdout)
    assert summary["sources"] == 7 and summary["stages"]["s1_all"]["rows"] > 0
    assert not os.path.exists(os.path.join(os.path.dirname(os.path.dirname(__file__)), "s3:"))
