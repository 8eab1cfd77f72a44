"""The `curation` command as a new user meets it: verbs that take an output folder check that it is one, expected
errors are one message (no traceback, non-zero exit), `--version`, and `summary` with duplicates and stage sizes."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from conftest import DEMO_CONFIG, ROOT
from curation.cli import main


def _fake_output(root, n: int = 12, run_json: bool = True, stages: bool = False):
    """A small pipeline output: samples/ with `n` kept image rows (embeddings, clusters), run.json, and optionally
    a stage folder."""
    from PIL import Image

    from curation.schema import manifest_schema

    root.mkdir(parents=True, exist_ok=True)
    img = root / "img.png"
    Image.fromarray(np.full((64, 96, 3), 128, np.uint8)).save(img)
    rng = np.random.default_rng(0)
    recs = []
    for i in range(n):
        rec = {f.name: None for f in manifest_schema()}
        rec.update(sample_id=f"s{i:03d}", source_uri=str(img), media_type="image", status="kept",
                   reject_reasons=[], embedding=rng.normal(size=8).tolist(), sharpness=float(i),
                   cluster_id=i % 2, duplicate_of="s000" if i in (3, 5) else None)
        recs.append(rec)
    recs[5].update(status="rejected", reject_reasons=["duplicate_of"])
    (root / "samples").mkdir()
    pq.write_table(pa.Table.from_pylist(recs, schema=manifest_schema()), root / "samples" / "part-0.parquet")
    if run_json:
        (root / "run.json").write_text(json.dumps({"name": "t", "clustering": {"enabled": True}}))
    if stages:
        (root / "stages" / "s1_image").mkdir(parents=True)
        t = pa.Table.from_pylist(recs[:4], schema=manifest_schema())
        pq.write_table(t, root / "stages" / "s1_image" / "part-00000.parquet")
        (root / "stages" / "s2_video").mkdir(parents=True)
    return root


def _one_error(err: str, needle: str) -> None:
    """stderr is one clear message naming `needle`, not a traceback."""
    assert "Traceback" not in err, err
    lines = [line for line in err.splitlines() if line.strip() and " WARNING " not in line]
    assert lines and lines[0].startswith("error:") and needle in lines[0], err


def test_version(capsys):
    with pytest.raises(SystemExit) as exit_:
        main(["--version"])
    assert exit_.value.code == 0
    assert capsys.readouterr().out.startswith("curation 0.1.0")


def _verbs(out: str, tmp_path) -> dict[str, list[str]]:
    ann = _fake_output(tmp_path / "ann_src") / "ann.parquet"
    pq.write_table(pa.table({"sample_id": ["s000"], "score": pa.array([3], pa.int64())}), ann)
    labels = tmp_path / "labels.parquet"
    pq.write_table(pa.table({"file": ["x"]}), labels)
    return {
        "summary": ["summary", out],
        "report": ["report", out],
        "caption": ["caption", out, "--config", str(DEMO_CONFIG)],
        "decide": ["decide", out, "--config", str(DEMO_CONFIG)],
        "scorer sample": ["scorer", "sample", "--manifest", out, "--n", "5"],
        "scorer train": ["scorer", "train", "--annotations", str(ann), "--manifest", out],
        "scorer proxy-labels": ["scorer", "proxy-labels", "--manifest", out, "--labels", str(labels)],
    }


@pytest.mark.parametrize("kind", ["missing", "empty_folder", "a_file", "no_run_json"])
def test_every_output_verb_checks_its_folder(kind, tmp_path, capsys):
    """summary, report, caption and the scorer verbs refuse a path that is not a pipeline output, with one message
    saying what is wrong (before: zero counts with exit 0, an empty report page, a traceback)."""
    target = tmp_path / "target"
    if kind == "empty_folder":
        target.mkdir()
    elif kind == "a_file":
        target.write_text("not a folder")
    elif kind == "no_run_json":
        _fake_output(target, run_json=False)
    want = {"missing": "no such folder", "empty_folder": "not a pipeline output", "a_file": "a file",
            "no_run_json": "no run.json"}[kind]
    for verb, argv in _verbs(str(target), tmp_path).items():
        rc = main(argv)
        err = capsys.readouterr().err
        assert rc == 2, (verb, rc, err)
        _one_error(err, str(target))
        assert want in err, (verb, err)
    assert not (tmp_path / "target" / "report.html").exists()  # no empty page written into a random folder


def test_summary_shows_duplicates_and_stage_sizes(tmp_path, capsys):
    out = _fake_output(tmp_path / "out", stages=True)
    assert main(["summary", str(out)]) == 0
    s = json.loads(capsys.readouterr().out)
    assert s["rows"] == 12 and s["status"] == {"kept": 11, "rejected": 1}
    assert s["duplicates"] == {"rows": 2, "rejected_as_duplicate": 1, "kept": 1}
    assert s["stages"]["s1_image"] == {"rows": 4, "videos": 0, "images": 4, "video_hours": 0.0}
    assert s["stages"]["s2_video"]["rows"] == 0


def test_report_on_an_output_still_works(tmp_path, capsys):
    out = _fake_output(tmp_path / "out")
    assert main(["report", str(out)]) == 0
    assert (out / "report.html").is_file()


def _cli(*argv: str, env: dict | None = None) -> subprocess.CompletedProcess:
    e = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    e.update(env or {})
    return subprocess.run([sys.executable, "-m", "curation.cli", *argv], capture_output=True, text=True,
                          timeout=300, cwd=ROOT, env=e)


def test_run_refuses_an_output_that_is_a_file_before_ray_starts(tmp_path):
    (tmp_path / "in").mkdir()
    (tmp_path / "out.txt").write_text("a file")
    for out in (tmp_path / "out.txt", tmp_path / "out.txt" / "sub"):
        proc = _cli("run", "--input", str(tmp_path / "in"), "--output", str(out))
        assert proc.returncode == 2, proc.stderr
        _one_error(proc.stderr, str(out))
        assert "a file, not a folder" in proc.stderr
        assert "Ray" not in proc.stderr  # refused at start-up: no local Ray was started


def test_run_with_a_missing_model_is_one_message(tmp_path):
    """pretrain_mix.yaml with an empty model cache: the list of missing models (the captioner among them), exit 1,
    no traceback, before Ray starts."""
    (tmp_path / "in").mkdir()
    proc = _cli("run", "--input", str(tmp_path / "in"), "--output", str(tmp_path / "out"), "--config",
                str(DEMO_CONFIG.parent / "pretrain_mix.yaml"), env={"CURATION_MODEL_DIR": str(tmp_path / "models")})
    assert proc.returncode == 1, proc.stderr
    _one_error(proc.stderr, "model(s) missing")
    assert "qwen2-vl-7b" in proc.stderr and "clip-vit-l-14" in proc.stderr
    assert "Ray" not in proc.stderr


def _labelled(tmp_path, n: int, scored: bool):
    out = _fake_output(tmp_path / "out", n=n)
    ann = tmp_path / "ann.parquet"
    scores = pa.array([(i % 5) + 1 if scored else None for i in range(n)], pa.int64())
    pq.write_table(pa.table({"sample_id": [f"s{i:03d}" for i in range(n)], "score": scores,
                             "manifest": [str(out)] * n}), ann)
    return out, ann


def test_scorer_train_on_an_unlabelled_sample_says_the_scores_are_missing(tmp_path, capsys):
    _, ann = _labelled(tmp_path, 12, scored=False)
    assert main(["scorer", "train", "--annotations", str(ann)]) == 2
    err = capsys.readouterr().err
    _one_error(err, "has a `score` yet")
    assert "no `manifest` column" not in err  # the column is there; the labels are what is missing
    assert "none of its 12 rows" in err


def test_scorer_train_names_bad_scores_and_too_few_labels(tmp_path, capsys):
    out, ann = _labelled(tmp_path, 12, scored=True)
    t = pq.read_table(ann).to_pandas()
    t.loc[0, "score"] = 7
    t.to_parquet(ann)
    assert main(["scorer", "train", "--annotations", str(ann)]) == 2
    _one_error(capsys.readouterr().err, "whole number 1-5")
    t.loc[0, "score"] = 3
    t.loc[3:, "score"] = None
    t.to_parquet(ann)
    assert main(["scorer", "train", "--annotations", str(ann)]) == 2
    _one_error(capsys.readouterr().err, "at least 8")


def test_scorer_sample_says_when_fewer_rows_exist_than_asked(tmp_path, capsys, caplog):
    out = _fake_output(tmp_path / "out", n=17)
    with caplog.at_level("WARNING", logger="curation.cli.scorer"):
        assert main(["scorer", "sample", "--manifest", str(out), "--n", "500"]) == 0
    warned = [r.getMessage() for r in caplog.records if r.levelname == "WARNING"]
    assert any("asked for 500" in m and "only 16" in m for m in warned), warned  # 16 kept rows of 17
    ann = pq.read_table(out / "annotation" / "annotations.parquet")
    assert ann.num_rows == 16
