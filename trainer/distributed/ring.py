"""Ring attention: each rank keeps its query block and K/V blocks travel around the ring (bidirectional, exact).

    forward, on ring rank r of R:  for step i = 0..R-1 the rank holds the K/V block of rank (r - i) mod R;
        it starts sending that block to r+1 (and receiving the next from r-1) with batch_isend_irecv, computes
        attention of its queries against the block it holds (output + log-sum-exp), merges it into the running
        result in fp32 (out·e^(lse_old - lse_new) + out_i·e^(lse_i - lse_new)), then waits for the transfer.
        → R-1 rounds of K/V transfers (K and V packed in one message).
    backward: the same K/V tour again (R-1 rounds) to recompute each block's gradients from the saved global output
        and log-sum-exp (what flash attention's backward takes); dQ accumulates at home, while a dK/dV buffer rides
        along with its K/V block collecting every rank's contribution and finally returns to the block's owner.
        → R rounds of dK/dV transfers.

A bidirectional DiT needs no zig-zag: every (query block, key block) pair costs the same. Keys past a sample's true
length (`k_lens`, global positions) are left out on whichever rank holds them: a block is cut to its valid keys per
sample (no mask tensor), and a block with none contributes nothing (log-sum-exp -inf).

Block kernels: `MathKernel` (explicit fp32 softmax, exact; CPU tests and fp32 runs), `CudnnKernel` (cuDNN's fused
attention ops with log-sum-exp: the kernel SDPA itself picks on Hopper, so the ring's blocks run as fast as one GPU's
attention; CUDA bf16/fp16, the default there), `FlashKernel` (torch's flash attention ops, CUDA bf16/fp16; ~1.6×
slower than cuDNN on H200 at 720p shapes), `CpuFlashKernel` (torch's CPU flash ops: the same op-based path, testable
without a GPU).
"""

from __future__ import annotations

import math

import torch
import torch.distributed as dist

from trainer.distributed.ulysses import common_dtype

# ----------------------------------------------------------------------------------------------------------------
# Block kernels: attention of q [B, H, Lq, D] against one key block k, v [B, H, Lk, D], returning the output and
# the fp32 log-sum-exp [B, H, Lq]; backward takes the GLOBAL output and log-sum-exp, so that each block's gradients
# are its exact share of the full attention's gradients.


class MathKernel:
    """Explicit fp32 softmax attention with its log-sum-exp (exact reference; any device)."""

    name = "math"

    def forward(self, q, k, v, scale):
        """(out fp32, lse fp32, meta=None)."""
        with torch.autocast(q.device.type, enabled=False):  # fp32 means fp32, even inside a bf16 autocast region
            s = torch.matmul(q.float(), k.float().transpose(-1, -2)) * scale
            lse = torch.logsumexp(s, dim=-1)
            out = torch.matmul(torch.exp(s - lse[..., None]), v.float())
        return out, lse, None

    def backward(self, dout, q, k, v, out, lse, scale, meta):
        """(dq, dk, dv) of this block, in fp32."""
        with torch.autocast(q.device.type, enabled=False):
            qf, kf, vf, dof = q.float(), k.float(), v.float(), dout.float()
            p = torch.exp(torch.matmul(qf, kf.transpose(-1, -2)) * scale - lse[..., None])
            dv = torch.matmul(p.transpose(-1, -2), dof)
            dp = torch.matmul(dof, vf.transpose(-1, -2))
            delta = (dof * out.float()).sum(-1, keepdim=True)
            ds = p * (dp - delta)
            return torch.matmul(ds, kf) * scale, torch.matmul(ds.transpose(-1, -2), qf) * scale, dv


class FlashKernel:
    """torch's CUDA flash attention (aten._scaled_dot_product_flash_attention and its backward), bf16/fp16."""

    name = "flash"

    def forward(self, q, k, v, scale):
        """(out in q's dtype, lse fp32, meta for the backward)."""
        out, lse, cq, ck, mq, mk, seed, offset, _ = torch.ops.aten._scaled_dot_product_flash_attention(
            q, k, v, 0.0, False, False, scale=scale)
        return out, lse, (cq, ck, mq, mk, seed, offset)

    def backward(self, dout, q, k, v, out, lse, scale, meta):
        """(dq, dk, dv) of this block, in q's dtype."""
        cq, ck, mq, mk, seed, offset = meta
        return torch.ops.aten._scaled_dot_product_flash_attention_backward(
            dout.to(q.dtype), q, k, v, out.to(q.dtype), lse, cq, ck, mq, mk, 0.0, False, seed, offset, scale=scale)


