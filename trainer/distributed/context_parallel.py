"""Context parallelism for the Wan DiT: Ulysses × Ring over one device mesh, exact in forward and gradients.

Layout. The mesh has dims ("dp_replicate", "dp_shard", "ring", "ulysses") (trainer.distributed.mesh). The CP group
of a rank is its ring × ulysses sub-mesh: CP degree C = R·U, CP rank c = ring_rank·U + ulysses_rank, so a Ulysses
group is U consecutive ranks (its all-to-all stays on the fastest links) and the ring joins the Ulysses groups, as
yunchang's USP does. Every rank of a CP group gets the same samples.

The token sequence (after the patch embedding) is padded to a multiple of C and rank c keeps tokens
[c·S, (c+1)·S), S = L_pad / C, with the matching rows of the RoPE table. In each self-attention the Ulysses
all-to-all gives the rank all U·S tokens of its Ulysses group for H/U heads, which form key block `ring_rank` of
the ring; Ring attention then covers the R blocks. Padding keys are masked by their global position (k_lens), so
the result is that of one process. Cross-attention to the replicated text is local: no communication. After the
head, `leave` all-gathers the output over the CP group and cuts the padding off, so every CP rank computes the
same full loss.

Gradient rule. Because every CP rank computes the same full loss but its backward only runs through its own
tokens (the gather's backward returns the local slice; the attention backward sends the other ranks' dK/dV home),
each rank's parameter gradient is the contribution of its own tokens. The true gradient is their SUM over the CP
group; across data-parallel ranks (different samples) it is the MEAN, as usual:

    grad = (1/DP) · Σ_dp Σ_cp grad_rank

- Without FSDP: `reduce_gradients(model, mesh)` after backward (one all-reduce over the world, divided by DP).
- With FSDP2 sharded over the flattened ("dp_shard", "ring", "ulysses") mesh ("dp_shard_cp", mesh.fsdp_mesh), FSDP's
  reduce-scatter averages over DP·C ranks (and HSDP's all-reduce over dp_replicate) by default; dividing the sum by
  DP instead is exactly the rule. `set_fsdp_cp_divide_factor(model, mesh)` does that, and the model's CP sequence
  hooks call it at the first forward when the model has been fully_shard-ed (CP is applied before FSDP, so it
  cannot be done earlier), so a training loop needs no change: do NOT also scale the loss.
"""

from __future__ import annotations

import dataclasses
import math
import os
import warnings
import weakref

import torch
import torch.distributed as dist
import torch.nn as nn

from trainer.distributed.mesh import dp_rank_world
from trainer.distributed.ring import RingAttention
from trainer.distributed.ulysses import UlyssesAttention, check_heads
from trainer.models.dit.model import SequenceHooks, WanDiT


@dataclasses.dataclass
class CPGroups:
    """The process groups and coordinates of this rank's context-parallel group."""

    ring: int
    ulysses: int
    ring_rank: int
    ulysses_rank: int
    ring_group: object
    ulysses_group: object
    cp_group: object

    @property
    def size(self) -> int:
        """CP degree C = ring × ulysses."""
        return self.ring * self.ulysses

    @property
    def rank(self) -> int:
        """This rank's index in its CP group: which token shard it holds."""
        return self.ring_rank * self.ulysses + self.ulysses_rank


def cp_groups(mesh) -> CPGroups | None:
    """The CP groups of `mesh` (None when there is no mesh or the CP degree is 1)."""
    if mesh is None:
        return None
    names = mesh.mesh_dim_names
    ring = mesh["ring"].size() if "ring" in names else 1
    uly = mesh["ulysses"].size() if "ulysses" in names else 1
    if ring * uly == 1:
        return None
    try:
        with warnings.catch_warnings():
            # torch >= 2.10 warns that slicing a flattened dim off the root mesh will change; it works there.
            warnings.filterwarnings("ignore", message=".*flatten.*")
            cp_mesh = mesh["cp"]  # build_mesh flattened ring × ulysses already
    except (KeyError, ValueError, RuntimeError):
        cp_mesh = mesh["ring", "ulysses"]._flatten("cp")
    groups = CPGroups(ring=ring, ulysses=uly, ring_rank=mesh.get_local_rank("ring"),
                      ulysses_rank=mesh.get_local_rank("ulysses"), ring_group=mesh.get_group("ring"),
                      ulysses_group=mesh.get_group("ulysses"), cp_group=cp_mesh.get_group())
    if dist.get_rank(groups.cp_group) != groups.rank:  # the output gather relies on shard index = rank in cp_group
        raise RuntimeError(f"CP group rank {dist.get_rank(groups.cp_group)} != ring_rank·U + ulysses_rank "
                           f"{groups.rank}: unexpected mesh layout")
    return groups


