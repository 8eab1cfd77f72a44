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
        ({"split": {"max_clip": 3}}, "unknown config key split.max_clip"),
        ({"split": {"max_clip_s": "ten"}}, "split.max_clip_s"),
        ({"split": {"detector": "magic"}}, "split.detector"),
        ({"frames": {"num_frames": 0}}, "frames"),
        ({"operators": [{"name": "nope"}]}, "unknown operator 'nope'"),
        ({"operators": [{"name": "basic", "params": {"foo": 1}}]}, "unknown config key operators.basic.params.foo"),
        ({"operators": [{"name": "basic", "num_gpus": -1}]}, "operators[0].num_gpus"),
        ({"operators": ["basic", "basic"]}, "listed twice"),
        ({"decide": {"duration_s": {"minimum": 1}}}, "decide.duration_s"),
        ({"decide": {"duration_s": {"min": 5, "max": 1}}}, "min 5 is above max 1"),
        ({"decide": {"motion_tier": {"exclude": "static"}}}, "decide.motion_tier.exclude"),
        ({"decide": {"aesthetic_score": {}}}, "needs min, max"),
        ({"profile": "huge"}, "profile"),
        ({"rows_per_file": 0}, "rows_per_file"),
        ({"operators": [{"name": "ocr", "params": {"box_thresh": 2}}]}, "operators.ocr.params.box_thresh: must be <= 1, got 2"),
        ({"operators": [{"name": "nsfw", "params": {"num_frames": 0}}]}, "operators.nsfw.params.num_frames: must be >= 1, got 0"),
        ({"operators": [{"name": "nsfw", "params": {"seconds_per_frame": -2}}]}, "operators.nsfw.params.seconds_per_frame: must be >= 0"),
        ({"operators": [{"name": "ocr", "params": {"fold_graphs": "yes"}}]}, "operators.ocr.params.fold_graphs: expected true/false"),
        ({"operators": [{"name": "motion", "params": {"grid_step": True}}]}, "operators.motion.params.grid_step: expected an integer, got True"),
        ({"operators": [{"name": "watermark", "params": {"edge_min": 0}}]}, "operators.watermark.params.edge_min: must be > 0"),
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


@pytest.mark.parametrize("column, knob", [("duplicate_of", "clustering.reject_duplicates"),
                                           ("cluster_id", "stages"), ("caption", "stages")])
def test_decide_rule_on_a_column_filled_after_decisions_is_refused(column, knob):
    """`decide:` runs in the graph, before clustering and captioning fill these columns: such a rule could never
    fire (a user's `duplicate_of: {reject_if_true: true}` kept every duplicate), so it is refused with the way to do
    it. Stage `where:` rules run after those passes and may use them."""
    rule = {"reject_if_true": True} if column != "cluster_id" else {"exclude": ["3"]}
    with pytest.raises(ConfigError, match=rf"decide\.{column}: .*filled after .*{knob}"):
        parse_config({"decide": {column: rule}})
    cfg = parse_config({"stages": [{"name": "s1", "balance": None, "where": {column: rule}}]})
    assert cfg.stages[0].where[0].column == column


@pytest.mark.parametrize(
    "data, needle",
    [
        ({"operators": ["motion"], "decide": {"motion_tier": {"exclude": ["statc", "shaky"]}}},
         "decide.motion_tier.exclude: unknown value(s) ['statc'] for motion_tier; valid values: optimal, medium, "
         "static, camera_driven, low_quality, shaky"),
        ({"decide": {"media_type": {"exclude": ["videos"]}}},
         "decide.media_type.exclude: unknown value(s) ['videos'] for media_type; valid values: video, image"),
        ({"operators": ["watermark"], "decide": {"watermark_zone": {"exclude": ["top_left"]}}},
         "valid values: tl, tr, bl, br, top"),
        ({"operators": ["motion"], "stages": [{"name": "s1", "balance": None,
                                                "where": {"motion_tier": {"exclude": ["camera"]}}}]},
         "stages.s1.where.motion_tier.exclude: unknown value(s) ['camera']"),
        ({"operators": ["motion"], "stages": [{"name": "s1", "balance": None,
                                                "weights": {"motion_tier": {"optimum": 1.5}}}]},
         "stages.s1.weights.motion_tier: unknown value(s) ['optimum']"),
    ],
)
def test_categorical_values_are_validated(data, needle):
    with pytest.raises(ConfigError) as exc:
        parse_config(data)
    assert needle in str(exc.value)


def test_valid_categorical_values_and_free_text_columns_pass():
    cfg = parse_config({"operators": ["motion", "watermark"],
                        "decide": {"motion_tier": {"exclude": ["static", "low_quality", "shaky"]},
                                   "watermark_zone": {"exclude": ["top"]},
                                   "codec": {"exclude": ["mjpeg"]}}})  # codec is not categorical: any value
    assert [r.column for r in cfg.decide] == ["motion_tier", "watermark_zone", "codec"]


def test_typo_in_exclude_stops_the_cli_at_startup(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("operators: [motion]\ndecide:\n  motion_tier: {exclude: [statc]}\n")
    out = tmp_path / "out"
    proc = subprocess.run(
        [sys.executable, str(ROOT / "pipelines" / "pretrain_mix.py"), "--input", str(tmp_path), "--output", str(out),
         "--config", str(bad)], capture_output=True, text=True, timeout=120,
    )
    assert proc.returncode == 2
    assert "motion_tier" in proc.stderr and "statc" in proc.stderr and "Traceback" not in proc.stderr
    assert not (out / "samples").exists()


def test_mistyped_operator_parameter_stops_curation_run_at_startup(tmp_path, capsys):
    """`curation run` (in process): one message naming operators.<name>.params.<key>, nothing written."""
    from curation.cli import main

    bad = tmp_path / "bad.yaml"
    bad.write_text("operators:\n  - {name: motion, params: {grid_step: eight}}\n")
    out = tmp_path / "out"
    assert main(["run", "--config", str(bad), "--input", str(tmp_path), "--output", str(out)]) == 2
    err = capsys.readouterr().err
    assert "operators.motion.params.grid_step: expected an integer, got 'eight'" in err and "Traceback" not in err
    assert not out.exists()


def test_operators_ship_without_their_loaded_models():
    """Ray pickles an operator to ship it to workers: loaded models stay behind (setup() loads them there)."""
    import pickle

    from operators.motion import MotionGrading
    from operators.nsfw import NudeNetNsfw
    from operators.ocr import OcrText
    from operators.watermark import WatermarkDetector

    for cls in (OcrText, NudeNetNsfw, MotionGrading, WatermarkDetector):
        op = cls()
        for key in cls.transient:
            setattr(op, key, lambda: None)  # stands in for an ONNX session: pickle refuses it
        state = pickle.loads(pickle.dumps(op)).__dict__
        assert cls.transient and not set(cls.transient) & set(state), cls.name
        assert state["config"] == op.config
