"""Rectified flow in Wan's convention: what the DiT is trained to predict, and at which noise levels.

    x_σ = (1 − σ)·x0 + σ·ε        σ ∈ [0, 1], ε ~ N(0, I); σ = 1 is pure noise
    target velocity  v = ε − x0    (dx_σ/dσ)
    timestep given to the model  t = 1000·σ
    shift s (more steps at high noise for larger inputs):  σ' = s·σ / (1 + (s − 1)·σ)

Training σ is drawn from a density (uniform or logit-normal) and then shifted; the loss is the mean squared error
between the predicted and the target velocity, optionally weighted per σ. Sampling integrates the velocity from
σ = 1 to 0 with diffusers' flow-matching schedulers (trainer.sample).
"""

from __future__ import annotations

import dataclasses
import math

import torch

NUM_TRAIN_TIMESTEPS = 1000


@dataclasses.dataclass
class FlowConfig:
    """How training noise levels are drawn and the loss weighted."""

    density: str = "logit_normal"  # uniform | logit_normal
    logit_mean: float = 0.0
    logit_std: float = 1.0
    shift: float = 1.0  # σ shift; Wan uses larger shifts at larger resolutions (a phase may override it)
    weighting: str = "none"  # none | cosmap | bell

    def __post_init__(self):
        if self.density not in ("uniform", "logit_normal"):
            raise ValueError(f"flow.density must be uniform or logit_normal, got {self.density!r}")
        if self.weighting not in ("none", "cosmap", "bell"):
            raise ValueError(f"flow.weighting must be none, cosmap or bell, got {self.weighting!r}")
        if not self.shift > 0:
            raise ValueError(f"flow.shift must be > 0, got {self.shift}")
        if not self.logit_std > 0:
            raise ValueError(f"flow.logit_std must be > 0, got {self.logit_std}")


def shift_sigma(sigma: torch.Tensor, shift: float) -> torch.Tensor:
    """σ' = s·σ / (1 + (s − 1)·σ): the same noise schedule stretched towards σ = 1 for s > 1."""
    return shift * sigma / (1 + (shift - 1) * sigma)


def sample_sigmas(n: int, cfg: FlowConfig, generator: torch.Generator | None = None,
                  shift: float | None = None) -> torch.Tensor:
    """n training noise levels in (0, 1) (float32, on the generator's device), drawn from cfg's density, shifted."""
    device = generator.device if generator is not None else "cpu"
    if cfg.density == "uniform":
        sigma = torch.rand(n, generator=generator, device=device)
    else:
        sigma = torch.sigmoid(cfg.logit_mean + cfg.logit_std * torch.randn(n, generator=generator, device=device))
    return shift_sigma(sigma, cfg.shift if shift is None else shift).clamp(1e-5, 1.0)


def noisy_input(x0: torch.Tensor, noise: torch.Tensor, sigma: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(x_σ, target velocity ε − x0) for clean latents x0 [B, ...], noise like x0 and σ [B]."""
    s = sigma.view(-1, *([1] * (x0.dim() - 1))).to(x0.dtype)
    return (1 - s) * x0 + s * noise, noise - x0


def timesteps(sigma: torch.Tensor) -> torch.Tensor:
    """The model's timestep input t = 1000·σ."""
    return sigma * NUM_TRAIN_TIMESTEPS


def loss_weight(sigma: torch.Tensor, weighting: str) -> torch.Tensor:
    """Per-sample loss weights: 1 ('none'), SD3's cosmap, or a bell centred on σ = 0.5 with mean ≈ 1."""
    if weighting == "none":
        return torch.ones_like(sigma)
    if weighting == "cosmap":
        bot = 1 - 2 * sigma + 2 * sigma**2
        return 2 / (math.pi * bot)
    if weighting == "bell":
        # exp(-2(σ-0.5)²/0.25) has mean 0.6 over uniform σ: scaled so a uniform draw averages about 1.
        return torch.exp(-2 * (sigma - 0.5) ** 2 / 0.25) / 0.6
    raise ValueError(f"unknown loss weighting {weighting!r}")


def flow_loss(pred: torch.Tensor, target: torch.Tensor, sigma: torch.Tensor, weighting: str = "none",
              mask: torch.Tensor | None = None) -> torch.Tensor:
    """Weighted mean squared error between predicted and target velocity, computed in fp32.

    pred/target [B, ...]; `mask` (broadcastable to pred, 1 = counts) excludes padding. Each sample's error is its
    mean over the elements that count, then samples are averaged with their σ weights.
    """
    err = (pred.float() - target.float()) ** 2
    dims = tuple(range(1, err.dim()))
    if mask is None:
        per_sample = err.mean(dim=dims)
    else:
        m = mask.to(err.dtype).expand_as(err)
        per_sample = (err * m).sum(dim=dims) / m.sum(dim=dims).clamp_min(1)
    return (per_sample * loss_weight(sigma.float(), weighting)).mean()
