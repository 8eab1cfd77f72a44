"""Train the Wan DiT on prepared latents, phase by phase in curriculum order, on one or many processes.

    python -m trainer.train_dit --config trainer/configs/dit_demo.yaml [--set train.max_steps=20 ...]
    torchrun --nproc_per_node 8 -m trainer.train_dit --config C

Each step: the curriculum sampler names the global batch (one stage, one bucket, rows by `weight`); each
data-parallel rank loads its slice from the latent shards, draws its samples' σ and noise from generators seeded by
(seed, step, sample position), and accumulates the flow-matching loss over micro-batches; then gradient clipping,
AdamW, EMA. Everything a step uses is a function of the step number and the checkpointed state, so a resumed run
repeats an uninterrupted one exactly, and one process computes what N processes do (up to summation order).
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import hashlib
import json
import math
import os
import sys
import time

import numpy as np
import torch

from trainer.components import checkpoint as ckpt
from trainer.components.config import ConfigError, load_yaml, to_dict
from trainer.components.ema import EMA
from trainer.components.lr import lr_at
from trainer.components.metrics import MetricsLog, Progress, dit_train_flops, matmul_peak_flops
from trainer.data.sampler import ANY_BUCKET, CurriculumSampler, PhasePlan, SamplerError
from trainer.distributed.mesh import ParallelConfig, build_mesh, dp_rank_world, mesh_sizes
from trainer.flow import FlowConfig, flow_loss, noisy_input, sample_sigmas, timesteps
from trainer.models.dit.model import PRESETS, DiTConfig, WanDiT, config_from_dict


@dataclasses.dataclass
class ModelConfig:
    """Which DiT: a preset and/or Wan2.1 keywords, optionally started from a checkpoint."""

    preset: str | None = "tiny"  # tiny | 1.3B | 14B | null (then `config` holds every keyword)
    config: dict = dataclasses.field(default_factory=dict)  # Wan2.1 keywords over the preset (dim, text_dim, ...)
    init: str | None = None  # released or exported checkpoint (folder, or .safetensors), loaded strictly
    checkpointing: str = "none"  # activation checkpointing: none | block
    compile: bool = False  # torch.compile each block (bench/dit.py on an H200: 1.44-1.61x with cuDNN attention)


@dataclasses.dataclass
class DataConfig:
    """Where the prepared latents are."""

    latents: str = "out/demo_latents"


@dataclasses.dataclass
class OptimConfig:
    """AdamW and the default schedule of every phase (linear warm-up, then constant or cosine)."""

    lr: float = 1e-4
    betas: list[float] = dataclasses.field(default_factory=lambda: [0.9, 0.999])
    eps: float = 1e-8
    weight_decay: float = 0.0
    grad_clip: float = 1.0  # 0: no clipping (the norm is still logged)
    warmup_steps: int = 0
    decay: str = "constant"  # constant | cosine (over each phase)
    min_lr_ratio: float = 0.0
    fused: bool | None = None  # None: fused AdamW on GPU, the foreach one on CPU


@dataclasses.dataclass
class EMAConfig:
    """EMA of the weights (fp32), exported for sampling."""

    decay: float = 0.999
    warmup: bool = True  # decay min(decay, (1+n)/(10+n)) after n updates


@dataclasses.dataclass
class ValConfig:
    """Validation loss on held-out latents at fixed σ (and fixed noise)."""

    every: int = 0  # steps; 0 turns it off
    num_samples: int = 0  # rows held out of training (chosen by a hash of sample_id)
    sigmas: list[float] = dataclasses.field(default_factory=lambda: [0.25, 0.5, 0.75])
    batch_size: int = 4
    seed: int = 1234


@dataclasses.dataclass
class SampleConfig:
    """Validation videos from the EMA weights (trainer.sample: diffusers scheduler, CFG, VAE decode, mp4)."""

    enabled: bool = False
    every: int = 0  # steps; 0: only at the end of the run
    prompts: list[str] = dataclasses.field(default_factory=list)
    negative_prompt: str | None = None  # None: trainer.sample's default
    frames: int = 17
    height: int = 64
    width: int = 64
    steps: int = 20
    shift: float = 5.0
    guidance: float = 5.0
    seed: int = 0
    fps: int = 8
    # The VAE and text encoder default to the ones the latents were made with (LATENTS/prepare.json).
    vae: str | None = None  # weights file
    vae_preset: str | None = None
    vae_overrides: dict | None = None
    text_encoder: str | None = None  # registry key or folder


@dataclasses.dataclass
class TrainConfig:
    """Run settings."""

    output_dir: str = "runs/dit"
    seed: int = 0
    device: str = "auto"  # auto | cpu | cuda
    precision: str = "bf16"  # bf16 (autocast + FSDP bf16 params, fp32 master weights and reductions) | fp32
    max_steps: int | None = None  # stop the whole run after this many steps (smoke runs)
    log_every: int = 1
    checkpoint_every: int = 100  # also at the end of every phase
    keep_checkpoints: int = 2
    export_ema: bool = True  # EMA weights in the released layout inside every checkpoint
    checkpoint_at_end: bool = True  # also checkpoint at the last step of the run and of every phase
    export_final: bool = True  # final/ema and final/model in the released layout when the run ends
    max_skipped_steps: int = 0  # steps with a non-finite loss skipped before the run stops
    resume: bool = True
    tensorboard: bool = True
    peak_tflops: float | None = None  # MFU ceiling; None: measure a bf16 matmul at start-up (GPU only)
    probe_samples: int = 4  # per phase: loss at fixed σ on this many of its rows, at its start and end
    check_loss_falls: bool = False  # fail the run when a phase's probe loss did not fall


@dataclasses.dataclass
class PhaseConfig:
    """One curriculum phase."""

    name: str
    steps: int
    stage: str | None = None
    stages: dict[str, float] | None = None  # several stages with sampling ratios (instead of `stage`)
    batch: dict[str, int] = dataclasses.field(default_factory=lambda: {ANY_BUCKET: 1})  # bucket -> global batch
    micro_batch: int | None = None  # samples per forward on one rank (gradient accumulation); None: all at once
    lr: float | None = None  # peak LR of the phase (optim.lr when null)
    warmup_steps: int | None = None
    shift: float | None = None  # σ shift (flow.shift when null)


@dataclasses.dataclass
class DiTTrainConfig:
    """The whole DiT training config (YAML)."""

    phases: list[PhaseConfig]
    model: ModelConfig = dataclasses.field(default_factory=ModelConfig)
    data: DataConfig = dataclasses.field(default_factory=DataConfig)
    flow: FlowConfig = dataclasses.field(default_factory=FlowConfig)
    optim: OptimConfig = dataclasses.field(default_factory=OptimConfig)
    ema: EMAConfig = dataclasses.field(default_factory=EMAConfig)
    val: ValConfig = dataclasses.field(default_factory=ValConfig)
    sample: SampleConfig = dataclasses.field(default_factory=SampleConfig)
    train: TrainConfig = dataclasses.field(default_factory=TrainConfig)
    parallel: ParallelConfig = dataclasses.field(default_factory=ParallelConfig)


# ----------------------------------------------------------------------------------------------------------------
# Config


def load_config(path: str, overrides: list[str] = ()) -> DiTTrainConfig:
    """Read a YAML config, apply `--set` overrides, validate; every error is one ConfigError naming the key."""
    cfg = load_yaml(path, DiTTrainConfig, overrides)
    validate(cfg)
    return cfg


def model_config(cfg: ModelConfig) -> DiTConfig:
    """The DiTConfig of the model section (preset, then keyword overrides)."""
    base = {}
    if cfg.preset is not None:
        if cfg.preset not in PRESETS:
            raise ConfigError(f"model.preset: {cfg.preset!r} is not one of {sorted(PRESETS)}")
        base = dataclasses.asdict(PRESETS[cfg.preset])
    # The typed reader names the key (model.config.dim: expected an integer) and prefixes DiTConfig's own checks.
    return config_from_dict({**base, **cfg.config}, "model.config")


def validate(cfg: DiTTrainConfig) -> None:
    """Cross-field checks that types alone cannot express."""
    model_config(cfg.model)
    if cfg.model.checkpointing not in ("none", "block"):
        raise ConfigError(f"model.checkpointing: must be none or block, got {cfg.model.checkpointing!r}")
    if not cfg.phases:
        raise ConfigError("phases: at least one phase is needed")
    names = set()
    for i, ph in enumerate(cfg.phases):
        key = f"phases[{i}]"
        if ph.name in names:
            raise ConfigError(f"{key}.name: {ph.name!r} is used twice")
        names.add(ph.name)
        if ph.steps < 0:
            raise ConfigError(f"{key}.steps: must be >= 0")
        if (ph.stage is None) == (ph.stages is None):
            raise ConfigError(f"{key}: give either stage or stages (with ratios)")
        for s, r in (ph.stages or {}).items():
            if isinstance(r, bool) or not isinstance(r, (int, float)) or not r > 0:
                raise ConfigError(f"{key}.stages.{s}: ratio must be a number > 0, got {r!r}")
        if not ph.batch:
            raise ConfigError(f"{key}.batch: name at least one bucket (or '*') with its batch size")
        for b, n in ph.batch.items():
            if isinstance(n, bool) or not isinstance(n, int) or n < 1:
                raise ConfigError(f"{key}.batch.{b}: must be an integer >= 1, got {n!r}")
            if b != ANY_BUCKET and not _is_bucket(b):
                raise ConfigError(f"{key}.batch: {b!r} is not a bucket (FRAMESxHEIGHTxWIDTH, e.g. 17x256x448) or '*'")
        if ph.micro_batch is not None and ph.micro_batch < 1:
            raise ConfigError(f"{key}.micro_batch: must be >= 1")
        if ph.lr is not None and not ph.lr > 0:
            raise ConfigError(f"{key}.lr: must be > 0")
        if ph.shift is not None and not ph.shift > 0:
            raise ConfigError(f"{key}.shift: must be > 0")
    t = cfg.train
    if t.precision not in ("bf16", "fp32"):
        raise ConfigError(f"train.precision: must be bf16 or fp32, got {t.precision!r}")
    if t.device not in ("auto", "cpu", "cuda"):
        raise ConfigError(f"train.device: must be auto, cpu or cuda, got {t.device!r}")
    if t.max_steps is not None and t.max_steps < 0:
        raise ConfigError("train.max_steps: must be >= 0")
    if t.log_every < 1 or t.checkpoint_every < 1:
        raise ConfigError("train.log_every and train.checkpoint_every: must be >= 1")
    if t.max_skipped_steps < 0:
        raise ConfigError("train.max_skipped_steps: must be >= 0")
    o = cfg.optim
    if len(o.betas) != 2:
        raise ConfigError("optim.betas: needs two numbers")
    if o.decay not in ("constant", "cosine"):
        raise ConfigError(f"optim.decay: must be constant or cosine, got {o.decay!r}")
    if not 0 <= cfg.ema.decay < 1:
        raise ConfigError(f"ema.decay: must be in [0, 1), got {cfg.ema.decay}")
    if any(not 0 < s <= 1 for s in cfg.val.sigmas):
        raise ConfigError("val.sigmas: each must be in (0, 1]")
    if cfg.sample.enabled and not cfg.sample.prompts:
        raise ConfigError("sample.prompts: sample.enabled needs at least one prompt")


def _is_bucket(name: str) -> bool:
    parts = name.split("x")
    return len(parts) == 3 and all(p.isdigit() and int(p) > 0 for p in parts)


def phase_plans(cfg: DiTTrainConfig) -> list[PhasePlan]:
    """The sampler's view of the phases."""
    return [PhasePlan(name=ph.name, stages=dict(ph.stages) if ph.stages else {ph.stage: 1.0}, steps=ph.steps,
                      batch=dict(ph.batch)) for ph in cfg.phases]


