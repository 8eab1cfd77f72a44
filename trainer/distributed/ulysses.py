"""Ulysses sequence parallelism: an all-to-all turns sequence shards into head shards around attention and back.

Each of the U ranks of a Ulysses group holds L/U tokens of every head. Before attention one all-to-all (q, k and v
packed into one message) gives each rank all L tokens of H/U heads; attention runs locally on those heads (or as Ring
attention across groups when composed); one more all-to-all returns the output to sequence shards. So a forward is
exactly 2 all-to-alls per attention call and its backward another 2: the adjoint of an all-to-all with equal splits
is the same exchange applied to the gradient.
"""

from __future__ import annotations

import torch
import torch.distributed as dist


def check_heads(num_heads: int, ulysses: int) -> None:
    """Raise a clear error when the head count cannot be split over the Ulysses degree."""
    if ulysses < 1 or num_heads % ulysses:
        raise ValueError(f"Ulysses degree {ulysses} does not divide the model's {num_heads} attention heads "
                         f"(num_heads % ulysses must be 0; e.g. the 1.3B model's 12 heads allow 1, 2, 3, 4, 6, 12)")


class _AllToAll(torch.autograd.Function):
    """all_to_all_single with equal splits over dim 0; its backward is the same exchange of the gradient."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, group) -> torch.Tensor:
        ctx.group = group
        x = x.contiguous()
        out = torch.empty_like(x, memory_format=torch.contiguous_format)
        dist.all_to_all_single(out, x, group=group)
        return out

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        grad = grad.contiguous()  # gradients may arrive with any strides; the exchange works on flat memory
        out = torch.empty_like(grad, memory_format=torch.contiguous_format)
        dist.all_to_all_single(out, grad, group=ctx.group)
        return out, None


def all_to_all(x: torch.Tensor, group) -> torch.Tensor:
    """Autograd-aware all-to-all: chunk i of dim 0 goes to rank i, chunk i of the result came from rank i."""
    return _AllToAll.apply(x, group)


def seq_to_heads(x: torch.Tensor, group, size: int) -> torch.Tensor:
    """[..., S, H, D] sequence shard (leading dims kept) → [..., size·S, H/size, D]: all tokens of this rank's heads."""
    *lead, s, h, d = x.shape
    x = x.reshape(*lead, s, size, h // size, d).movedim(-3, 0)  # [U, ..., S, H/U, D]: chunk u goes to rank u
    x = all_to_all(x.contiguous(), group)  # chunk u came from rank u: tokens u·S..(u+1)·S
    return x.movedim(0, -4).reshape(*lead, size * s, h // size, d)


def heads_to_seq(x: torch.Tensor, group, size: int) -> torch.Tensor:
    """Inverse of seq_to_heads: [..., size·S, H/size, D] → [..., S, H, D]."""
    *lead, ls, hl, d = x.shape
    s = ls // size
    x = x.reshape(*lead, size, s, hl, d).movedim(-4, 0)  # chunk u (tokens of rank u) goes back to rank u
    x = all_to_all(x.contiguous(), group)  # chunk u holds head group u of this rank's tokens
    return x.movedim(0, -3).reshape(*lead, s, size * hl, d)


class UlyssesAttention(torch.nn.Module):
    """Attention over a sequence sharded across a Ulysses group, wrapping an inner kernel on [B, L, H/U, D].

    Called with this rank's [B, L/U, H, D] q, k, v and the global key lengths; q, k and v travel in one all-to-all.
    The inner kernel sees the whole sequence (of this group) and H/U heads, so `k_lens` keeps its global meaning.
    """

    def __init__(self, inner: torch.nn.Module, group, size: int):
        super().__init__()
        self.inner, self.group, self.size = inner, group, size

    def forward(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
                k_lens: torch.Tensor | None = None) -> torch.Tensor:
        """[B, L/U, H, D] in and out."""
        if q.shape[2] % self.size:
            check_heads(q.shape[2], self.size)
        q, k, v = common_dtype(q, k, v)
        qkv = seq_to_heads(torch.stack([q, k, v]), self.group, self.size)
        out = self.inner(qkv[0], qkv[1], qkv[2], k_lens)
        return heads_to_seq(out, self.group, self.size)


def common_dtype(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor):
    """q, k, v in the dtype attention computes in: autocast's when it is on (as SDPA would), else their promotion."""
    dev = q.device.type
    if torch.is_autocast_enabled(dev):
        dtype = torch.get_autocast_dtype(dev)
    else:
        dtype = torch.promote_types(torch.promote_types(q.dtype, k.dtype), v.dtype)
    return q.to(dtype), k.to(dtype), v.to(dtype)