class CudnnKernel:
    """cuDNN's fused attention (aten._scaled_dot_product_cudnn_attention and its backward), bf16/fp16 on CUDA.

    Its log-sum-exp comes as [B, H, L, 1] fp32 (natural log); the ring works on [B, H, L] and hands it back with the
    trailing 1 to the backward, which takes the GLOBAL output and log-sum-exp like flash's."""

    name = "cudnn"

    def forward(self, q, k, v, scale):
        """(out in q's dtype, lse fp32 [B, H, L], meta for the backward)."""
        q, k, v = q.contiguous(), k.contiguous(), v.contiguous()
        out, lse, cq, ck, mq, mk, seed, offset, _ = torch.ops.aten._scaled_dot_product_cudnn_attention(
            q, k, v, None, True, 0.0, False, False, scale=scale)
        return out, lse.reshape(lse.shape[:3]).float(), (cq, ck, mq, mk, seed, offset)

    def backward(self, dout, q, k, v, out, lse, scale, meta):
        """(dq, dk, dv) of this block, in q's dtype."""
        cq, ck, mq, mk, seed, offset = meta
        q, k, v = q.contiguous(), k.contiguous(), v.contiguous()
        return torch.ops.aten._scaled_dot_product_cudnn_attention_backward(
            dout.to(q.dtype).contiguous(), q, k, v, out.to(q.dtype).contiguous(), lse.unsqueeze(-1).contiguous(),
            seed, offset, None, cq, ck, mq, mk, 0.0, False, scale=scale)


class CpuFlashKernel:
    """torch's CPU flash attention ops with log-sum-exp (the op-based path of FlashKernel, runnable on CPU)."""

    name = "cpu_flash"

    def forward(self, q, k, v, scale):
        """(out, lse fp32, meta=None)."""
        out, lse = torch.ops.aten._scaled_dot_product_flash_attention_for_cpu(q, k, v, 0.0, False, scale=scale)
        return out, lse.float(), None

    def backward(self, dout, q, k, v, out, lse, scale, meta):
        """(dq, dk, dv) of this block."""
        return torch.ops.aten._scaled_dot_product_flash_attention_for_cpu_backward(
            dout.to(q.dtype).contiguous(), q, k, v, out.to(q.dtype).contiguous(), lse.to(q.dtype), 0.0, False,
            scale=scale)


def default_kernel(device: torch.device, dtype: torch.dtype):
    """The block kernel for a device and dtype: on CUDA in bf16/fp16 cuDNN's (flash where cuDNN is missing or the
    GPU is older than Ampere), the exact fp32 math otherwise."""
    if device.type == "cuda" and dtype in (torch.bfloat16, torch.float16):
        if torch.backends.cudnn.is_available() and torch.cuda.get_device_capability(device)[0] >= 8:
            return CudnnKernel()
        return FlashKernel()
    return MathKernel()


KERNELS = {"math": MathKernel, "cudnn": CudnnKernel, "flash": FlashKernel, "cpu_flash": CpuFlashKernel}


# ----------------------------------------------------------------------------------------------------------------
# Keys valid per sample and block, and a block computed on its valid keys only


def valid_keys(k_lens: list[int] | None, batch: int, block: int, index: int) -> list[int]:
    """How many keys of key block `index` (global positions index·block ...) each sample really has."""
    if k_lens is None:
        return [block] * batch
    return [max(0, min(block, int(n) - index * block)) for n in k_lens]


def _groups(valid: list[int]) -> dict[int, list[int]]:
    """Samples grouped by their number of valid keys (one kernel call per group)."""
    out: dict[int, list[int]] = {}
    for b, n in enumerate(valid):
        out.setdefault(n, []).append(b)
    return out


