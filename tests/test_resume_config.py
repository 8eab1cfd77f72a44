"""Re-runs into an existing output when the config changed (no Ray here): fingerprints per config part, the
start-up refusal when the scoring part changed, and re-deciding stored rows when only `decide:` changed."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from curation.config import parse_config
from curation.graph import plan
from curation.manifest import SampleWriter, write_json_atomic
from curation.resume import (ResumeError, check_resume, describe_changes, fingerprints, part_metadata,
                             redecide_manifest, redecide_table, remove_stale)

ROOT = Path(__file__).resolve().parent.parent
BASE = {"operators": ["basic", {"name": "watermark", "params": {"edge_min": 80}}, "phash"],
        "decide": {"short_side": {"min": 128}, "watermark_score": {"max": 0.5}},
        "clustering": {"enabled": False}}


def _cfg(**changes):
    data = json.loads(json.dumps(BASE))
    for k, v in changes.items():
        data[k] = v
    return parse_config(data)


def test_each_part_has_its_own_fingerprint():
    a = fingerprints(_cfg())
    assert set(a) == {"scoring", "decide", "clustering", "stages", "captioning"}
    b = fingerprints(_cfg(decide={"short_side": {"min": 256}, "watermark_score": {"max": 0.5}}))
    assert b["decide"] != a["decide"] and {k: v for k, v in b.items() if k != "decide"} == \
        {k: v for k, v in a.items() if k != "decide"}
    ops = json.loads(json.dumps(BASE["operators"]))
    ops[1]["params"]["edge_min"] = 60
    assert fingerprints(_cfg(operators=ops))["scoring"] != a["scoring"]
    assert fingerprints(_cfg(frames={"num_frames": 16}))["scoring"] != a["scoring"]
    assert fingerprints(_cfg(split={"max_clip_s": 5.0}))["scoring"] != a["scoring"]
    # Resources change no score; 80 and 80.0 are the same parameter.
    ops = json.loads(json.dumps(BASE["operators"]))
    ops[1].update(num_cpus=2, batch_size=4)
    ops[1]["params"]["edge_min"] = 80.0
    assert fingerprints(_cfg(operators=ops))["scoring"] == a["scoring"]
    # run.json's recorded config gives the same fingerprints as the config it was made from.
    assert fingerprints(json.loads(json.dumps(_cfg().to_dict(), default=str))) == a


def test_describe_changes_names_the_key():
    old = _cfg().to_dict()
    ops = json.loads(json.dumps(BASE["operators"]))
    ops[1]["params"]["edge_min"] = 60
    ops.append("quality")
    from curation.resume import config_parts

    got = describe_changes(config_parts(old)["scoring"], config_parts(_cfg(operators=ops).to_dict())["scoring"])
    assert got == ["operators: quality added", "operators.watermark.params.edge_min: 80 -> 60"]


def _rows(schema, specs):
    rows = []
    for i, (status, short, wm, dup) in enumerate(specs):
        r = {f.name: None for f in schema}
        r.update(sample_id=f"s{i}", source_uri=f"/x/{i}.mp4", media_type="video", status=status, short_side=short,
                 watermark_score=wm, duplicate_of=dup, reject_reasons=[], clips_in_source=1, clip_index=0)
        if status == "failed":
            r["error"] = "ProbeError: empty file (0 bytes)"
        rows.append(r)
    return pa.Table.from_pylist(rows, schema=schema)


SPECS = [("kept", 300, 0.1, None), ("kept", 200, 0.2, None), ("failed", None, None, None),
         ("kept", 300, 0.9, None), ("kept", 300, None, "s0")]


def test_redecide_table_matches_the_graphs_decide():
    # (no rule on duplicate_of: clustering fills it after decisions, so decide: refuses one)
    cfg = _cfg(decide={"short_side": {"min": 256}, "watermark_score": {"max": 0.5}})
    t = _rows(plan(cfg).schema, SPECS)
    out, changed = redecide_table(t, cfg.decide, keep_duplicate_reason=False)
    assert out.column("status").to_pylist() == ["kept", "rejected", "failed", "rejected", "kept"]
    assert out.column("reject_reasons").to_pylist() == [[], ["short_side<256"], [], ["watermark_score>0.5"], []]
    assert changed == 2
    # With clustering's reject_duplicates the duplicate mark keeps its reason (clustering re-derives it next).
    out, _ = redecide_table(t, cfg.decide, keep_duplicate_reason=True)
    assert out.column("status").to_pylist()[4] == "rejected"
    assert out.column("reject_reasons").to_pylist()[4] == ["duplicate_of"]
    assert out.schema == t.schema


def _output(tmp_path, cfg, specs=SPECS, run_json=True):
    out = tmp_path / "out"
    schema = plan(cfg).schema
    w = SampleWriter(out, schema.with_metadata(part_metadata(cfg)), rows_per_file=100)
    w.add_table(_rows(schema, specs))
    w.close()
    if run_json:
        write_json_atomic({"config": cfg.to_dict(), "fingerprints": fingerprints(cfg)}, out / "run.json")
    return out


def test_scoring_change_is_refused_with_one_message(tmp_path):
    out = _output(tmp_path, _cfg())
    ops = json.loads(json.dumps(BASE["operators"]))
    ops[1]["params"]["edge_min"] = 60
    with pytest.raises(ResumeError) as exc:
        check_resume(out, _cfg(operators=ops))
    msg = str(exc.value)
    assert "operators.watermark.params.edge_min: 80 -> 60" in msg and "--recompute" in msg and "--output" in msg
    # Thresholds alone are fine; so is the same config.
    check_resume(out, _cfg(decide={"short_side": {"min": 256}}))
    check_resume(out, _cfg())
    # Without run.json the part files' own fingerprints still catch it.
    (out / "run.json").unlink()
    with pytest.raises(ResumeError, match="does not record the earlier config"):
        check_resume(out, _cfg(operators=ops))
    # --recompute: the parts scored otherwise are removed (their sources are then processed again).
    plan_ = check_resume(out, _cfg(operators=ops), recompute=True)
    assert len(plan_["stale_parts"]) == 1
    assert remove_stale(out, plan_) == len(SPECS) and not list((out / "samples").glob("part-*"))


def test_redecide_manifest_rewrites_parts_decided_otherwise(tmp_path):
    cfg = _cfg()
    out = _output(tmp_path, cfg)
    assert redecide_manifest(out, cfg)["parts_redecided"] == 0  # decided with these rules already
    new = _cfg(decide={"short_side": {"min": 256}, "watermark_score": {"max": 0.5}})
    s = redecide_manifest(out, new)
    assert (s["parts_redecided"], s["rows_redecided"]) == (1, len(SPECS))
    (part,) = (out / "samples").glob("part-*.parquet")
    t = pq.read_table(part)
    assert t.column("status").to_pylist() == ["kept", "rejected", "failed", "rejected", "kept"]
    assert json.loads(t.schema.metadata[b"curation.fingerprints"])["decide"] == fingerprints(new)["decide"]
    assert redecide_manifest(out, new)["parts_redecided"] == 0  # stamped: a second pass has nothing to do
    assert not list((out / "samples").glob(".*"))


def test_cli_refuses_a_scoring_change_before_ray_starts(tmp_path):
    out = _output(tmp_path, _cfg())
    ops = json.loads(json.dumps(BASE["operators"]))
    ops[1]["params"]["edge_min"] = 60
    conf = tmp_path / "changed.yaml"
    conf.write_text(json.dumps({**BASE, "operators": ops}))  # JSON is YAML
    before = sorted(p.name for p in (out / "samples").iterdir())
    for cmd in ([sys.executable, str(ROOT / "pipelines" / "pretrain_mix.py"), "--input", str(tmp_path),
                 "--output", str(out), "--config", str(conf)],
                [sys.executable, "-m", "curation.cli", "decide", str(out), "--config", str(conf)]):
        t0 = time.time()
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=120, cwd=ROOT)
        assert proc.returncode == 2, proc.stderr[-2000:]
        assert "operators.watermark.params.edge_min: 80 -> 60" in proc.stderr and "--recompute" in proc.stderr
        assert "Traceback" not in proc.stderr and "Ray" not in proc.stderr  # one message, before Ray starts
        assert time.time() - t0 < 60
    assert sorted(p.name for p in (out / "samples").iterdir()) == before