# ----------------------------------------------------------------------------------------------------------------
# Processes and devices


@dataclasses.dataclass
class Runtime:
    """This process's place in the job."""

    rank: int
    world: int
    device: torch.device
    mesh: object
    dp_rank: int
    dp_world: int

    @property
    def main(self) -> bool:
        """Rank 0 writes logs and exports."""
        return self.rank == 0


def setup_runtime(cfg: DiTTrainConfig) -> Runtime:
    """Join the process group when started by torchrun, pick the device, build the mesh."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local = int(os.environ.get("LOCAL_RANK", "0"))
    want = cfg.train.device
    if want == "auto":
        want = "cuda" if torch.cuda.is_available() else "cpu"
    if want == "cuda":
        if not torch.cuda.is_available():
            raise ConfigError("train.device: cuda, but no GPU is visible")
        device = torch.device("cuda", local)
        torch.cuda.set_device(device)
    else:
        device = torch.device("cpu")
    try:
        if world > 1:
            mesh_sizes(cfg.parallel, world)
    except ValueError as e:
        raise ConfigError(f"parallel: {e}") from e
    if world > 1:
        import torch.distributed as dist

        if not dist.is_initialized():
            dist.init_process_group("nccl" if device.type == "cuda" else "gloo", device_id=device
                                    if device.type == "cuda" else None)
    mesh = build_mesh(cfg.parallel, world, device.type)
    dp_rank, dp_world = dp_rank_world(mesh)
    return Runtime(rank, world, device, mesh, dp_rank, dp_world)


def _all_reduce_mean(x: torch.Tensor, rt: Runtime) -> torch.Tensor:
    if rt.world > 1:
        import torch.distributed as dist

        dist.all_reduce(x, op=dist.ReduceOp.SUM)
        x = x / rt.world
    return x


def _barrier(rt: Runtime) -> None:
    if rt.world > 1:
        import torch.distributed as dist

        dist.barrier()


def _autocast(rt: Runtime, precision: str):
    if precision == "bf16":
        return torch.autocast(rt.device.type, dtype=torch.bfloat16)
    return contextlib.nullcontext()


# ----------------------------------------------------------------------------------------------------------------
# Model, data and the loss


def build_model(cfg: DiTTrainConfig, rt: Runtime) -> tuple[WanDiT, DiTConfig]:
    """The DiT (fp32 master weights, same initial values on every rank), parallelised over the mesh."""
    from trainer.distributed.fsdp import apply_parallelism

    mcfg = model_config(cfg.model)
    torch.manual_seed(cfg.train.seed)
    if cfg.model.init:
        from trainer.models.dit.weights import load_wan_dit

        model = load_wan_dit(cfg.model.init, mcfg, device=rt.device)
        if model.config != mcfg:
            raise ConfigError(f"model.init: {cfg.model.init} has config {model.config}, the config asks for {mcfg}")
    else:
        # Initialised on the device (much faster for the 1.3B/14B models); the seed makes every rank's values equal.
        with torch.device(rt.device):
            model = WanDiT.from_config(mcfg)
    model = model.to(rt.device).train()
    # The one place the model becomes parallel: context parallelism (ring/ulysses), activation checkpointing, FSDP2.
    apply_parallelism(model, rt.mesh, cfg.parallel, cfg.model.checkpointing, bf16=cfg.train.precision == "bf16",
                      compile_blocks=cfg.model.compile)
    return model, mcfg


def _sample_seed(*parts: int) -> int:
    return int(np.random.SeedSequence([int(p) for p in parts]).generate_state(1, np.uint64)[0] >> 1)


def draw_noise(seed: int, step: int, position: int, shape, flow: FlowConfig, shift: float) -> tuple:
    """(σ [1], noise) of the sample at `position` of step `step`'s global batch: the same on any rank layout."""
    g = torch.Generator().manual_seed(_sample_seed(seed, step, position, 0x51))
    sigma = sample_sigmas(1, flow, g, shift=shift)
    return sigma, torch.randn(shape, generator=g)