def cp_size(mesh) -> int:
    """The CP degree ring × ulysses of `mesh` (1 without a mesh)."""
    if mesh is None:
        return 1
    names = mesh.mesh_dim_names
    return (mesh["ring"].size() if "ring" in names else 1) * (mesh["ulysses"].size() if "ulysses" in names else 1)


def set_fsdp_cp_divide_factor(model: nn.Module, mesh) -> None:
    """Under FSDP2 over dp_shard×cp (call after fully_shard): FSDP's gradient reduction becomes Σ_cp / DP.

    FSDP divides the summed gradients by its group size DP·C by default; dividing by DP instead is the CP gradient
    rule without touching the loss. gloo has no pre-multiplied sum, so there the division runs after a plain sum.
    """
    c = cp_size(mesh)
    if c == 1:
        return
    from torch.distributed.fsdp import FSDPModule

    dp = float(dp_rank_world(mesh)[1])
    gloo = dist.get_backend() == "gloo"
    for m in model.modules():
        if isinstance(m, FSDPModule):
            m.set_gradient_divide_factor(dp)
            if gloo:
                m.set_force_sum_reduction_for_comms(True)


@torch.no_grad()
def reduce_gradients(model: nn.Module, mesh) -> None:
    """Without FSDP: make every rank's gradients the true ones, Σ over the CP group and mean over DP (in place)."""
    if mesh is None:
        return
    grads = [p.grad for p in model.parameters() if p.grad is not None]
    if not grads:
        return
    flat = torch.cat([g.reshape(-1).float() for g in grads])
    if mesh.size() != dist.get_world_size():
        raise ValueError(f"reduce_gradients wants a mesh over the whole world ({mesh.size()} of "
                         f"{dist.get_world_size()} ranks)")
    dist.all_reduce(flat)  # Σ over every rank = Σ_dp Σ_cp; then / DP
    flat /= dp_rank_world(mesh)[1]
    offset = 0
    for g in grads:
        n = g.numel()
        g.copy_(flat[offset:offset + n].view_as(g))
        offset += n


class CPAttention(nn.Module):
    """Self-attention kernel over a sequence sharded across a CP group: Ulysses inside, Ring across.

    Takes this rank's [B, S, H, D] q, k, v (S = L_pad / C) and the global key lengths; returns [B, S, H, D].
    `local` is the single-process kernel (the model's own SDPAttention) used when there is no ring.
    """

    def __init__(self, groups: CPGroups, local: nn.Module, kernel=None):
        super().__init__()
        self.groups = groups
        inner = RingAttention(groups.ring_group, kernel) if groups.ring > 1 else local
        self.impl = UlyssesAttention(inner, groups.ulysses_group, groups.ulysses) if groups.ulysses > 1 else inner

    def forward(self, q, k, v, k_lens=None):
        """Exact attention of this rank's queries over the whole (padded, masked) sequence."""
        return self.impl(q, k, v, k_lens)


def _all_gather_single():
    """torch's gather-into-one-tensor collective (renamed all_gather_single after 2.11)."""
    return getattr(dist, "all_gather_single", None) or dist.all_gather_into_tensor


class _GatherSequence(torch.autograd.Function):
    """All-gather [B, S, C] shards over the CP group into [B, C·S, C]; backward keeps only this rank's slice."""

    @staticmethod
    def forward(ctx, x, group, size, rank):
        ctx.rank, ctx.shard = rank, x.shape[1]
        buf = x.new_empty((size * x.shape[0], *x.shape[1:]))  # rank-major along dim 0 (what gloo accepts)
        _all_gather_single()(buf, x.contiguous(), group=group)
        return buf.view(size, *x.shape).movedim(0, 1).reshape(x.shape[0], size * x.shape[1], *x.shape[2:])

    @staticmethod
    def backward(ctx, grad):
        # Every CP rank computes the same full loss, so `grad` is already the whole gradient: no reduction.
        s = ctx.shard
        return grad[:, ctx.rank * s:(ctx.rank + 1) * s].contiguous(), None, None, None


