"""DiT training: --set overrides, start-up errors, the NaN guard, bad shards, 2-process FSDP2 on gloo against one
process, and SIGKILL-then-resume against an uninterrupted run."""

from __future__ import annotations

import json
import os
import pathlib
import signal
import subprocess
import sys
import time

import pytest
import torch
import yaml
from safetensors.torch import load_file

from latent_fixtures import grid_rows, write_latents
from trainer import train_dit
from trainer.components.config import ConfigError
from trainer.data.latents import ShardError

ROOT = pathlib.Path(__file__).resolve().parents[1]
DEMO = ROOT / "trainer" / "configs" / "dit_demo.yaml"


@pytest.fixture(autouse=True)
def _one_thread():
    """Tiny models: one intra-op thread is fastest, and steady on a shared machine."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def _latents(tmp_path, **kw) -> str:
    rows = grid_rows({"s1": ["1x32x32", "1x32x64"], "s2": ["5x32x32", "1x32x32"]}, per_bucket=4)
    rows += kw.pop("extra_rows", [])
    return write_latents(str(tmp_path / "latents"), rows, text_dim=32, text_len=16, **kw)


def _config(tmp_path, latents: str, name: str = "cfg.yaml", **train) -> str:
    cfg = {
        "model": {"preset": "tiny"},
        "data": {"latents": latents},
        "optim": {"lr": 2e-3, "warmup_steps": 2, "decay": "cosine"},
        "phases": [
            {"name": "images", "stage": "s1", "steps": 6, "batch": {"*": 4}, "micro_batch": 1},
            {"name": "joint", "stages": {"s1": 1, "s2": 2}, "steps": 6, "batch": {"*": 2}, "shift": 2.0},
        ],
        "train": {"output_dir": str(tmp_path / "run"), "device": "cpu", "precision": "fp32", "tensorboard": False,
                  "probe_samples": 0, "checkpoint_every": 100, "export_ema": False, **train},
    }
    path = tmp_path / name
    path.write_text(yaml.safe_dump(cfg))
    return str(path)


def _losses(run_dir) -> dict[int, float]:
    out = {}
    with open(os.path.join(run_dir, "metrics.jsonl")) as fh:
        for line in fh:
            rec = json.loads(line)
            if "loss" in rec:
                out[rec["step"]] = rec["loss"]
    return out


def _env() -> dict:
    return dict(os.environ, PYTHONPATH=f"{ROOT}{os.pathsep}{os.environ.get('PYTHONPATH', '')}", OMP_NUM_THREADS="1")


def test_set_overrides_and_their_errors(tmp_path, capsys):
    path = _config(tmp_path, "nowhere")
    cfg = train_dit.load_config(path, ["train.max_steps=3", "phases.1.lr=1e-4", "optim.betas=[0.8, 0.9]",
                                       "val.every=5"])
    assert cfg.train.max_steps == 3 and cfg.phases[1].lr == 1e-4 and cfg.optim.betas == [0.8, 0.9]
    assert cfg.val.every == 5
    for bad, msg in [("train.max_stepz=3", "unknown config key train.max_stepz"),
                     ("train.max_steps=many", "train.max_steps: expected an integer, got 'many'"),
                     ("phases.7.lr=1", "phases.7 is not an index of a list of 2"),
                     ("train.precision=fp8", "train.precision: must be bf16 or fp32"),
                     ("phases.0.batch={17x2: 4}", "'17x2' is not a bucket"),
                     ("model.preset=2B", "model.preset: '2B' is not one of"),
                     ("model.config.dim=wide", "model.config.dim: expected an integer, got 'wide'"),
                     ("model.config.dimm=3", "unknown config key model.config.dimm"),
                     ("flow.density=gauss", "flow.density must be uniform or logit_normal"),
                     ("train.device.x=1", "train.device is a value, not a section"),
                     ("noequals", "expected dotted.key=value")]:
        with pytest.raises(ConfigError, match=msg.replace("[", r"\[").replace("{", r"\{")):
            train_dit.load_config(path, [bad])
    assert train_dit.main(["--config", path, "--set", "train.max_stepz=3"]) == 2
    assert "config error: unknown config key train.max_stepz" in capsys.readouterr().err


def test_start_up_errors_before_any_step(tmp_path):
    lat = _latents(tmp_path)
    path = _config(tmp_path, lat)
    with pytest.raises(ConfigError, match="phase images: stage 's9' has no rows"):
        train_dit.train(train_dit.load_config(path, ["phases.0.stage=s9"]))
    with pytest.raises(ConfigError, match="text_dim is 64, but the latents' text encoder gives 32-d text"):
        train_dit.train(train_dit.load_config(path, ["model.config={text_dim: 64}"]))
    with pytest.raises(ConfigError, match="none allowed"):
        train_dit.train(train_dit.load_config(path, ["phases.1.batch={17x32x32: 2}"]))
    assert not os.path.exists(tmp_path / "run" / "metrics.jsonl")


def test_non_finite_loss_stops_or_skips(tmp_path):
    bad = [dict(sample_id="nan-0", stage="s3", bucket="1x32x32", weight=1.0)]
    lat = _latents(tmp_path, extra_rows=bad, nan_samples=("nan-0",))
    path = _config(tmp_path, lat)
    phases = ["phases.0.steps=2", "phases.1.stages={s3: 1}", "phases.1.steps=3", "train.checkpoint_at_end=false"]
    with pytest.raises(train_dit.NonFiniteLoss, match=r"at step 3, phase joint \(stage s3"):
        train_dit.train(train_dit.load_config(path, phases))
    summary = train_dit.train(train_dit.load_config(
        path, phases + ["train.max_skipped_steps=3", f"train.output_dir={tmp_path / 'skip'}", "train.resume=false"]))
    assert summary["skipped"] == 3 and summary["steps"] == 5
    recs = [json.loads(line) for line in open(tmp_path / "skip" / "metrics.jsonl")]
    assert [r["skipped"] for r in recs if "skipped" in r] == [False] * 2 + [True] * 3
    assert [r["loss"] is None for r in recs if "skipped" in r] == [False] * 2 + [True] * 3
    final = load_file(str(tmp_path / "skip" / "final" / "model" / "diffusion_pytorch_model.safetensors"))
    assert all(torch.isfinite(v).all() for v in final.values())
    with pytest.raises(train_dit.NonFiniteLoss, match="stopping after 3"):
        train_dit.train(train_dit.load_config(path, phases + ["train.max_skipped_steps=2", "train.resume=false",
                                                              f"train.output_dir={tmp_path / 'skip2'}"]))


def test_missing_or_corrupt_shard_is_named(tmp_path, capsys):
    lat = _latents(tmp_path)
    path = _config(tmp_path, lat)
    shard = pathlib.Path(lat) / "shards" / "s2" / "shard-test-00000.safetensors"
    data = shard.read_bytes()
    shard.write_bytes(data[: len(data) // 2])
    with pytest.raises(ShardError, match=f"{shard}.*corrupt"):
        train_dit.train(train_dit.load_config(path))
    shard.unlink()
    assert train_dit.main(["--config", path, "--set", "train.resume=false"]) == 4
    err = capsys.readouterr().err
    assert f"{shard} is missing" in err and "phase joint" in err


@pytest.mark.slow
def test_two_gloo_processes_with_fsdp2_match_one(tmp_path):
    lat = _latents(tmp_path)
    path = _config(tmp_path, lat, export_ema=True)
    one = train_dit.train(train_dit.load_config(path, [f"train.output_dir={tmp_path / 'one'}"]))
    assert one["steps"] == 12
    proc = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", "-m",
         "trainer.train_dit", "--config", path, "--set", f"train.output_dir={tmp_path / 'two'}"],
        cwd=ROOT, env=_env(), capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    a, b = _losses(tmp_path / "one"), _losses(tmp_path / "two")
    assert sorted(a) == sorted(b) == list(range(1, 13))
    for step in a:  # the same samples, σ and noise; only the order of the gradient sums differs
        assert b[step] == pytest.approx(a[step], rel=1e-5, abs=1e-6), step
    for kind in ("model", "ema"):
        wa = load_file(str(tmp_path / "one" / "final" / kind / "diffusion_pytorch_model.safetensors"))
        wb = load_file(str(tmp_path / "two" / "final" / kind / "diffusion_pytorch_model.safetensors"))
        assert wa.keys() == wb.keys()
        for k in wa:
            torch.testing.assert_close(wb[k], wa[k], rtol=1e-4, atol=1e-5, msg=f"{kind} {k}")
    from trainer.models.dit.weights import load_wan_dit

    assert load_wan_dit(str(tmp_path / "two" / "final" / "ema")).config.dim == 32  # the released layout loads


@pytest.mark.slow
def test_sigkill_mid_phase_then_resume_repeats_the_losses(tmp_path):
    lat = _latents(tmp_path)
    steps = ["phases.0.steps=10", "phases.1.steps=10", "train.checkpoint_every=3", "train.export_ema=true"]
    path = _config(tmp_path, lat)
    ref = train_dit.train(train_dit.load_config(path, steps + [f"train.output_dir={tmp_path / 'ref'}"]))
    assert ref["steps"] == 20
    run = tmp_path / "killed"
    cmd = [sys.executable, "-m", "trainer.train_dit", "--config", path, "--set", f"train.output_dir={run}"]
    for s in steps:
        cmd += ["--set", s]
    proc = subprocess.Popen(cmd, cwd=ROOT, env=_env(), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.time() + 300
    while time.time() < deadline and proc.poll() is None:
        if os.path.exists(run / "metrics.jsonl") and max(_losses(run) or [0]) >= 14:
            break
        time.sleep(0.02)
    assert proc.poll() is None, "the run ended before it could be killed"
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    killed_at = max(_losses(run))
    assert 14 <= killed_at < 20 and not (run / "summary.json").exists()
    # the latest checkpoint is mid-phase ("joint" runs steps 11..20, checkpoints every 3 steps: 12, 15, 18)
    state = json.loads((run / "checkpoints" / open(run / "checkpoints" / "latest").read() / "state.json").read_text())
    assert state["phase"] == "joint" and state["step"] in (12, 15, 18) and state["step"] <= killed_at
    resumed = subprocess.run(cmd, cwd=ROOT, env=_env(), capture_output=True, text=True, timeout=300)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert f"resumed from" in resumed.stdout
    assert _losses(run) == _losses(tmp_path / "ref")  # bit-identical, step by step
    wa = load_file(str(tmp_path / "ref" / "final" / "ema" / "diffusion_pytorch_model.safetensors"))
    wb = load_file(str(run / "final" / "ema" / "diffusion_pytorch_model.safetensors"))
    assert all(torch.equal(wa[k], wb[k]) for k in wa)


def test_compiled_blocks_train_like_eager(tmp_path):
    """`model.compile: true` (torch.compile per block, inductor on CPU here) gives the eager run's losses, and the
    exported weights keep the released names (no `_orig_mod.` from a compiled wrapper)."""
    lat = _latents(tmp_path)
    path = _config(tmp_path, lat)
    # one phase, one bucket: each new shape is another compilation (tens of seconds on a CI core)
    steps = ["phases.0.steps=3", "phases.0.batch={1x32x32: 4}", "phases.1.steps=0", "train.checkpoint_at_end=false",
             "train.export_ema=true"]
    train_dit.train(train_dit.load_config(path, steps + [f"train.output_dir={tmp_path / 'eager'}"]))
    from torch._dynamo.utils import counters

    counters.clear()
    train_dit.train(train_dit.load_config(path, steps + [f"train.output_dir={tmp_path / 'compiled'}",
                                                         "model.compile=true"]))
    assert counters["stats"]["unique_graphs"] >= 1  # the blocks really ran compiled
    eager, compiled = _losses(tmp_path / "eager"), _losses(tmp_path / "compiled")
    assert sorted(eager) == sorted(compiled) == [1, 2, 3]
    for step in eager:
        assert compiled[step] == pytest.approx(eager[step], rel=1e-4, abs=1e-6), (step, eager, compiled)
    names = load_file(str(tmp_path / "compiled" / "final" / "model" / "diffusion_pytorch_model.safetensors"))
    assert names and not any("_orig_mod" in k for k in names)
    assert set(names) == set(load_file(str(tmp_path / "eager" / "final" / "model" /
                                           "diffusion_pytorch_model.safetensors")))


def test_demo_config_with_a_misspelt_key_or_a_wrong_type_stops_at_start_up(tmp_path, capsys):
    """dit_demo.yaml edited by hand: one message naming the key, exit status 2, nothing written."""
    text = DEMO.read_text()
    for old, new, message in [("grad_clip:", "grad_clp:", "unknown config key optim.grad_clp"),
                              ("steps: 40, batch", "steps: forty, batch", "phases[0].steps: expected an integer"),
                              ("dim: 64,", "dim: wide,", "model.config.dim: expected an integer, got 'wide'")]:
        assert old in text
        bad = tmp_path / "bad.yaml"
        bad.write_text(text.replace(old, new, 1))
        assert train_dit.main(["--config", str(bad), "--set", f"train.output_dir={tmp_path / 'run'}"]) == 2
        assert f"config error: {message}" in capsys.readouterr().err
    assert not (tmp_path / "run").exists()


def test_latents_that_were_never_prepared_are_one_line_at_start_up(tmp_path, capsys):
    """data.latents naming a folder without prepare.json: exit 2 and the reader's message, not a traceback."""
    code = train_dit.main(["--config", str(DEMO), "--set", f"data.latents={tmp_path / 'nope'}",
                           "--set", "train.device=cpu", "--set", f"train.output_dir={tmp_path / 'run'}"])
    err = capsys.readouterr().err
    assert code == 2 and "data error:" in err and "no prepare.json (run `python -m trainer.prepare` first)" in err
    assert "Traceback" not in err