def micro_loss(model, latents: list[torch.Tensor], texts: list[torch.Tensor], sigma: torch.Tensor,
               noise: torch.Tensor, weighting: str, rt: Runtime, precision: str) -> torch.Tensor:
    """Mean flow-matching loss of one micro-batch (same bucket, so the latents stack without padding)."""
    x0 = torch.stack([x.float() for x in latents]).to(rt.device)
    xt, target = noisy_input(x0, noise.to(rt.device), sigma.to(rt.device))
    ctx = [t.to(rt.device, torch.float32) for t in texts]
    with _autocast(rt, precision):
        pred = model(list(xt), timesteps(sigma.to(rt.device)), ctx)
    return flow_loss(torch.stack(pred), target, sigma.to(rt.device), weighting)


def _load(index, ids: list[str], stage: str, step_desc: str):
    from trainer.data.latents import LatentIndexError, ShardError

    try:
        return index.load(ids, stage=stage)
    except ShardError as e:
        raise ShardError(f"{e} ({step_desc})") from e


@torch.no_grad()
def fixed_sigma_loss(model, index, rows: list[tuple[str, str]], sigmas: list[float], seed: int, batch_size: int,
                     cfg: DiTTrainConfig, rt: Runtime) -> float:
    """Mean loss over (sample, σ) pairs with fixed noise: every rank computes all of it (FSDP needs lockstep)."""
    if not rows:
        return float("nan")
    data = index.load([(st, sid) for sid, st in rows])
    by_shape: dict[tuple, list[int]] = {}
    for i, (lat, _) in enumerate(data):
        by_shape.setdefault(tuple(lat.shape), []).append(i)
    total, count = 0.0, 0
    for shape, idx in sorted(by_shape.items()):
        for si, s in enumerate(sigmas):
            for k in range(0, len(idx), batch_size):
                chunk = idx[k : k + batch_size]
                noise = torch.stack([torch.randn(shape, generator=torch.Generator().manual_seed(
                    _sample_seed(seed, i, si))) for i in chunk])
                sig = torch.full((len(chunk),), float(s))
                loss = micro_loss(model, [data[i][0] for i in chunk], [data[i][1] for i in chunk], sig, noise,
                                  "none", rt, cfg.train.precision)
                total += float(loss) * len(chunk)
                count += len(chunk)
    return total / count


