"""Training metrics: model FLOPs of the Wan DiT, the bf16 matmul ceiling for MFU, and the metrics.jsonl/TensorBoard sink."""

from __future__ import annotations

import json
import os
import sys
import time

import torch


def dit_train_flops(cfg, tokens: int, text_len: int | None = None) -> float:
    """Model FLOPs of one training step (forward + backward) on one sample of `tokens` video tokens.

    Counted as the DiT issue does: per block 2·L·(6·d² + 2·d·ffn) for the projections and FFN, 4·L²·d for
    self-attention, 4·L·text_len·d for cross-attention; ×3 for forward + backward; recomputation earns nothing.
    """
    d, ffn, n = cfg.dim, cfg.ffn_dim, cfg.num_layers
    text_len = cfg.text_len if text_len is None else text_len
    per_block = 2 * tokens * (6 * d * d + 2 * d * ffn) + 4 * tokens * tokens * d + 4 * tokens * text_len * d
    return 3.0 * n * per_block


def matmul_peak_flops(device: torch.device, n: int = 8192, reps: int = 20) -> float:
    """Measured bf16 matmul FLOP/s on `device` (the MFU ceiling), or 0 off GPU."""
    if device.type != "cuda":
        return 0.0
    a = torch.randn(n, n, device=device, dtype=torch.bfloat16)
    b = torch.randn(n, n, device=device, dtype=torch.bfloat16)
    for _ in range(3):
        a @ b
    torch.cuda.synchronize(device)
    t = time.perf_counter()
    for _ in range(reps):
        a @ b
    torch.cuda.synchronize(device)
    return 2 * n**3 * reps / (time.perf_counter() - t)


class MetricsLog:
    """metrics.jsonl (one line per logged step; on resume, lines past the checkpoint are dropped) + TensorBoard."""

    def __init__(self, out_dir: str, resume_step: int | None = None, tensorboard: bool = True):
        self.path = os.path.join(out_dir, "metrics.jsonl")
        if os.path.exists(self.path):
            keep = []
            with open(self.path) as fh:
                for line in fh:
                    try:
                        rec = json.loads(line)
                    except json.JSONDecodeError:
                        continue  # a line cut by a kill
                    # A resumed run redoes the steps after its checkpoint: their old lines would be duplicates.
                    if resume_step is not None and rec.get("step", 0) <= resume_step:
                        keep.append(line if line.endswith("\n") else line + "\n")
            tmp = self.path + ".tmp"
            with open(tmp, "w") as fh:
                fh.writelines(keep)
            os.replace(tmp, self.path)
        self.fh = open(self.path, "a")
        self.tb = None
        if tensorboard:
            from torch.utils.tensorboard import SummaryWriter

            self.tb = SummaryWriter(os.path.join(out_dir, "tb"))

    def log(self, rec: dict) -> None:
        """Append one record (must hold `step`)."""
        self.fh.write(json.dumps(rec) + "\n")
        self.fh.flush()
        if self.tb is not None:
            for k, v in rec.items():
                if isinstance(v, (int, float)) and k != "step" and v == v:
                    self.tb.add_scalar(k, v, rec["step"])

    def close(self) -> None:
        """Flush and close."""
        self.fh.close()
        if self.tb is not None:
            self.tb.close()


class Progress:
    """A one-line progress bar on a terminal stderr (nothing otherwise; metrics lines carry the progress)."""

    def __init__(self, total: int, start: int = 0, enabled: bool | None = None):
        self.total, self.start = total, start
        self.enabled = sys.stderr.isatty() if enabled is None else enabled
        self.t0 = time.perf_counter()

    def update(self, step: int, text: str) -> None:
        """Redraw for `step` steps done."""
        if not self.enabled:
            return
        frac = step / max(1, self.total)
        rate = (step - self.start) / max(1e-9, time.perf_counter() - self.t0)
        eta = (self.total - step) / rate if rate > 0 else float("inf")
        bar = "#" * int(30 * frac)
        sys.stderr.write(f"\r[{bar:<30}] {step}/{self.total} {text} eta {eta:.0f}s ")
        sys.stderr.flush()

    def close(self) -> None:
        """End the line."""
        if self.enabled:
            sys.stderr.write("\n")
            sys.stderr.flush()
