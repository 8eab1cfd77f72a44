"""Exponential moving average of a model's parameters, kept in fp32 (sharded like the parameters under FSDP2)."""

from __future__ import annotations

import torch
import torch.nn as nn


def _local(t: torch.Tensor) -> torch.Tensor:
    return t.to_local() if hasattr(t, "to_local") else t


class EMA:
    """shadow ← d·shadow + (1−d)·param after each optimizer step; d warms up as min(decay, (1+n)/(10+n))."""

    def __init__(self, model: nn.Module, decay: float = 0.999, warmup: bool = True):
        if not 0.0 <= decay < 1.0:
            raise ValueError(f"ema decay must be in [0, 1), got {decay}")
        self.decay, self.warmup, self.updates = decay, warmup, 0
        self.names = [n for n, _ in model.named_parameters()]
        # DTensor parameters (FSDP2) clone to DTensors with the same sharding: each rank averages its own shard.
        self.shadow = {n: p.detach().float().clone() for n, p in model.named_parameters()}

    def current_decay(self) -> float:
        """The decay the next update uses."""
        if not self.warmup:
            return self.decay
        return min(self.decay, (1 + self.updates) / (10 + self.updates))

    @torch.no_grad()
    def update(self, model: nn.Module) -> None:
        """Move the average towards the model's current parameters."""
        d = self.current_decay()
        params = dict(model.named_parameters())
        shadow = [_local(self.shadow[n]) for n in self.names]
        new = [_local(params[n].detach()).float() for n in self.names]
        torch._foreach_lerp_(shadow, new, 1.0 - d)
        self.updates += 1

    def state_dict(self) -> dict[str, torch.Tensor]:
        """The averaged tensors (DTensors under FSDP2), for torch.distributed.checkpoint."""
        return self.shadow

    def full_state_dict(self) -> dict[str, torch.Tensor]:
        """Whole (unsharded) fp32 tensors on CPU; a collective under FSDP2, so every rank calls it."""
        return {n: (t.full_tensor() if hasattr(t, "full_tensor") else t).detach().cpu() for n, t in self.shadow.items()}