def holdout(rows, n: int, seed: int) -> list[str]:
    """Up to `n` sample ids held out for validation, chosen by a hash of (seed, sample_id) (stable as data grows);
    a row is never taken when it is the last one of a stage (the phase drawing from it would have nothing)."""
    if n <= 0:
        return []
    ids = sorted(set(rows["sample_id"].astype(str)))
    ids.sort(key=lambda s: hashlib.sha1(f"{seed}:{s}".encode()).hexdigest())
    left = rows.groupby("stage")["sample_id"].nunique().to_dict()
    stages_of = rows.groupby(rows["sample_id"].astype(str))["stage"].agg(lambda s: sorted(set(s))).to_dict()
    out = []
    for sid in ids:
        if len(out) == n:
            break
        if all(left[st] > 1 for st in stages_of[sid]):
            out.append(sid)
            for st in stages_of[sid]:
                left[st] -= 1
    return out


def phase_probe_rows(sampler: CurriculumSampler, phase: int, n: int) -> list[tuple[str, str]]:
    """The first `n` distinct (sample_id, stage) pairs the phase draws: a fixed set to measure its progress on."""
    start = sum(p.steps for p in sampler.phases[:phase])
    out: list[tuple[str, str]] = []
    for local in range(min(sampler.phases[phase].steps, 1000)):
        b = sampler.batch(start + local)
        for sid in b.sample_ids:
            if (sid, b.stage) not in out:
                out.append((sid, b.stage))
            if len(out) >= n:
                return out
    return out


