"""Train or fine-tune the Wan causal video VAE on curated manifests.

    python -m trainer.train_vae --config trainer/configs/vae_tiny.yaml --stages OUT/stages --output runs/vae
    python -m trainer.train_vae --config trainer/configs/vae_wan21_finetune.yaml --manifest OUT/samples

Phases run in the config's order; the Wan recipe puts images (1-frame videos) first, then video. Each step: the
full-sequence causal forward (the same function the chunked inference computes), L1 + KL, optionally a patch
discriminator; bf16 autocast, AdamW. Checkpoints (safetensors + DCP) and resume are exact: sample i of a phase is a
pure function of (seed, i).
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import json
import math
import os
import sys
import time

import torch

from trainer.components import checkpoint as ckpt
from trainer.components.config import ConfigError, load_yaml, to_dict
from trainer.data.clips import ClipDataset, IndexRange, read_manifest_rows, read_stage_rows, select_rows
from trainer.models.vae.model import WanVAE, load_state_dict_file, read_vae_config, vae_config
from trainer.models.vae.loss import PatchDiscriminator, generator_adv_loss, hinge_d_loss, kl_loss, psnr


@dataclasses.dataclass
class ModelConfig:
    """Which VAE to build and where its starting weights come from."""

    preset: str = "wan2.1"
    overrides: dict = dataclasses.field(default_factory=dict)
    init: str | None = None  # Wan2.1_VAE.pth, or a .safetensors written by this trainer
    grad_checkpointing: bool = False


@dataclasses.dataclass
class DataConfig:
    """How clips are drawn from the manifests."""

    stages: list[str] | None = None  # stage folders under --stages, in order; None: all
    fps: float | None = None  # resample to this frame rate (stride over source frames); None: native
    num_workers: int = 0
    random_crop: bool = True


@dataclasses.dataclass
class LossConfig:
    """Loss weights."""

    l1_weight: float = 1.0
    kl_weight: float = 1e-6
    disc_weight: float = 0.0  # 0 turns the discriminator off
    disc_start: int = 0  # global step at which the adversarial term starts
    disc_lr: float = 1e-4
    disc_channels: int = 64


@dataclasses.dataclass
class OptimConfig:
    """AdamW and the learning-rate schedule (linear warmup, then constant or cosine decay to min_lr_ratio*lr)."""

    lr: float = 1e-4
    betas: list[float] = dataclasses.field(default_factory=lambda: [0.9, 0.99])
    weight_decay: float = 0.0
    grad_clip: float = 1.0
    warmup_steps: int = 0
    decay: str = "constant"  # constant | cosine (over all phases)
    min_lr_ratio: float = 0.0


@dataclasses.dataclass
class TrainConfig:
    """Run settings."""

    precision: str = "bf16"  # bf16 (autocast) or fp32
    device: str = "auto"
    seed: int = 0
    log_every: int = 10
    checkpoint_every: int = 500
    keep_checkpoints: int = 2
    output_dir: str = "runs/vae"


@dataclasses.dataclass
class PhaseConfig:
    """One curriculum phase: clip shape, batch and length."""

    name: str
    steps: int
    frames: int = 1
    height: int = 256
    width: int = 256
    batch_size: int = 1
    media: str = "any"  # image | video | any
    stages: list[str] | None = None  # draw only from these stage folders (None: every stage read)


@dataclasses.dataclass
class VAETrainConfig:
    """The whole training config (YAML)."""

    phases: list[PhaseConfig]
    model: ModelConfig = dataclasses.field(default_factory=ModelConfig)
    data: DataConfig = dataclasses.field(default_factory=DataConfig)
    loss: LossConfig = dataclasses.field(default_factory=LossConfig)
    optim: OptimConfig = dataclasses.field(default_factory=OptimConfig)
    train: TrainConfig = dataclasses.field(default_factory=TrainConfig)


def load_config(path: str) -> VAETrainConfig:
    """Read and validate a training config; errors name the bad key."""
    cfg = load_yaml(path, VAETrainConfig)
    validate(cfg)
    return cfg


def validate(cfg: VAETrainConfig) -> None:
    """Cross-field checks that types alone cannot express."""
    if not cfg.phases:
        raise ConfigError("phases: at least one phase is needed")
    vcfg = read_vae_config(cfg.model.preset, cfg.model.overrides, "model")  # errors name the key
    tf, sf = vcfg.temporal_factor, vcfg.spatial_factor
    for i, ph in enumerate(cfg.phases):
        key = f"phases[{i}]"
        if ph.steps < 0 or ph.batch_size < 1:
            raise ConfigError(f"{key}: steps must be >= 0 and batch_size >= 1")
        if ph.frames < 1 or (ph.frames - 1) % tf:
            raise ConfigError(f"{key}.frames: must be 1 + {tf}k, got {ph.frames}")
        if ph.height % sf or ph.width % sf:
            raise ConfigError(f"{key}: height and width must be multiples of {sf}")
        if ph.media not in ("image", "video", "any"):
            raise ConfigError(f"{key}.media: must be image, video or any, got {ph.media!r}")
        if ph.media == "image" and ph.frames != 1:
            raise ConfigError(f"{key}: an image phase needs frames: 1")
    if cfg.train.precision not in ("bf16", "fp32"):
        raise ConfigError(f"train.precision: must be bf16 or fp32, got {cfg.train.precision!r}")
    if len(cfg.optim.betas) != 2:
        raise ConfigError("optim.betas: needs two numbers")
    if cfg.optim.decay not in ("constant", "cosine"):
        raise ConfigError(f"optim.decay: must be constant or cosine, got {cfg.optim.decay!r}")


def learning_rate(cfg: OptimConfig, step: int, total: int) -> float:
    """Learning rate at a global step: linear warmup, then constant or cosine decay."""
    if cfg.warmup_steps and step < cfg.warmup_steps:
        return cfg.lr * (step + 1) / cfg.warmup_steps
    if cfg.decay == "cosine" and total > cfg.warmup_steps:
        frac = (step - cfg.warmup_steps) / max(1, total - cfg.warmup_steps)
        return cfg.lr * (cfg.min_lr_ratio + (1 - cfg.min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * frac)))
    return cfg.lr


def _phase_at(cfg: VAETrainConfig, step: int) -> tuple[int, int]:
    """(phase index, step within the phase) for a global step."""
    for i, ph in enumerate(cfg.phases):
        if step < ph.steps:
            return i, step
        step -= ph.steps
    raise IndexError("step past the last phase")


def _autocast(device: torch.device, precision: str):
    if precision == "bf16":
        return torch.autocast(device.type, dtype=torch.bfloat16)
    return contextlib.nullcontext()


class _Logger:
    """TensorBoard scalars plus a metrics.jsonl file (and a short stdout line)."""

    def __init__(self, out_dir: str):
        from torch.utils.tensorboard import SummaryWriter

        self.tb = SummaryWriter(os.path.join(out_dir, "tb"))
        self.jsonl = open(os.path.join(out_dir, "metrics.jsonl"), "a")

    def log(self, step: int, metrics: dict) -> None:
        """Record one step's metrics."""
        for k, v in metrics.items():
            if isinstance(v, (int, float)):
                self.tb.add_scalar(k, v, step)
        self.jsonl.write(json.dumps(dict(metrics, step=step)) + "\n")
        self.jsonl.flush()
        shown = " ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in metrics.items())
        print(f"step {step} {shown}", flush=True)

    def close(self) -> None:
        """Flush and close both sinks."""
        self.tb.close()
        self.jsonl.close()


