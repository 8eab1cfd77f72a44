"""Model registry: offline errors, resolve from a fake cache, package-shipped files, config → keys. No network."""

from __future__ import annotations

import argparse
import urllib.request
from pathlib import Path

import pytest

from curation import models
from curation.cli import models as models_cli


@pytest.fixture(autouse=True)
def no_network(monkeypatch):
    """Any attempt to reach the network fails the test loudly."""

    def boom(*a, **k):
        raise AssertionError("network access attempted")

    monkeypatch.setattr(urllib.request, "urlopen", boom)
    import huggingface_hub

    monkeypatch.setattr(huggingface_hub, "hf_hub_download", boom)
    monkeypatch.setattr(huggingface_hub, "snapshot_download", boom)


def test_every_entry_is_pinned_or_local():
    for key, s in models.REGISTRY.items():
        assert s.files and s.how_to_get, key
        if s.kind in ("hf", "url_file"):
            assert s.revision, f"{key} must pin a revision"
        if s.kind == "url_file":  # a sha256, or the git blob id read from the pinned commit's tree
            assert set(s.sha256) | set(s.git_blob_sha1) == set(s.files), f"{key} must pin sha256 or a git blob id"


def test_missing_models_are_listed_with_how_to_get(tmp_path, monkeypatch):
    monkeypatch.setenv(models.ENV_VAR, str(tmp_path))
    missing = models.check(["clip-vit-l-14", "laion-aesthetic-l14", "synthetic-head", "pp-ocrv4"])
    assert [m.key for m in missing] == ["clip-vit-l-14", "laion-aesthetic-l14", "synthetic-head"]
    with pytest.raises(models.ModelNotFoundError) as err:
        models.require(["clip-vit-l-14", "laion-aesthetic-l14", "synthetic-head"])
    msg = str(err.value)
    assert str(tmp_path) in msg and models.ENV_VAR in msg
    for key in ("clip-vit-l-14", "laion-aesthetic-l14", "synthetic-head"):
        assert key in msg
    assert "curation models pull --keys laion-aesthetic-l14" in msg
    assert "curation heads train synthetic" in msg


def test_resolve_from_fake_cache(tmp_path):
    d = tmp_path / "laion-aesthetic-l14"
    d.mkdir()
    f = d / "sac+logos+ava1-l14-linearMSE.pth"
    f.write_bytes(b"x" * 10)  # wrong size: reported, not resolved
    assert "bytes, expected 3714759" in models.check(["laion-aesthetic-l14"], tmp_path)[0].reason
    with open(f, "wb") as fh:
        fh.truncate(3_714_759)
    assert models.resolve("laion-aesthetic-l14", tmp_path) == f
    bad = models.check(["laion-aesthetic-l14"], tmp_path, verify=True)  # right size, wrong bytes
    assert bad and "sha256 mismatch" in bad[0].reason
    clip = tmp_path / "clip-vit-l-14"
    clip.mkdir()
    (clip / "open_clip_model.safetensors").write_bytes(b"0")
    assert models.require(["clip-vit-l-14"], tmp_path)["clip-vit-l-14"].name == "open_clip_model.safetensors"
    q = tmp_path / "qwen2-vl-7b"
    q.mkdir()
    assert "no file matching *.safetensors" in models.check(["qwen2-vl-7b"], tmp_path)[0].reason


def test_package_files_resolve_without_cache(tmp_path):
    paths = models.require(["pp-ocrv4", "nudenet"], tmp_path)
    assert (paths["pp-ocrv4"] / "models" / "ch_PP-OCRv4_det_infer.onnx").is_file()
    assert paths["nudenet"].name == "320n.onnx" and paths["nudenet"].is_file()


def test_pull_of_local_model_says_how_to_train(tmp_path):
    with pytest.raises(models.ModelNotFoundError, match="curation scorer train"):
        models.pull(["quality-scorer"], tmp_path)
    # present models are not fetched again (the network stub would fail otherwise)
    assert models.pull(["nudenet"], tmp_path)["nudenet"].is_file()


def test_unknown_key():
    with pytest.raises(KeyError, match="known"):
        models.check(["nope"])


