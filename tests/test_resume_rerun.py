"""Re-running into the same output with a changed config, end to end on a real local Ray (issue #10, items 1-2):
new thresholds re-decide every stored row, `curation decide` does it on demand, a changed operator parameter is
refused until `--recompute`, and 64-bit `phash` values survive next to failed rows bit for bit."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pyarrow.parquet as pq
import pytest
import yaml

from conftest import DEMO_CONFIG, ROOT, run_pipeline_cli
from curation.config import load_config
from curation.resume import fingerprints
from curation.typed import load_yaml_file

pytestmark = pytest.mark.slow


def _config(tmp: Path, name: str, edit) -> Path:
    data = load_yaml_file(DEMO_CONFIG)
    # The demo's classical operators; OCR and NSFW (model actors) change nothing here but the run time.
    data["operators"] = [op for op in data["operators"] if (op if isinstance(op, str) else op["name"])
                         not in ("ocr", "nsfw")]
    data["clustering"]["reject_duplicates"] = True  # duplicates carry a reason that re-deciding must keep right
    edit(data)
    p = tmp / f"{name}.yaml"
    p.write_text(yaml.safe_dump(data, sort_keys=False))
    return p


def _rows(out: Path) -> dict[str, dict]:
    t = pq.ParquetDataset(str(out / "samples")).read()
    return {r["sample_id"]: r for r in t.to_pylist()}  # Arrow to Python: integers stay exact


def _check_duplicates(rows: dict[str, dict]) -> int:
    """duplicate_of and its reason agree, and a row that passes every threshold never loses to a rejected twin."""
    n = 0
    for r in rows.values():
        if r["status"] == "failed":
            continue
        marked = r["duplicate_of"] is not None
        assert marked == ("duplicate_of" in (r["reject_reasons"] or [])), r["sample_id"]
        if marked:
            n += 1
            own = [x for x in r["reject_reasons"] if x != "duplicate_of"]
            if not own:
                assert rows[r["duplicate_of"]]["status"] == "kept", r["sample_id"]
    return n


@pytest.fixture(scope="module")
def small_set(tmp_path_factory):
    from curation.testing.samples import make_samples

    d = tmp_path_factory.mktemp("resume_samples")
    make_samples(d, seed=0, categories=["static", "camera", "logos", "structural", "images", "broken"])
    return d


@pytest.fixture(scope="module")
def first_run(small_set, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("resume_cfg")
    conf = _config(tmp, "a", lambda d: None)
    out = tmp / "out"
    proc = run_pipeline_cli(small_set, out, config=conf, env={"CURATION_MODEL_DIR": str(tmp / "no_models")})
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-5000:]
    return tmp, conf, out


def test_phash_is_bit_exact_next_to_failed_rows(first_run):
    from curation.dedup import phash64
    from curation.ingest import row_views

    _, conf, out = first_run
    cfg = load_config(conf)
    rows = _rows(out)
    assert sum(r["status"] == "failed" for r in rows.values()) >= 3  # the broken files: nulls in every int column
    frames_cfg = {k: v for k, v in cfg.to_dict()["frames"].items()}
    checked = 0
    for r in rows.values():
        if r["status"] == "failed":
            assert r["phash"] is None
            continue
        _, views = row_views(r, frames_cfg, cfg.limits.max_pixels, 60.0)
        frames = views["frames"]
        assert r["phash"] == phash64(frames[len(frames) // 2]), r["source_uri"]
        checked += 1
    assert checked >= 12
    assert any(abs(r["phash"]) > 2**53 for r in rows.values() if r["phash"] is not None)
    schema = pq.read_schema(next((out / "samples").glob("part-*.parquet")))
    for c in ("phash", "start_frame", "end_frame", "num_frames", "width", "height", "rotation", "cluster_id"):
        assert str(schema.field(c).type) == "int64", c


def test_changed_thresholds_redecide_every_row(first_run, small_set):
    tmp, conf_a, out = first_run
    before = _rows(out)
    assert any(r["status"] == "kept" and r["sharpness"] < 5000 for r in before.values())  # the test means something
    conf_b = _config(tmp, "b", lambda d: d["decide"].update(sharpness={"min": 5000}))
    proc = run_pipeline_cli(small_set, out, config=conf_b, env={"CURATION_MODEL_DIR": str(tmp / "no_models")})
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-5000:]
    run = json.loads((out / "run.json").read_text())
    assert run["sources_processed"] == 0
    assert run["fingerprints"] == fingerprints(load_config(conf_b))
    assert run["fingerprints"]["decide"] != fingerprints(load_config(conf_a))["decide"]
    assert run["resume"]["redecide"]["rows_redecided"] == len(before)
    after = _rows(out)
    assert set(after) == set(before)
    for sid, r in after.items():
        b = before[sid]
        if b["status"] == "failed":
            assert r["status"] == "failed" and r["error"] == b["error"]
            continue
        assert not (r["status"] == "kept" and r["sharpness"] < 5000), sid
        if r["sharpness"] < 5000:
            assert "sharpness<5000" in r["reject_reasons"], sid
        assert {k: r[k] for k in ("sharpness", "phash", "watermark_score", "embedding")} == \
            {k: b[k] for k in ("sharpness", "phash", "watermark_score", "embedding")}  # scores untouched
    _check_duplicates(after)
    assert run["counts"]["status"].get("kept", 0) == sum(r["status"] == "kept" for r in after.values())
    for stage in (out / "stages").iterdir():
        for part in stage.glob("part-*.parquet"):
            assert min(pq.read_table(part, columns=["sharpness"]).column("sharpness").to_pylist()) >= 5000


def test_decide_verb_restores_the_first_decisions(first_run):
    tmp, conf_a, out = first_run
    first = json.loads((out / "run.json").read_text())
    report_mtime = (out / "report.html").stat().st_mtime
    proc = subprocess.run([sys.executable, "-m", "curation.cli", "decide", str(out), "--config", str(conf_a)],
                          capture_output=True, text=True, timeout=600, cwd=ROOT,
                          env={**{k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"},
                               "CURATION_MODEL_DIR": str(tmp / "no_models")})
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-5000:]
    assert "re-decided" in proc.stdout
    run = json.loads((out / "run.json").read_text())
    assert run["fingerprints"] == fingerprints(load_config(conf_a))
    assert run["decide_pass"]["by"] == "curation decide"
    rows = _rows(out)
    assert not any("sharpness<5000" in (r["reject_reasons"] or []) for r in rows.values())
    assert all(not (r["status"] == "kept" and r["sharpness"] < 500) for r in rows.values())
    assert _check_duplicates(rows) >= 1
    assert (out / "report.html").stat().st_mtime > report_mtime
    assert run["stages"] and all(v["rows"] >= 0 for v in run["stages"].values())
    assert run["counts"] != first["counts"]  # first (after test 2) holds the 5000 thresholds' counts


def test_changed_operator_parameter_is_refused_then_recomputed(first_run, small_set):
    tmp, _, out = first_run
    conf_c = _config(tmp, "c", lambda d: d["operators"].__setitem__(
        [o if isinstance(o, str) else o["name"] for o in d["operators"]].index("watermark"),
        {"name": "watermark", "params": {"min_clip_frames": 100}}))
    before = sorted(p.name for p in (out / "samples").glob("part-*.parquet"))
    env = {"CURATION_MODEL_DIR": str(tmp / "no_models")}
    proc = run_pipeline_cli(small_set, out, config=conf_c, env=env)
    assert proc.returncode == 2
    assert "operators.watermark.params: added" in proc.stderr or "operators.watermark.params.min_clip_frames" in \
        proc.stderr, proc.stderr[-2000:]
    assert "--recompute" in proc.stderr and "Traceback" not in proc.stderr
    assert sorted(p.name for p in (out / "samples").glob("part-*.parquet")) == before
    proc = run_pipeline_cli(small_set, out, config=conf_c, env=env, extra=["--recompute"])
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-5000:]
    run = json.loads((out / "run.json").read_text())
    assert run["sources_processed"] == run["sources_listed"]
    assert run["resume"]["parts_removed_by_recompute"] == len(before)
    assert run["fingerprints"]["scoring"] == fingerprints(load_config(conf_c))["scoring"]
    rows = _rows(out)
    assert len({r["source_uri"] for r in rows.values()}) == run["sources_listed"]
    # Re-scored with the new parameter: no clip of this set has 100 frames, so every watermark score abstains.
    assert all(r["watermark_score"] is None for r in rows.values() if r["media_type"] == "video")
    for part in (out / "samples").glob("part-*.parquet"):
        stamp = json.loads(pq.read_schema(part).metadata[b"curation.fingerprints"])
        assert stamp["scoring"] == run["fingerprints"]["scoring"]