def build_model(cfg: VAETrainConfig) -> WanVAE:
    """The VAE of the config, with its initial weights loaded strictly if `model.init` is set."""
    model = WanVAE(vae_config(cfg.model.preset, **cfg.model.overrides))
    if cfg.model.init:
        model.load_state_dict(load_state_dict_file(cfg.model.init), strict=True)
    model.encoder.checkpointing = model.decoder.checkpointing = cfg.model.grad_checkpointing
    return model


def train(cfg: VAETrainConfig, rows, output_dir: str | None = None, resume: bool = True) -> dict:
    """Run (or resume) training on manifest `rows`; returns the last logged metrics."""
    out_dir = output_dir or cfg.train.output_dir
    os.makedirs(out_dir, exist_ok=True)
    device = torch.device(("cuda" if torch.cuda.is_available() else "cpu") if cfg.train.device == "auto"
                          else cfg.train.device)
    torch.manual_seed(cfg.train.seed)
    model = build_model(cfg).to(device).train()
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.optim.lr, betas=tuple(cfg.optim.betas),
                            weight_decay=cfg.optim.weight_decay)
    modules = {"model": model}
    optimizers = {"model": (model, opt)}
    disc = opt_d = None
    if cfg.loss.disc_weight > 0:
        disc = PatchDiscriminator(cfg.loss.disc_channels).to(device).train()
        opt_d = torch.optim.AdamW(disc.parameters(), lr=cfg.loss.disc_lr, betas=(0.5, 0.9))
        modules["discriminator"] = disc
        optimizers["discriminator"] = (disc, opt_d)

    ckpt_root = os.path.join(out_dir, "checkpoints")
    step = 0
    latest = ckpt.latest_checkpoint(ckpt_root) if resume else None
    if latest:
        step = ckpt.load_checkpoint(latest, modules, optimizers)["step"]
        print(f"resumed from {latest} at step {step}", flush=True)
    with open(os.path.join(out_dir, "config.json"), "w") as fh:
        json.dump(to_dict(cfg), fh, indent=1)

    total = sum(ph.steps for ph in cfg.phases)
    logger = _Logger(out_dir)
    last: dict = {"step": step}
    loader_iter, loader_phase = None, None
    t_log, n_log = time.perf_counter(), 0
    try:
        while step < total:
            pi, local = _phase_at(cfg, step)
            ph = cfg.phases[pi]
            if loader_phase != pi:
                pool = rows if ph.stages is None else rows[rows["stage"].isin(ph.stages)]
                if pool.empty:
                    raise ValueError(f"phase {ph.name}: no rows in stages {ph.stages}")
                ds = ClipDataset(select_rows(pool, ph.frames, ph.media, cfg.data.fps), ph.frames, ph.height,
                                 ph.width, seed=cfg.train.seed * 1000 + pi, target_fps=cfg.data.fps,
                                 random_crop=cfg.data.random_crop)
                loader = torch.utils.data.DataLoader(
                    ds, batch_size=ph.batch_size, sampler=IndexRange(local * ph.batch_size, ph.steps * ph.batch_size),
                    num_workers=cfg.data.num_workers, drop_last=True,
                    persistent_workers=False, pin_memory=device.type == "cuda")
                loader_iter, loader_phase = iter(loader), pi
            x = next(loader_iter).to(device, non_blocking=True)
            # Posterior noise from a per-step seed: a resumed run draws exactly what an uninterrupted one would.
            torch.manual_seed(cfg.train.seed * 1_000_003 + step)

            lr = learning_rate(cfg.optim, step, total)
            for g in opt.param_groups:
                g["lr"] = lr
            adv_on = disc is not None and step >= cfg.loss.disc_start
            with _autocast(device, cfg.train.precision):
                recon, mu, logvar = model(x)
                rec = (recon.float() - x).abs().mean()
                kl = kl_loss(mu.float(), logvar.float())
                loss = cfg.loss.l1_weight * rec + cfg.loss.kl_weight * kl
                if adv_on:
                    for p in disc.parameters():
                        p.requires_grad_(False)
                    g_adv = generator_adv_loss(disc(recon).float())
                    loss = loss + cfg.loss.disc_weight * g_adv
            opt.zero_grad(set_to_none=True)
            loss.backward()
            gnorm = torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.optim.grad_clip or math.inf)
            opt.step()
            metrics = {"phase": ph.name, "loss": loss.item(), "l1": rec.item(), "kl": kl.item(),
                       "psnr": psnr(recon.detach(), x).item(), "grad_norm": float(gnorm), "lr": lr}
            if adv_on:
                for p in disc.parameters():
                    p.requires_grad_(True)
                with _autocast(device, cfg.train.precision):
                    d_loss = hinge_d_loss(disc(x).float(), disc(recon.detach()).float())
                opt_d.zero_grad(set_to_none=True)
                d_loss.backward()
                opt_d.step()
                metrics.update(g_adv=g_adv.item(), d_loss=d_loss.item())
            step += 1
            n_log += 1
            if step % cfg.train.log_every == 0 or step == total:
                dt = time.perf_counter() - t_log
                metrics.update(steps_per_s=n_log / dt, frames_per_s=n_log * ph.batch_size * ph.frames / dt)
                logger.log(step, metrics)
                t_log, n_log = time.perf_counter(), 0
            last = dict(metrics, step=step)
            if step % cfg.train.checkpoint_every == 0 or step == total:
                ckpt.save_checkpoint(ckpt_root, step, modules, optimizers, {"phase": ph.name},
                                     keep=cfg.train.keep_checkpoints)
    finally:
        logger.close()
    if step == total and total > 0:
        from safetensors.torch import save_file

        save_file({k: v.detach().contiguous().cpu() for k, v in model.state_dict().items()},
                  os.path.join(out_dir, "vae.safetensors"))
    return last


def main(argv=None) -> int:
    """Command-line entry point."""
    ap = argparse.ArgumentParser(description="Train the Wan causal video VAE on curated manifests.")
    ap.add_argument("--config", required=True, help="YAML training config")
    src = ap.add_mutually_exclusive_group(required=True)
    src.add_argument("--stages", help="OUT/stages: read stage folders (config data.stages picks which)")
    src.add_argument("--manifest", help="OUT/samples: every kept row, uniformly")
    ap.add_argument("--output", help="run folder (default: train.output_dir of the config)")
    ap.add_argument("--no-resume", action="store_true", help="start over even if checkpoints exist")
    args = ap.parse_args(argv)
    try:
        cfg = load_config(args.config)
    except ConfigError as e:
        print(f"config error: {e}", file=sys.stderr)
        return 2
    try:
        rows = read_stage_rows(args.stages, cfg.data.stages) if args.stages else read_manifest_rows(args.manifest)
    except (OSError, ValueError) as e:  # no such folder, no parquet in it, a stage without the needed columns
        print(f"data error: {e}", file=sys.stderr)
        return 2
    print(f"{len(rows)} manifest rows", flush=True)
    last = train(cfg, rows, args.output, resume=not args.no_resume)
    print(json.dumps(last), flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