def test_models_for_config_and_cli_check(tmp_path, capsys):
    cfg = {
        "operators": [
            {"name": "embedding", "params": {"heads": ["aesthetic", "synthetic"]}, "num_gpus": 0.25},
            {"name": "descriptor"},
            {"name": "quality_scorer", "params": {"required": True}},
            {"name": "nsfw"},
        ],
    }
    keys = models_cli.models_for_config(cfg)
    assert {"clip-vit-l-14", "laion-aesthetic-l14", "synthetic-head", "quality-scorer"} <= set(keys)
    parser = argparse.ArgumentParser()
    models_cli.add_models_parser(parser.add_subparsers())
    args = parser.parse_args(["models", "check", "--keys", "nudenet", "clip-vit-l-14", "--model-dir", str(tmp_path)])
    assert args.func(args) == 1
    out = capsys.readouterr()
    assert "ok       nudenet" in out.out and "MISSING  clip-vit-l-14" in out.out
    assert "curation models pull --keys clip-vit-l-14" in out.err


def test_every_how_to_get_command_parses():
    """The `curation ...` commands the registry tells users to run exist with those arguments."""
    import re
    import shlex

    from curation.cli import build_parser
    from curation.models import REGISTRY

    specs = REGISTRY.values() if isinstance(REGISTRY, dict) else REGISTRY
    seen = 0
    for spec in specs:
        text = re.sub(r"\([^)]*\)", "", spec.how_to_get)  # drop remarks in parentheses
        for seg in text.split(";"):
            seg = seg.strip()
            if not seg.startswith("curation "):
                continue
            argv = shlex.split(re.sub(r"--n N\b", "--n 100", seg))[1:]
            build_parser().parse_args(argv)  # argparse exits (SystemExit) on an unknown command or argument
            seen += 1
    assert seen >= 6


def _models_cli(argv: list[str]) -> int:
    parser = argparse.ArgumentParser()
    models_cli.add_models_parser(parser.add_subparsers())
    args = parser.parse_args(argv)
    return args.func(args)


def test_check_lists_every_model_of_the_full_profile(tmp_path, capsys):
    """pretrain_mix.yaml captions with Qwen2-VL: `models check` lists it with the operators' models, and the
    quality scorer as optional (a run does without it); the run's own up-front list is the same."""
    from curation.config import load_config
    from curation.graph import plan

    config = Path(__file__).resolve().parent.parent / "pipelines" / "configs" / "pretrain_mix.yaml"
    assert _models_cli(["models", "check", "--config", str(config), "--model-dir", str(tmp_path)]) == 1
    out = capsys.readouterr()
    for key in ("clip-vit-l-14", "laion-aesthetic-l14", "qwen2-vl-7b"):
        assert f"MISSING  {key}" in out.out and f"curation models pull --keys {key}" in out.err
    assert "ok       pp-ocrv4" in out.out and "ok       nudenet" in out.out
    assert "absent   quality-scorer  (optional" in out.out
    assert "Traceback" not in out.err
    listed = {line.split()[1] for line in out.out.splitlines() if line.startswith(("MISSING", "ok "))}
    assert listed == set(plan(load_config(config)).models)


def test_pull_reports_what_it_cannot_fetch_without_a_traceback(tmp_path, capsys):
    """Models nobody can download (trained locally) are named with how to make them; needed ones fail the pull."""
    cfg = tmp_path / "c.yaml"
    cfg.write_text("operators:\n  - name: descriptor\n  - name: nsfw\n  - name: quality_scorer\n")
    assert _models_cli(["models", "pull", "--config", str(cfg), "--model-dir", str(tmp_path / "m")]) == 0
    out = capsys.readouterr()
    assert "nudenet:" in out.out and "(present)" in out.out
    assert "quality-scorer: optional, absent; train it: curation scorer" in out.err
    cfg.write_text("operators:\n  - name: descriptor\n  - name: quality_scorer\n    params: {required: true}\n")
    assert _models_cli(["models", "pull", "--config", str(cfg), "--model-dir", str(tmp_path / "m")]) == 1
    out = capsys.readouterr()
    assert "quality-scorer: MISSING; train it:" in out.err and "not available: quality-scorer" in out.err
    assert "Traceback" not in out.err