def test_demo_config_follows_the_demo_stage_order():
    cfg = train_dit.load_config(str(DEMO))
    from curation.config import load_config as load_pipeline_config
    from trainer.prepare import load_config as load_prepare_config

    demo = load_pipeline_config(ROOT / "pipelines" / "configs" / "demo.yaml")
    assert [ph.stage for ph in cfg.phases] == [s.name for s in demo.stages]
    prep = load_prepare_config(str(ROOT / "trainer" / "configs" / "prepare_demo.yaml"))
    # the text width the demo's prepare pass writes
    assert train_dit.model_config(cfg.model).text_dim == 384 and prep.text_encoder.kind == "minilm"


@pytest.mark.slow
def test_validation_video_from_the_ema_weights(tmp_path):
    """sample: on → an mp4 per prompt through the VAE and text encoder that prepare.json names."""
    pytest.importorskip("trainer.models.text")  # the prepare pass's text encoders
    import av
    from safetensors.torch import save_file

    from trainer.models.vae.model import WanVAE, vae_config

    rows = [dict(sample_id=f"r{i}", stage="s1", bucket="1x32x32") for i in range(4)]
    lat = write_latents(str(tmp_path / "latents"), rows, text_dim=384, text_len=40)
    torch.manual_seed(0)
    vae = WanVAE(vae_config("tiny", z_dim=16))
    save_file({k: v.contiguous() for k, v in vae.state_dict().items()}, os.path.join(lat, "vae.safetensors"))
    meta = json.loads(pathlib.Path(lat, "prepare.json").read_text())
    meta.update(vae={"preset": "tiny", "overrides": {"z_dim": 16}, "weights": "vae.safetensors"},
                text_encoder={"kind": "minilm", "model": "minilm-l6-v2"}, text_len=64)
    pathlib.Path(lat, "prepare.json").write_text(json.dumps(meta))
    path = _config(tmp_path, lat)
    sets = ["model.config={text_dim: 384, text_len: 64}", "phases.0.steps=2", "phases.1.stages={s1: 1}",
            "phases.1.steps=1", "sample.enabled=true", "sample.prompts=[a red ball, a blue sky]",
            "sample.frames=5", "sample.height=32", "sample.width=32", "sample.steps=3"]
    train_dit.train(train_dit.load_config(path, sets))
    for i in range(2):
        with av.open(str(tmp_path / "run" / "samples" / "final" / f"sample-{i}.mp4")) as c:
            frames = [f.to_ndarray(format="rgb24") for f in c.decode(video=0)]
        assert len(frames) == 5 and frames[0].shape == (32, 32, 3)
