"""Learning-rate schedules: linear warm-up, then constant or cosine decay to a floor."""

from __future__ import annotations

import math


def lr_at(step: int, total: int, peak: float, warmup: int = 0, decay: str = "constant",
          min_ratio: float = 0.0) -> float:
    """LR at `step` (0-based) of a `total`-step schedule: warm-up to `peak`, then constant or cosine to min_ratio·peak."""
    if decay not in ("constant", "cosine"):
        raise ValueError(f"decay must be constant or cosine, got {decay!r}")
    if warmup and step < warmup:
        return peak * (step + 1) / warmup
    if decay == "cosine" and total > warmup:
        frac = min(1.0, (step - warmup) / max(1, total - warmup))
        return peak * (min_ratio + (1 - min_ratio) * 0.5 * (1 + math.cos(math.pi * frac)))
    return peak