def _block_forward(kernel, q, k, v, scale, valid):
    """Attention of q against one K/V block restricted to each sample's valid keys: (out fp32, lse fp32, metas)."""
    lk = k.shape[2]
    if all(n == lk for n in valid):
        out, lse, meta = kernel.forward(q, k, v, scale)
        return out.float(), lse, {lk: meta}
    b, h, lq, d = q.shape
    out = q.new_zeros((b, h, lq, d), dtype=torch.float32)
    lse = q.new_full((b, h, lq), float("-inf"), dtype=torch.float32)
    metas = {}
    for n, idx in _groups(valid).items():
        if n == 0:
            continue  # no valid key in this block for these samples: contributes nothing
        ix = torch.tensor(idx, device=q.device)
        o, l, metas[n] = kernel.forward(q[ix], k[ix, :, :n].contiguous(), v[ix, :, :n].contiguous(), scale)
        out[ix], lse[ix] = o.float(), l.float()
    return out, lse, metas


def _block_backward(kernel, dout, q, k, v, out, lse, scale, valid, metas):
    """Gradients (fp32) of q, k, v from one K/V block, keys past each sample's length getting zero."""
    lk = k.shape[2]
    if all(n == lk for n in valid):
        return tuple(g.float() for g in kernel.backward(dout, q, k, v, out, lse, scale, metas[lk]))
    dq = torch.zeros(q.shape, dtype=torch.float32, device=q.device)
    dk = torch.zeros(k.shape, dtype=torch.float32, device=q.device)
    dv = torch.zeros(v.shape, dtype=torch.float32, device=q.device)
    for n, idx in _groups(valid).items():
        if n == 0:
            continue
        ix = torch.tensor(idx, device=q.device)
        gq, gk, gv = kernel.backward(dout[ix].contiguous(), q[ix], k[ix, :, :n].contiguous(),
                                     v[ix, :, :n].contiguous(), out[ix].contiguous(), lse[ix].contiguous(), scale,
                                     metas[n])
        dq[ix] = gq.float()
        dk[ix, :, :n] = gk.float()
        dv[ix, :, :n] = gv.float()
    return dq, dk, dv


def merge_(out: torch.Tensor, lse: torch.Tensor, out_i: torch.Tensor, lse_i: torch.Tensor):
    """Merge a block's (out_i, lse_i) into the running fp32 `out` IN PLACE and return (out, new lse).

    new_lse = log(e^lse + e^lse_i); out = out·e^(lse - new_lse) + out_i·e^(lse_i - new_lse): two passes over the
    [B, H, L, D] output (a scale, then a fused multiply-add), the rest on [B, H, L]. Rows with no keys on either side
    (-inf, -inf) stay zero with lse -inf."""
    new_lse = torch.logaddexp(lse, lse_i)
    ref = torch.where(torch.isinf(new_lse), torch.zeros_like(new_lse), new_lse)
    out.mul_(torch.exp(lse - ref).unsqueeze(-1))
    out.addcmul_(out_i, torch.exp(lse_i - ref).unsqueeze(-1))
    return out, new_lse


def merge(out: torch.Tensor, lse: torch.Tensor, out_i: torch.Tensor, lse_i: torch.Tensor):
    """Merge a block's (out_i, lse_i) into the running (out, lse), in fp32, into new tensors; -inf is handled."""
    return merge_(out.float().clone(), lse.float(), out_i, lse_i.float())


# ----------------------------------------------------------------------------------------------------------------
# The ring


class _Ring:
    """Point-to-point neighbours of this rank in a ring group (global ranks, as batch_isend_irecv wants)."""

    def __init__(self, group):
        self.group = group
        self.size = dist.get_world_size(group)
        self.rank = dist.get_rank(group)
        self.next = dist.get_global_rank(group, (self.rank + 1) % self.size)
        self.prev = dist.get_global_rank(group, (self.rank - 1) % self.size)

    def start(self, send: torch.Tensor, recv: torch.Tensor):
        """Send `send` to the next rank and receive `recv` from the previous one; returns the requests to wait on."""
        ops = [dist.P2POp(dist.isend, send, self.next, self.group),
               dist.P2POp(dist.irecv, recv, self.prev, self.group)]
        return dist.batch_isend_irecv(ops)


def _wait(reqs) -> None:
    for r in reqs:
        r.wait()