class CPSequence(SequenceHooks):
    """Pads the tokens to a multiple of the CP degree, keeps this rank's shard (and RoPE rows), gathers the output.

    At the first forward it also applies the gradient rule to FSDP2, if the model has been sharded since
    (set_fsdp_cp_divide_factor): CP is applied before FSDP, so this is the first moment both exist.
    """

    def __init__(self, groups: CPGroups, model: nn.Module | None = None, mesh=None):
        self.groups = groups
        self._length = None
        self._model = weakref.ref(model) if model is not None else None  # no reference cycle through model.sequence
        self._mesh = mesh
        self._fsdp_ready = model is None

    def enter(self, tokens, rope, k_lens):
        """[B, L, dim] tokens, [2, B, L, 1, D/2] RoPE, k_lens → this rank's [B, S, dim], RoPE rows, global k_lens."""
        if not self._fsdp_ready:
            model = self._model()
            if model is not None:
                set_fsdp_cp_divide_factor(model, self._mesh)  # a no-op without FSDP
            self._fsdp_ready = True
        g = self.groups
        b, length = tokens.shape[:2]
        padded = math.ceil(length / g.size) * g.size
        if padded > length:
            extra = padded - length
            tokens = torch.cat([tokens, tokens.new_zeros(b, extra, *tokens.shape[2:])], dim=1)
            pad = rope.new_zeros(2, b, extra, *rope.shape[3:])
            pad[0] = 1.0  # cos 1, sin 0: no rotation, as the model pads its own table
            rope = torch.cat([rope, pad], dim=2)
            if k_lens is None:
                k_lens = torch.full((b,), length, dtype=torch.long, device=tokens.device)
        if k_lens is not None:
            k_lens = k_lens.cpu()  # read by every attention call to cut key blocks: one device sync here, not 2·layers
        s = padded // g.size
        self._length = length
        lo = g.rank * s
        return tokens[:, lo:lo + s], rope[:, :, lo:lo + s], k_lens

    def leave(self, out):
        """[B, S, C'] head output of this rank → the whole [B, L, C'] (padding cut), the same on every CP rank."""
        g = self.groups
        full = _GatherSequence.apply(out, g.cp_group, g.size, g.rank)
        return full[:, : self._length]


def apply_context_parallel(model: WanDiT, mesh, parallel=None, *, kernel=None) -> WanDiT:
    """Shard `model`'s token sequence over the mesh's ring × ulysses dims (in place; a no-op without CP).

    Replaces every block's `self_attn.attn` with CPAttention and `model.sequence` with CPSequence. Raises a clear
    error when the model's head count is not divisible by the Ulysses degree. `parallel` (a ParallelConfig), when
    given, must agree with the mesh. `kernel` picks Ring's block kernel (trainer.distributed.ring: MathKernel,
    FlashKernel, ...; default by device and dtype).
    """
    if parallel is not None:
        check_heads(model.config.num_heads, parallel.ulysses)
        if mesh is None and parallel.ring * parallel.ulysses > 1:
            raise ValueError(f"parallel.ring={parallel.ring}, parallel.ulysses={parallel.ulysses} need "
                             f"{parallel.ring * parallel.ulysses} processes per sample (run under torchrun)")
        if mesh is not None and (mesh["ring"].size(), mesh["ulysses"].size()) != (parallel.ring, parallel.ulysses):
            raise ValueError(f"mesh ring×ulysses {mesh['ring'].size()}×{mesh['ulysses'].size()} != parallel "
                             f"{parallel.ring}×{parallel.ulysses}")
    if mesh is not None and "ulysses" in mesh.mesh_dim_names:
        check_heads(model.config.num_heads, mesh["ulysses"].size())
    groups = cp_groups(mesh)
    if groups is None:
        return model
    for block in model.blocks:
        local = block.self_attn.attn
        if isinstance(local, CPAttention):
            raise ValueError("apply_context_parallel was already applied to this model")
        block.self_attn.attn = CPAttention(groups, local, kernel)
    model.sequence = CPSequence(groups, model, mesh)
    return model


def init_inference_mesh(ulysses: int, ring: int, device_type: str):
    """For sampling with CP under torchrun: join the process group (NCCL on CUDA, gloo on CPU) and build a mesh
    whose ranks all work on the same videos (world = ulysses × ring). None when both degrees are 1."""
    from trainer.distributed.mesh import ParallelConfig, build_mesh

    parallel = ParallelConfig(dp_shard=1, ring=ring, ulysses=ulysses)
    if ring * ulysses == 1:
        return None
    if not dist.is_initialized():
        if "WORLD_SIZE" not in os.environ:
            raise ValueError(f"ring={ring} × ulysses={ulysses} needs {ring * ulysses} processes: start with "
                             f"torchrun --nproc_per_node {ring * ulysses}")
        dist.init_process_group("nccl" if device_type == "cuda" else "gloo")
    world = dist.get_world_size()
    if world != ring * ulysses:
        raise ValueError(f"sampling runs one CP group: world size {world} != ring×ulysses = {ring}×{ulysses}")
    return build_mesh(parallel, world, device_type)