# ----------------------------------------------------------------------------------------------------------------
# Export


def export_weights(model, ema: EMA, mcfg: DiTConfig, folder: str | None, rt: Runtime, which=("ema",)) -> None:
    """EMA (and/or live) weights in the released layout under folder/<which>/; a collective: every rank calls it."""
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

    from trainer.models.dit.weights import save_wan_dit

    for kind in which:
        if kind == "ema":
            sd = ema.full_state_dict()
        else:
            sd = get_model_state_dict(model, options=StateDictOptions(full_state_dict=True, cpu_offload=True))
        if rt.main and folder is not None:
            save_wan_dit(sd, mcfg, os.path.join(folder, kind))


# ----------------------------------------------------------------------------------------------------------------
# The loop


def clip_grad_norm(model, max_norm: float) -> torch.Tensor:
    """Total gradient norm (a full tensor under FSDP2), clipping to max_norm when > 0."""
    grads = [p.grad for p in model.parameters() if p.grad is not None]
    norm = torch.nn.utils.get_total_norm(grads, 2.0)
    if hasattr(norm, "full_tensor"):
        norm = norm.full_tensor()
    if max_norm > 0:
        torch.nn.utils.clip_grads_with_norm_([p for p in model.parameters() if p.grad is not None], max_norm, norm)
    return norm


class NonFiniteLoss(RuntimeError):
    """The loss (or gradient norm) of a step is NaN or infinite and no skips are left."""


