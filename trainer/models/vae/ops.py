"""Fused RMS norm (+ SiLU) for channels-last activations, used by the VAE's chunked inference path.

The VAE normalises over channels. With channels-last memory the channel vector of one voxel is contiguous, so a
single pass (read bf16, reduce in fp32, write bf16) replaces the half-dozen fp32 passes of
``F.normalize(x) * scale * gamma`` followed by ``silu``. The arithmetic follows the released model's order
(divide by the clamped L2 norm, multiply by sqrt(C), multiply by gamma) so outputs match it to rounding.
"""

from __future__ import annotations

import os

import torch
import torch.nn.functional as F

try:  # Triton is optional: CPU-only installs use the torch fallback below.
    import triton
    import triton.language as tl

    _HAVE_TRITON = True
except Exception:  # pragma: no cover - depends on the install
    _HAVE_TRITON = False


if _HAVE_TRITON:

    @triton.jit
    def _rms_norm_act_kernel(
        x_ptr,
        b_ptr,
        g_ptr,
        y_ptr,
        n_rows,
        scale,
        C: tl.constexpr,
        BLOCK_C: tl.constexpr,
        BLOCK_R: tl.constexpr,
        SILU: tl.constexpr,
        HAS_BIAS: tl.constexpr,
    ):
        pid = tl.program_id(0)
        rows = pid.to(tl.int64) * BLOCK_R + tl.arange(0, BLOCK_R).to(tl.int64)
        cols = tl.arange(0, BLOCK_C)
        mask = (rows[:, None] < n_rows) & (cols[None, :] < C)
        offs = rows[:, None] * C + cols[None, :]
        x = tl.load(x_ptr + offs, mask=mask, other=0.0).to(tl.float32)
        if HAS_BIAS:
            # The producing conv ran without its bias; adding it here saves a full pass over the tensor.
            x += tl.load(b_ptr + cols, mask=cols < C, other=0.0).to(tl.float32)[None, :]
        norm = tl.sqrt(tl.sum(x * x, axis=1))
        # F.normalize clamps the norm at eps=1e-12 before dividing.
        norm = tl.maximum(norm, 1e-12)
        g = tl.load(g_ptr + cols, mask=cols < C, other=0.0).to(tl.float32)
        y = x / norm[:, None] * scale * g[None, :]
        if SILU:
            y = y / (1.0 + tl.exp(-y))
        tl.store(y_ptr + offs, y.to(y_ptr.dtype.element_ty), mask=mask)

    @triton.jit
    def _add_bias_residual_kernel(y_ptr, b_ptr, h_ptr, o_ptr, n_rows, C: tl.constexpr, BLOCK_C: tl.constexpr,
                                  BLOCK_R: tl.constexpr):
        pid = tl.program_id(0)
        rows = pid.to(tl.int64) * BLOCK_R + tl.arange(0, BLOCK_R).to(tl.int64)
        cols = tl.arange(0, BLOCK_C)
        mask = (rows[:, None] < n_rows) & (cols[None, :] < C)
        offs = rows[:, None] * C + cols[None, :]
        y = tl.load(y_ptr + offs, mask=mask, other=0.0).to(tl.float32)
        h = tl.load(h_ptr + offs, mask=mask, other=0.0).to(tl.float32)
        b = tl.load(b_ptr + cols, mask=cols < C, other=0.0).to(tl.float32)
        tl.store(o_ptr + offs, (y + b[None, :] + h).to(o_ptr.dtype.element_ty), mask=mask)


def triton_available() -> bool:
    """True when the Triton kernel can be launched (Triton importable; CUDA, or the Triton CPU interpreter)."""
    return _HAVE_TRITON and (torch.cuda.is_available() or os.environ.get("TRITON_INTERPRET") == "1")


def _rows_view(t: torch.Tensor) -> torch.Tensor | None:
    """A (rows, C) view of a channels-last tensor whose voxels are contiguous, else None."""
    c = t.shape[1]
    perm = (0,) + tuple(range(2, t.dim())) + (1,)
    p = t.permute(*perm)
    if not p.is_contiguous():
        return None
    return p.view(-1, c)


def _bias_view(bias: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    return bias.float().view((1, -1) + (1,) * (x.dim() - 2))


def rms_norm_act_reference(x: torch.Tensor, gamma: torch.Tensor, silu: bool,
                           bias: torch.Tensor | None = None) -> torch.Tensor:
    """The released model's arithmetic (fp32 under autocast): normalize over dim 1, scale by sqrt(C)*gamma, SiLU."""
    c = x.shape[1]
    x = x.float() if bias is None else x.float() + _bias_view(bias, x)
    y = F.normalize(x, dim=1) * (c**0.5) * gamma.float().view((c,) + (1,) * (x.dim() - 2))
    return F.silu(y) if silu else y


def _row_pairs(tensors: list[torch.Tensor]) -> list[list[torch.Tensor]] | None:
    """Per batch item, (rows, C) views of each tensor; None if any is not channels-last contiguous per item."""
    out = []
    for b in range(tensors[0].shape[0]):
        views = [_rows_view(t[b : b + 1]) for t in tensors]
        if any(v is None or v.shape != views[0].shape for v in views):
            return None
        out.append(views)
    return out


def _blocks(c: int) -> tuple[int, int]:
    block_c = triton.next_power_of_2(c)
    return block_c, max(1, 4096 // block_c)


def rms_norm_act(x: torch.Tensor, gamma: torch.Tensor, silu: bool, out: torch.Tensor | None = None,
                 use_triton: bool = True, bias: torch.Tensor | None = None) -> torch.Tensor:
    """RMS norm over channels of (x + bias) (Wan: L2-normalise, times sqrt(C), times gamma), optional SiLU."""
    if out is None:
        out = torch.empty_like(x)
    c = x.shape[1]
    if use_triton and triton_available() and x.device == out.device:
        # Launched per batch item so `out` may be a time-slice of a larger buffer (contiguous within one item).
        pairs = _row_pairs([x, out])
        if pairs is not None:
            g = gamma.reshape(-1).float().contiguous()
            b = g if bias is None else bias.reshape(-1).float().contiguous()
            block_c, block_r = _blocks(c)
            for xv, yv in pairs:
                if xv.shape[0]:
                    _rms_norm_act_kernel[(triton.cdiv(xv.shape[0], block_r),)](
                        xv, b, g, yv, xv.shape[0], float(c**0.5), C=c, BLOCK_C=block_c, BLOCK_R=block_r,
                        SILU=silu, HAS_BIAS=bias is not None, num_warps=4)
            return out
    out.copy_(rms_norm_act_reference(x, gamma, silu, bias))
    return out


def add_bias_residual(y: torch.Tensor, bias: torch.Tensor, h: torch.Tensor, use_triton: bool = True) -> torch.Tensor:
    """y + bias (per channel) + h, written into y: the tail of a residual block whose last conv skipped its bias."""
    if use_triton and triton_available() and y.device == h.device:
        pairs = _row_pairs([y, h])
        if pairs is not None:
            b = bias.reshape(-1).float().contiguous()
            block_c, block_r = _blocks(y.shape[1])
            for yv, hv in pairs:
                if yv.shape[0]:
                    _add_bias_residual_kernel[(triton.cdiv(yv.shape[0], block_r),)](
                        yv, b, hv, yv, yv.shape[0], C=y.shape[1], BLOCK_C=block_c, BLOCK_R=block_r, num_warps=4)
            return y
    y.copy_(y.float() + _bias_view(bias, y) + h.float())
    return y