class _RingAttention(torch.autograd.Function):
    """Ring attention over q, k, v in [B, H, L, D] layout (see the module docstring)."""

    @staticmethod
    def forward(ctx, q, k, v, k_lens, group, kernel, scale):
        ring = _Ring(group)
        b, h, lb, d = k.shape
        kv = torch.stack([k, v]).contiguous()
        out = lse = None
        metas = []
        for i in range(ring.size):
            src = (ring.rank - i) % ring.size  # whose K/V block this rank holds now
            if i < ring.size - 1:
                nxt = torch.empty_like(kv)
                reqs = ring.start(kv, nxt)  # the next block travels while this one is computed
            valid = valid_keys(k_lens, b, lb, src)
            o_i, l_i, meta = _block_forward(kernel, q, kv[0], kv[1], scale, valid)
            metas.append(meta)
            out, lse = (o_i, l_i) if out is None else merge_(out, lse, o_i, l_i)
            if i < ring.size - 1:
                _wait(reqs)
                kv = nxt
        ctx.save_for_backward(q, k, v, out, lse)
        ctx.k_lens, ctx.group, ctx.kernel, ctx.scale, ctx.metas = k_lens, group, kernel, scale, metas
        return out.to(q.dtype)

    @staticmethod
    def backward(ctx, dout):
        q, k, v, out, lse = ctx.saved_tensors
        ring = _Ring(ctx.group)
        b, h, lb, d = k.shape
        kv = torch.stack([k, v]).contiguous()
        if not isinstance(ctx.kernel, MathKernel):
            out, dout = out.to(q.dtype), dout.to(q.dtype)  # what the fused kernels take, cast once
        out, dout = out.contiguous(), dout.contiguous()
        dq = torch.zeros(q.shape, dtype=torch.float32, device=q.device)
        dkv = None  # the travelling dK/dV buffer of the block this rank holds
        dkv_reqs = None
        for i in range(ring.size):
            src = (ring.rank - i) % ring.size
            if i < ring.size - 1:
                nxt = torch.empty_like(kv)
                kv_reqs = ring.start(kv, nxt)
            valid = valid_keys(ctx.k_lens, b, lb, src)
            gq, gk, gv = _block_backward(ctx.kernel, dout, q, kv[0], kv[1], out, lse, ctx.scale, valid,
                                         ctx.metas[i])
            dq += gq
            if dkv_reqs is not None:
                _wait(dkv_reqs)  # the buffer of block src, with the contributions of ranks src..r-1
                dkv = dkv_in
                dkv[0] += gk
                dkv[1] += gv
            else:
                dkv = torch.stack([gk, gv])
            if ring.size > 1:
                dkv_in = torch.empty_like(dkv)
                dkv_reqs = ring.start(dkv, dkv_in)  # on to the next rank (after the last step: home to its owner)
            else:
                dkv_in = dkv
            if i < ring.size - 1:
                _wait(kv_reqs)
                kv = nxt
        if dkv_reqs is not None:
            _wait(dkv_reqs)
        return dq.to(q.dtype), dkv_in[0].to(k.dtype), dkv_in[1].to(v.dtype), None, None, None, None


def ring_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, group, k_lens=None, kernel=None,
                   scale: float | None = None) -> torch.Tensor:
    """Exact attention of this rank's queries against the keys of every rank of `group` ([B, H, L, D] layout).

    Rank j of the group holds key positions j·L ... (j+1)·L - 1; `k_lens` (per sample, global) masks keys beyond a
    sample's true length. Returns [B, H, L, D] in q's dtype.
    """
    kernel = kernel or default_kernel(q.device, q.dtype)
    scale = 1.0 / math.sqrt(q.shape[-1]) if scale is None else scale
    lens = None if k_lens is None else [int(n) for n in k_lens.tolist()]
    return _RingAttention.apply(q, k, v, lens, group, kernel, scale)


class RingAttention(torch.nn.Module):
    """The ring as a drop-in attention kernel on [B, L, H, D] tensors (signature of the model's SDPAttention)."""

    def __init__(self, group, kernel=None):
        super().__init__()
        self.group, self.kernel = group, kernel

    def forward(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
                k_lens: torch.Tensor | None = None) -> torch.Tensor:
        """[B, L/R, H, D] queries, keys, values of this rank → [B, L/R, H, D]."""
        q, k, v = common_dtype(q, k, v)
        out = ring_attention(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2), self.group, k_lens,
                             self.kernel)
        return out.transpose(1, 2)