def train(cfg: DiTTrainConfig) -> dict:
    """Run (or resume) training; returns a summary (steps done, per-phase losses)."""
    from trainer.data.latents import LatentIndex

    rt = setup_runtime(cfg)
    out = cfg.train.output_dir
    ckpt_root = os.path.join(out, "checkpoints")
    if rt.main:
        os.makedirs(ckpt_root, exist_ok=True)
    _barrier(rt)

    index = LatentIndex.open(cfg.data.latents)
    mcfg = model_config(cfg.model)
    if index.text_dim != mcfg.text_dim:
        raise ConfigError(f"model.config.text_dim is {mcfg.text_dim}, but the latents' text encoder gives "
                          f"{index.text_dim}-d text ({cfg.data.latents}/prepare.json)")
    rows = index.rows
    if rows.empty:
        raise ConfigError(f"data.latents: {cfg.data.latents} has no ok rows")
    channels = {int(s[0]) for s in rows["latent_shape"]}
    if channels != {mcfg.in_dim}:
        raise ConfigError(f"model in_dim is {mcfg.in_dim}, the latents have {sorted(channels)} channels")
    longest = int(rows["text_tokens"].max())
    if longest > mcfg.text_len:
        raise ConfigError(f"model.config.text_len is {mcfg.text_len}, the latents hold text of up to {longest} tokens")
    val_ids = holdout(rows, cfg.val.num_samples, cfg.train.seed)
    train_rows = rows[~rows["sample_id"].astype(str).isin(val_ids)]
    val_rows = [(sid, str(rows[rows["sample_id"] == sid]["stage"].iloc[0])) for sid in val_ids]
    try:
        sampler = CurriculumSampler(train_rows, phase_plans(cfg), seed=cfg.train.seed, dp_world=rt.dp_world)
    except SamplerError as e:
        raise ConfigError(str(e)) from e
    total = sampler.total_steps
    end = total if cfg.train.max_steps is None else min(total, cfg.train.max_steps)

    model, mcfg = build_model(cfg, rt)
    o = cfg.optim
    fused = rt.device.type == "cuda" if o.fused is None else o.fused
    opt = torch.optim.AdamW(model.parameters(), lr=o.lr, betas=tuple(o.betas), eps=o.eps,
                            weight_decay=o.weight_decay, fused=fused or None, foreach=None if fused else True)
    ema = EMA(model, cfg.ema.decay, cfg.ema.warmup)

    step, skipped = 0, 0
    probes: dict[int, tuple[float, float]] = {}  # phase -> probe loss at its start and end
    latest = ckpt.latest_checkpoint(ckpt_root) if cfg.train.resume else None
    if latest:
        state = ckpt.load_sharded(latest, model, opt, ema.shadow)
        step, skipped, ema.updates = state["step"], state.get("skipped", 0), state["ema_updates"]
        probes.update({int(k): tuple(v) for k, v in state.get("probes", {}).items()})
        if state.get("phases") != [dataclasses.asdict(p) for p in sampler.phases][: len(state.get("phases", []))]:
            raise ConfigError(f"resume: {latest} was written with other phases; use a new train.output_dir")
        if rt.main:
            print(f"resumed from {latest} at step {step}", flush=True)
    if rt.main:
        with open(os.path.join(out, "config.json"), "w") as fh:
            json.dump(to_dict(cfg), fh, indent=1)
    log = MetricsLog(out, resume_step=step if latest else None, tensorboard=cfg.train.tensorboard) if rt.main else None
    peak = (cfg.train.peak_tflops * 1e12 if cfg.train.peak_tflops else matmul_peak_flops(rt.device))
    video_sampler = None
    if cfg.sample.enabled and rt.main:
        try:
            video_sampler = Sampler(cfg.sample, index.meta, cfg.data.latents, rt.device)
        except ImportError as e:
            raise ConfigError(f"sample.enabled: validation videos need {e.name} (trainer.sample, "
                              f"trainer.models.text), which this build lacks") from e
    progress = Progress(end, step, enabled=None if rt.main else False)

    def save(at: int, phase_name: str) -> None:
        ema_sd = ema.full_state_dict() if cfg.train.export_ema else None

        def extra(folder: str) -> None:
            if ema_sd is not None:
                from trainer.models.dit.weights import save_wan_dit

                save_wan_dit(ema_sd, mcfg, os.path.join(folder, "ema"))

        ckpt.save_sharded(ckpt_root, at, model, opt, ema.shadow,
                          {"phase": phase_name, "skipped": skipped, "ema_updates": ema.updates,
                           "sampler": sampler.state_dict(at), "phases": [dataclasses.asdict(p) for p in sampler.phases],
                           "world_size": rt.world, "probes": {str(k): list(v) for k, v in probes.items()}},
                          keep=cfg.train.keep_checkpoints, rank0_extra=extra)

    probe_rows: dict[int, list] = {}
    t_last = time.perf_counter()
    tokens_acc, flops_acc, n_acc = 0, 0.0, 0
    try:
        while step < end:
            sb = sampler.batch(step)
            ph = cfg.phases[sb.phase]
            if sb.local_step == 0 or sb.phase not in probe_rows:
                probe_rows[sb.phase] = phase_probe_rows(sampler, sb.phase, cfg.train.probe_samples)
                if sb.local_step == 0 and cfg.train.probe_samples:
                    p0 = fixed_sigma_loss(model, index, probe_rows[sb.phase], cfg.val.sigmas, cfg.val.seed,
                                          cfg.val.batch_size, cfg, rt)
                    probes[sb.phase] = (p0, float("nan"))
                    if rt.main:
                        print(f"phase {ph.name} (stages {list(sampler.phases[sb.phase].stages)}): "
                              f"{ph.steps} steps, probe loss at start {p0:.4f}", flush=True)
            ids = sb.shard(rt.dp_rank, rt.dp_world)
            desc = f"step {step + 1}, phase {ph.name}, stage {sb.stage}, bucket {sb.bucket}"
            data = _load(index, ids, sb.stage, desc)
            shapes = {tuple(d[0].shape) for d in data}
            if len(shapes) != 1:
                raise ValueError(f"{desc}: latents of one bucket have different shapes {sorted(shapes)}")
            shape = shapes.pop()
            peak_lr = ph.lr if ph.lr is not None else o.lr
            warm = ph.warmup_steps if ph.warmup_steps is not None else o.warmup_steps
            lr = lr_at(sb.local_step, ph.steps, peak_lr, warm, o.decay, o.min_lr_ratio)
            for g in opt.param_groups:
                g["lr"] = lr
            shift = ph.shift if ph.shift is not None else cfg.flow.shift
            n_rank = len(ids)
            micro = ph.micro_batch or n_rank
            chunks = [list(range(k, min(n_rank, k + micro))) for k in range(0, n_rank, micro)]
            loss_sum = torch.zeros((), device=rt.device)
            for ci, chunk in enumerate(chunks):
                draws = [draw_noise(cfg.train.seed, step, rt.dp_rank * n_rank + i, shape, cfg.flow, shift)
                         for i in chunk]
                sigma = torch.cat([d[0] for d in draws])
                noise = torch.stack([d[1] for d in draws])
                if hasattr(model, "set_requires_gradient_sync"):
                    # Reduce-scatter gradients once per step, after the last micro-batch.
                    model.set_requires_gradient_sync(ci == len(chunks) - 1)
                loss = micro_loss(model, [data[i][0] for i in chunk], [data[i][1] for i in chunk], sigma, noise,
                                  cfg.flow.weighting, rt, cfg.train.precision) * (len(chunk) / n_rank)
                loss.backward()
                loss_sum += loss.detach()
            gnorm = clip_grad_norm(model, o.grad_clip)
            loss_g = _all_reduce_mean(loss_sum, rt)
            stats = torch.stack([loss_g, gnorm.to(loss_g.device, loss_g.dtype)]).tolist()
            step_loss, step_norm = stats
            finite = math.isfinite(step_loss) and math.isfinite(step_norm)
            if finite:
                opt.step()
                ema.update(model)
            opt.zero_grad(set_to_none=True)
            step += 1
            if not finite:
                skipped += 1
                msg = (f"non-finite loss ({step_loss}) or gradient norm ({step_norm}) at step {step}, phase "
                       f"{ph.name} (stage {sb.stage}, bucket {sb.bucket}, samples {sb.sample_ids[:4]})")
                if skipped > cfg.train.max_skipped_steps:
                    raise NonFiniteLoss(f"{msg}; stopping after {skipped} such step(s) "
                                        f"(train.max_skipped_steps={cfg.train.max_skipped_steps})")
                if rt.main:
                    print(f"warning: {msg}: step skipped ({skipped}/{cfg.train.max_skipped_steps})", flush=True)
            tokens = len(sb.sample_ids) * math.prod(shape[1:]) // math.prod(mcfg.patch_size)
            tokens_acc += tokens
            flops_acc += len(sb.sample_ids) * dit_train_flops(mcfg, tokens // len(sb.sample_ids))
            n_acc += 1
            if step % cfg.train.log_every == 0 or step == end:
                dt = time.perf_counter() - t_last
                rec = {"step": step, "phase": ph.name, "stage": sb.stage, "bucket": sb.bucket,
                       "loss": step_loss if finite else None, "grad_norm": step_norm if finite else None,
                       "lr": lr, "skipped": not finite, "tokens_per_s": tokens_acc / dt,
                       "tokens_per_s_per_rank": tokens_acc / dt / rt.world}
                if peak:
                    rec["mfu"] = flops_acc / dt / rt.world / peak
                    rec["tflops_per_gpu"] = flops_acc / dt / rt.world / 1e12
                if rt.device.type == "cuda":
                    rec["peak_mem_gib"] = torch.cuda.max_memory_allocated(rt.device) / 2**30
                if cfg.val.every and step % cfg.val.every == 0 and val_rows:
                    rec["val_loss"] = fixed_sigma_loss(model, index, val_rows, cfg.val.sigmas, cfg.val.seed,
                                                       cfg.val.batch_size, cfg, rt)
                if rt.main:
                    log.log(rec)
                    if not progress.enabled:
                        shown = " ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}"
                                         for k, v in rec.items() if k not in ("step",))
                        print(f"step {step}/{end} {shown}", flush=True)
                t_last, tokens_acc, flops_acc, n_acc = time.perf_counter(), 0, 0.0, 0
            elif cfg.val.every and step % cfg.val.every == 0 and val_rows:
                v = fixed_sigma_loss(model, index, val_rows, cfg.val.sigmas, cfg.val.seed, cfg.val.batch_size,
                                     cfg, rt)
                if rt.main:
                    log.log({"step": step, "phase": ph.name, "val_loss": v})
            if rt.main:
                progress.update(step, f"{ph.name} loss {step_loss:.4f}")
            phase_end = sb.local_step == ph.steps - 1
            if phase_end and cfg.train.probe_samples:
                p1 = fixed_sigma_loss(model, index, probe_rows[sb.phase], cfg.val.sigmas, cfg.val.seed,
                                      cfg.val.batch_size, cfg, rt)
                probes[sb.phase] = (probes.get(sb.phase, (float("nan"),))[0], p1)
                if rt.main:
                    log.log({"step": step, "phase": ph.name, "probe_loss_start": probes[sb.phase][0],
                             "probe_loss_end": p1})
                    print(f"phase {ph.name} done at step {step}: probe loss {probes[sb.phase][0]:.4f} -> {p1:.4f}",
                          flush=True)
            if step % cfg.train.checkpoint_every == 0 or (cfg.train.checkpoint_at_end and (phase_end or step == end)):
                save(step, ph.name)
            if cfg.sample.enabled and cfg.sample.every and step % cfg.sample.every == 0:
                _sample(video_sampler, ema, mcfg, cfg, rt, os.path.join(out, "samples", f"step_{step:08d}"))
    finally:
        progress.close()
        if log is not None:
            log.close()
    if cfg.train.export_final and step == end:
        export_weights(model, ema, mcfg, os.path.join(out, "final") if rt.main else None, rt, which=("ema", "model"))
    if cfg.sample.enabled and step == end:
        _sample(video_sampler, ema, mcfg, cfg, rt, os.path.join(out, "samples", "final"))
    summary = {"steps": step, "total_steps": total, "skipped": skipped,
               "phases": {cfg.phases[i].name: {"probe_loss_start": a, "probe_loss_end": b}
                          for i, (a, b) in sorted(probes.items())}}
    if rt.main:
        with open(os.path.join(out, "summary.json"), "w") as fh:
            json.dump(summary, fh, indent=1)
    _barrier(rt)
    if cfg.train.check_loss_falls:
        bad = [n for n, p in summary["phases"].items()
               if not (p["probe_loss_end"] < p["probe_loss_start"])]
        if bad:
            raise RuntimeError(f"probe loss did not fall in phase(s) {bad}: {summary['phases']}")
    return summary


