"""Config validation: a bad key or value stops the run at start-up with a message naming it."""

import subprocess
import sys
from pathlib import Path

import pytest

from curation.config import ConfigError, load_config, parse_config

ROOT = Path(__file__).resolve().parent.parent


def test_shipped_configs_load():
    for name in ("demo.yaml", "pretrain_mix.yaml"):
        cfg = load_config(ROOT / "pipelines" / "configs" / name)
        assert cfg.operators, name
        assert any(r.column == "duration_s" for r in cfg.decide)


@pytest.mark.parametrize(
    "data, needle",
    [
        ({"splitt": {}}, "splitt"),
        ({"split": {"max_clip": 3}}, "split: unknown key(s) ['max_clip']"),
        ({"split": {"max_clip_s": "ten"}}, "split.max_clip_s"),
        ({"split": {"detector": "magic"}}, "split.detector"),
        ({"frames": {"num_frames": 0}}, "frames"),
        ({"operators": [{"name": "nope"}]}, "unknown operator 'nope'"),
        ({"operators": [{"name": "basic", "params": {"foo": 1}}]}, "operators.basic"),
        ({"operators": [{"name": "basic", "num_gpus": -1}]}, "operators[0].num_gpus"),
        ({"operators": ["basic", "basic"]}, "listed twice"),
        ({"decide": {"duration_s": {"minimum": 1}}}, "decide.duration_s"),
        ({"decide": {"duration_s": {"min": 5, "max": 1}}}, "min 5 is above max 1"),
        ({"decide": {"motion_tier": {"exclude": "static"}}}, "decide.motion_tier.exclude"),
        ({"decide": {"aesthetic_score": {}}}, "needs min, max"),
        ({"profile": "huge"}, "profile"),
        ({"rows_per_file": 0}, "rows_per_file"),
    ],
)
def test_bad_config_names_the_key(data, needle):
    with pytest.raises(ConfigError) as exc:
        parse_config(data)
    assert needle in str(exc.value)


def test_bad_config_stops_cli_at_startup(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("split:\n  max_clip_s: -3\n")
    out = tmp_path / "out"
    proc = subprocess.run(
        [sys.executable, str(ROOT / "pipelines" / "pretrain_mix.py"), "--input", str(tmp_path), "--output", str(out),
         "--config", str(bad)], capture_output=True, text=True, timeout=120,
    )
    assert proc.returncode == 2
    assert "split.max_clip_s" in proc.stderr
    assert not (out / "samples").exists(), "nothing may be written before the config is valid"


def test_invalid_yaml(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("split: [unclosed\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config(bad)


def test_rule_on_unknown_column_is_refused():
    with pytest.raises(ConfigError, match="decide.aesthetic_scor"):
        parse_config({"decide": {"aesthetic_scor": {"min": 4.5}}})
    with pytest.raises(ConfigError, match="decide.short_side"):
        parse_config({"decide": {"short_side": {"min": 128}}})  # needs the `basic` operator
