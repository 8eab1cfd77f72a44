"""VAE training on curated manifests: overfits demo clips on CPU, resumes exactly, validates its config."""

from __future__ import annotations

import dataclasses
import json
import os
import pathlib

import av
import numpy as np
import pandas as pd
import pytest
import torch
from safetensors.torch import load_file

from trainer import train_vae
from trainer.components.config import ConfigError
from trainer.data.clips import ClipDataset, read_manifest_rows, read_row_frames, read_stage_rows, select_rows
from trainer.models.vae.loss import psnr

ROOT = pathlib.Path(__file__).resolve().parents[1]
TINY = ROOT / "trainer" / "configs" / "vae_tiny.yaml"


def _write_video(path: str, frames: np.ndarray, fps: int = 8) -> None:
    with av.open(path, "w") as c:
        s = c.add_stream("libx264", rate=fps, options={"crf": "4"})
        s.width, s.height, s.pix_fmt = frames.shape[2], frames.shape[1], "yuv444p"
        for f in frames:
            for p in s.encode(av.VideoFrame.from_ndarray(np.ascontiguousarray(f), format="rgb24")):
                c.mux(p)
        for p in s.encode():
            c.mux(p)


def make_demo_clips(root: pathlib.Path, size: int = 32, frames: int = 5,
                    names=("astronaut", "coffee", "chelsea")) -> pd.DataFrame:
    """Short clips panning across scikit-image photos, plus their manifest rows (a stage of the curation)."""
    from skimage import data, transform

    root.mkdir(parents=True, exist_ok=True)
    rows = []
    for name in names:
        img = getattr(data, name)()
        img = transform.resize(img, (size * 3, int(size * 3 * img.shape[1] / img.shape[0])), anti_aliasing=True)
        img = (img * 255).astype(np.uint8)
        clip = np.stack([img[size // 4 : size // 4 + size, 2 * t : 2 * t + size] for t in range(frames)])
        path = str(root / f"{name}.mp4")
        _write_video(path, clip)
        rows.append(dict(sample_id=name, source_uri=path, media_type="video", start_frame=0, end_frame=frames,
                         fps=8.0, num_frames=frames, width=size, height=size, status="kept", weight=1.0))
    return pd.DataFrame(rows)


def _write_stage(out: pathlib.Path, df: pd.DataFrame, stage: str = "stage1") -> pathlib.Path:
    d = out / "stages" / stage
    d.mkdir(parents=True, exist_ok=True)
    df.to_parquet(d / "part-00000.parquet")
    return out / "stages"


def _decoded(row, n: int) -> torch.Tensor:
    pix = read_row_frames(row, list(range(n)), int(row["height"]), int(row["width"]))
    return torch.from_numpy(pix).permute(3, 0, 1, 2).float()[None] / 127.5 - 1


def test_tiny_config_overfits_demo_clips(tmp_path):
    """The tiny config, images then video, overfits three demo clips on CPU: reconstruction PSNR > 25 dB."""
    df = make_demo_clips(tmp_path / "media")
    stages = _write_stage(tmp_path / "out", df)
    cfg = train_vae.load_config(str(TINY))
    cfg.train.device = "cpu"
    rows = read_stage_rows(str(stages))
    last = train_vae.train(cfg, rows, str(tmp_path / "run"), resume=False)
    total = sum(p.steps for p in cfg.phases)
    assert last["step"] == total and last["phase"] == "video"

    model = train_vae.build_model(cfg).eval()
    model.load_state_dict(load_file(str(tmp_path / "run" / "vae.safetensors")), strict=True)
    clips = torch.cat([_decoded(r, 5) for _, r in df.iterrows()])
    recon = model.reconstruct(clips)  # chunked inference with the posterior mean
    per_clip = [psnr(recon[i : i + 1], clips[i : i + 1]).item() for i in range(len(clips))]
    overall = psnr(recon, clips).item()
    print(f"PSNR overall {overall:.2f} dB, per clip {[round(v, 2) for v in per_clip]}")
    assert overall > 25.0, per_clip
    # Images are 1-frame videos: the first frames alone reconstruct well too.
    assert psnr(model.reconstruct(clips[:, :, :1]), clips[:, :, :1]).item() > 20.0

    run = tmp_path / "run"
    assert any(p.name.startswith("events.out.tfevents") for p in (run / "tb").iterdir())
    metrics = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [m["phase"] for m in metrics][0] == "images" and metrics[-1]["phase"] == "video"
    assert (run / "checkpoints" / "latest").read_text() == f"step_{total:08d}"


def _small_cfg(tmp_path, **train_overrides):
    cfg = train_vae.load_config(str(TINY))
    cfg.train.device = "cpu"
    cfg.train.log_every = 1
    cfg.train.checkpoint_every = 2
    cfg.phases = [train_vae.PhaseConfig(name="images", steps=2, frames=1, height=16, width=16, batch_size=2),
                  train_vae.PhaseConfig(name="video", steps=2, frames=5, height=16, width=16, batch_size=1,
                                        media="video")]
    for k, v in train_overrides.items():
        setattr(cfg.train, k, v)
    return cfg


def test_resume_is_exact(tmp_path):
    """4 steps straight equal 2 steps, a fresh process state, and 2 resumed steps (weights and optimizer)."""
    df = make_demo_clips(tmp_path / "media", size=16, frames=9, names=("coffee", "chelsea"))
    rows = read_stage_rows(str(_write_stage(tmp_path / "out", df)))
    cfg = _small_cfg(tmp_path)
    train_vae.train(cfg, rows, str(tmp_path / "straight"), resume=False)

    half = _small_cfg(tmp_path)
    half.phases = half.phases[:1]  # stop after the image phase's 2 steps...
    train_vae.train(half, rows, str(tmp_path / "resumed"), resume=False)
    assert (tmp_path / "resumed" / "checkpoints" / "step_00000002" / "optim").is_dir()
    train_vae.train(cfg, rows, str(tmp_path / "resumed"), resume=True)  # ...then continue with the full plan

    a = load_file(str(tmp_path / "straight" / "vae.safetensors"))
    b = load_file(str(tmp_path / "resumed" / "vae.safetensors"))
    assert a.keys() == b.keys()
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=0, atol=0, msg=k)


def test_bf16_with_discriminator_via_cli(tmp_path):
    """The command line on --manifest (kept rows only), bf16 autocast, patch discriminator on from step 0."""
    df = make_demo_clips(tmp_path / "media", size=32, frames=5, names=("coffee",))
    rejected = df.assign(sample_id="x", status="rejected", source_uri="/nonexistent.mp4")
    samples = tmp_path / "out" / "samples"
    samples.mkdir(parents=True)
    pd.concat([df, rejected]).to_parquet(samples / "part-00000.parquet")
    cfg_path = tmp_path / "cfg.yaml"
    cfg_path.write_text("""
model: {preset: tiny}
loss: {disc_weight: 0.1, disc_start: 0, disc_channels: 8}
train: {precision: bf16, device: cpu, log_every: 1, checkpoint_every: 2}
phases:
  - {name: images, steps: 1, frames: 1, height: 32, width: 32, batch_size: 2}
  - {name: video, steps: 1, frames: 5, height: 32, width: 32, media: video}
""")
    rc = train_vae.main(["--config", str(cfg_path), "--manifest", str(samples), "--output", str(tmp_path / "run")])
    assert rc == 0
    metrics = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert len(metrics) == 2 and all(np.isfinite(m["loss"]) and np.isfinite(m["d_loss"]) for m in metrics)
    ckpt = tmp_path / "run" / "checkpoints" / "step_00000002"
    assert (ckpt / "discriminator.safetensors").exists() and (ckpt / "model.safetensors").exists()


@pytest.mark.parametrize("text, key", [
    ("phases: [{name: a, steps: 1}]\nmodle: {}", "modle"),
    ("phases: [{name: a, steps: 1}]\noptim: {lr: fast}", "optim.lr"),
    ("phases: [{name: a, steps: 1, frames: 4}]", "phases[0].frames"),
    ("phases: [{name: a, steps: 1, height: 20}]", "phases[0]"),
    ("phases: [{name: a, steps: 1}]\ntrain: {precision: fp8}", "train.precision"),
    ("phases: [{steps: 1}]", "phases[0].name"),
    ("phases: [{name: a, steps: 1}]\nmodel: {preset: tiny, overrides: {z_dimm: 3}}", "unknown config key model.overrides.z_dimm"),
    ("phases: [{name: a, steps: 1}]\nmodel: {preset: tiny, overrides: {z_dim: four}}", "model.overrides.z_dim: expected an integer"),
    ("phases: [{name: a, steps: 1}]\nmodel: {preset: huge}", "model.preset: unknown VAE preset 'huge'"),
])
def test_config_errors_name_the_key(tmp_path, text, key):
    """A bad config fails at load with one message naming the offending key."""
    p = tmp_path / "bad.yaml"
    p.write_text(text)
    with pytest.raises(ConfigError, match=key.replace("[", r"\[").replace("]", r"\]")):
        train_vae.load_config(str(p))


def test_missing_or_empty_data_folders_are_one_line(tmp_path, capsys):
    """--stages / --manifest naming no folder, or a folder without parquet: exit 2 with 'data error:', no traceback
    (a missing --stages folder raised FileNotFoundError from os.listdir)."""
    cfg = str(ROOT / "trainer" / "configs" / "vae_tiny.yaml")
    (tmp_path / "empty").mkdir()
    for flag, path, message in [("--stages", tmp_path / "nope", "stages folder not found"),
                                ("--manifest", tmp_path / "nope", "manifest folder not found"),
                                ("--manifest", tmp_path / "empty", "no parquet files under")]:
        assert train_vae.main(["--config", cfg, flag, str(path), "--output", str(tmp_path / "run")]) == 2
        err = capsys.readouterr().err
        assert f"data error: {message}" in err and "Traceback" not in err
    assert not (tmp_path / "run").exists()


def test_shipped_configs_load():
    """The configs under trainer/configs validate."""
    for name in ("vae_tiny.yaml", "vae_wan21_finetune.yaml"):
        cfg = train_vae.load_config(str(ROOT / "trainer" / "configs" / name))
        assert cfg.phases[0].frames == 1  # images first


def test_data_windows_decoders_and_images(tmp_path):
    """fps resampling strides the window; images are 1-frame samples; rows are filtered."""
    df = make_demo_clips(tmp_path / "media", size=16, frames=9, names=("coffee",))
    from PIL import Image

    img_path = tmp_path / "media" / "still.png"
    Image.fromarray(np.full((24, 40, 3), 200, np.uint8)).save(img_path)
    rows = pd.concat([df.assign(fps=16.0), pd.DataFrame([dict(
        source_uri=str(img_path), media_type="image", start_frame=0, end_frame=1, fps=None, width=40, height=24,
        status="kept", weight=1.0)])], ignore_index=True)
    # At 8 fps from a 16 fps source the stride is 2: a 5-frame window spans 9 source frames, which fits.
    video_rows = select_rows(rows, frames=5, media="video", target_fps=8.0)
    assert len(video_rows) == 1
    assert select_rows(rows, frames=5, media="video", target_fps=4.0).empty  # stride 4 needs 17 frames
    ds = ClipDataset(video_rows, 5, 16, 16, target_fps=8.0)
    assert ds.window(video_rows.iloc[0], np.random.default_rng(0)) == [0, 2, 4, 6, 8]
    img_rows = select_rows(rows, frames=1, media="image", target_fps=None)
    x = ClipDataset(img_rows, 1, 16, 16)[0]
    assert x.shape == (3, 1, 16, 16) and torch.allclose(x, torch.full_like(x, 200 / 127.5 - 1))
    assert len(select_rows(rows, frames=1, media="any", target_fps=None)) == 2
    manifest = tmp_path / "samples"
    manifest.mkdir()
    pd.concat([rows.assign(status="kept"), rows.assign(status="failed")]).to_parquet(manifest / "part-0.parquet")
    assert len(read_manifest_rows(str(manifest))) == 2
    os.remove(img_path)


@pytest.mark.parametrize("name", ["vfr.mp4", "rotated_90.mp4"])
@pytest.mark.parametrize("isolation", ["inline", "helper"])
def test_training_clips_are_the_frames_curation_scored(tmp_path, monkeypatch, name, isolation):
    """The trainer decodes through curation's decoder: on a variable-frame-rate and a rotated clip it gets the
    frames the graph's frame views hold (same indices, upright), not frames found by timestamp."""
    from curation.testing import hostile
    from curation.config import FramesConfig
    from curation.ingest import row_views, source_to_rows
    from curation.config import load_config

    if isolation == "inline":
        monkeypatch.setenv("CURATION_DECODER_ISOLATION", "inline")
    else:
        monkeypatch.delenv("CURATION_DECODER_ISOLATION", raising=False)
    w, h = 192, 128
    path = tmp_path / name
    if name == "vfr.mp4":
        from fractions import Fraction

        deltas = [1, 1, 4, 2]
        pts = np.concatenate([[0], np.cumsum([deltas[i % 4] for i in range(47)])]).astype(int).tolist()
        hostile.write_video(path, (hostile.index_frame(i, w, h) for i in range(48)), w, h, pts=pts,
                            time_base=Fraction(1, 48))
    else:
        upright = [np.ascontiguousarray(hostile.index_frame(i, h, w)) for i in range(48)]
        hostile.write_video(path, [np.ascontiguousarray(np.rot90(f, k=1)) for f in upright], w, h, rotation=-90)
    cfg = load_config(str(ROOT / "pipelines" / "configs" / "demo.yaml"))
    row = source_to_rows(str(path), cfg)[0]
    if name == "rotated_90.mp4":
        assert (row["width"], row["height"], row["rotation"]) == (128, 192, 90)
    window = list(range(row["start_frame"] + 3, row["start_frame"] + 3 + 9 * 4, 4))
    clip = read_row_frames(row, window, 96, 64)
    assert [hostile.read_index(f, block=16 * f.shape[1] / row["width"]) for f in clip] == window
    assert clip.shape[1] > clip.shape[2] if name == "rotated_90.mp4" else clip.shape[1] < clip.shape[2]
    frames_cfg = dataclasses.asdict(FramesConfig(num_frames=48, short_side=min(clip.shape[1:3])))
    _, views = row_views(row, frames_cfg, cfg.limits.max_pixels, 60.0)
    shared = [(i, int(idx)) for i, idx in enumerate(views["frame_indices"]) if int(idx) in window]
    assert len(shared) == len(window)
    for i, idx in shared:
        np.testing.assert_array_equal(views["frames"][i], clip[window.index(idx)])


def test_a_clip_in_two_stages_is_one_sample_per_phase(tmp_path):
    """read_stage_rows pools stage folders; a clip that two stages hold must not be drawn twice as often."""
    df = make_demo_clips(tmp_path / "media", size=16, frames=5, names=("coffee", "chelsea"))
    stages = tmp_path / "out" / "stages"
    _write_stage(tmp_path / "out", df, "s1")
    _write_stage(tmp_path / "out", df.iloc[:1], "s2")  # coffee is in both stages
    rows = read_stage_rows(str(stages))
    assert len(rows) == 3
    sel = select_rows(rows, frames=1, media="any", target_fps=None)
    assert sorted(sel["sample_id"]) == ["chelsea", "coffee"]
    assert sel.set_index("sample_id").loc["coffee", "stage"] == "s1"
    # a phase can name its stages (PhaseConfig.stages) and then draws only from those
    cfg = train_vae.VAETrainConfig(phases=[train_vae.PhaseConfig(name="p", steps=1, stages=["s2"])])
    assert cfg.phases[0].stages == ["s2"]