class Sampler:
    """Validation videos: text encoder and VAE loaded once (rank 0), the EMA weights in a plain WanDiT."""

    def __init__(self, cfg: SampleConfig, meta: dict, latents_dir: str, device: torch.device):
        from trainer.models.text import load_text_encoder
        from trainer.models.vae.model import load_wan_vae, vae_config

        self.cfg, self.device = cfg, device
        vae_rec, text_rec = meta.get("vae", {}), meta.get("text_encoder", {})
        weights = cfg.vae or vae_rec.get("weights")
        if not weights:
            raise ConfigError("sample.vae: not set, and prepare.json names no VAE weights")
        if not os.path.isabs(weights) and not os.path.exists(weights):
            weights = os.path.join(latents_dir, weights)  # prepare.json names its own files relative to LATENTS
        preset = cfg.vae_preset or vae_rec.get("preset", "wan2.1")
        overrides = cfg.vae_overrides if cfg.vae_overrides is not None else vae_rec.get("overrides", {})
        self.vae = load_wan_vae(weights, vae_config(preset, **overrides), device=device)
        self.vae.train(False).requires_grad_(False)
        model = cfg.text_encoder or text_rec.get("model")
        if not model:
            raise ConfigError("sample.text_encoder: not set, and prepare.json names no text encoder")
        enc = load_text_encoder(model, device=device, kind=text_rec.get("kind") if not cfg.text_encoder else None,
                                max_tokens=int(meta.get("text_len", 512)))
        self.context = enc.encode(list(cfg.prompts))
        from trainer.sample import DEFAULT_NEGATIVE

        neg = cfg.negative_prompt if cfg.negative_prompt is not None else DEFAULT_NEGATIVE
        self.negative = enc.encode([neg]) if cfg.guidance != 1.0 else None

    def __call__(self, weights: dict[str, torch.Tensor], mcfg: DiTConfig, out_dir: str, precision: str) -> list[str]:
        """Write one mp4 per prompt from `weights` into out_dir; returns the paths."""
        from trainer.sample import generate, latent_shape, write_mp4

        c, v = self.cfg, self.vae.config
        net = WanDiT.from_config(mcfg)
        net.load_state_dict(weights, strict=True)
        net.to(self.device).train(False).requires_grad_(False)
        shape = latent_shape(c.frames, c.height, c.width, v.z_dim, v.temporal_factor, v.spatial_factor)
        dtype = torch.bfloat16 if precision == "bf16" else torch.float32
        latents = generate(net, self.context, self.negative, shape, steps=c.steps, shift=c.shift,
                           guidance=c.guidance, seed=c.seed, dtype=dtype)
        os.makedirs(out_dir, exist_ok=True)
        paths = []
        with torch.no_grad():
            for i, z in enumerate(latents):
                video = self.vae.decode(z[None].to(self.device), clamp=True)[0].float()
                paths.append(os.path.join(out_dir, f"sample-{i}.mp4"))
                write_mp4(video, paths[-1], fps=c.fps)
        return paths


def _sample(sampler: Sampler | None, ema: EMA, mcfg: DiTConfig, cfg: DiTTrainConfig, rt: Runtime,
            out_dir: str) -> None:
    """Validation videos from the EMA weights (gathered on every rank; rank 0 samples, the others wait)."""
    sd = ema.full_state_dict()
    if rt.main and sampler is not None:
        paths = sampler(sd, mcfg, out_dir, cfg.train.precision)
        print(f"samples: {', '.join(paths)}", flush=True)
    _barrier(rt)


def main(argv=None) -> int:
    """Command-line entry point (one process, or one of torchrun's)."""
    ap = argparse.ArgumentParser(description="Train the Wan DiT on prepared latents, phase by phase.")
    ap.add_argument("--config", required=True, help="YAML training config (trainer/configs/dit_demo.yaml)")
    ap.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                    help="override a config value, e.g. --set train.max_steps=20 (repeatable)")
    args = ap.parse_args(argv)
    from trainer.data.latents import LatentIndexError, ShardError

    try:
        cfg = load_config(args.config, args.overrides)
    except (ConfigError, OSError) as e:
        print(f"config error: {e}", file=sys.stderr)
        return 2
    try:
        summary = train(cfg)
    except ConfigError as e:
        print(f"config error: {e}", file=sys.stderr)
        return 2
    except LatentIndexError as e:  # data.latents is not a prepared folder: say which and how to make one
        print(f"data error: {e}", file=sys.stderr)
        return 2
    except NonFiniteLoss as e:
        print(f"error: {e}", file=sys.stderr)
        return 3
    except ShardError as e:
        print(f"error: {e}", file=sys.stderr)
        return 4
    finally:
        import torch.distributed as dist

        if dist.is_available() and dist.is_initialized():
            dist.destroy_process_group()
    if int(os.environ.get("RANK", "0")) == 0:
        for name, p in summary["phases"].items():
            print(f"phase {name}: probe loss {p['probe_loss_start']:.4f} -> {p['probe_loss_end']:.4f}", flush=True)
        print(json.dumps({k: v for k, v in summary.items() if k != "phases"}), flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
