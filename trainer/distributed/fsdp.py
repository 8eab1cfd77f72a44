"""FSDP2 and activation checkpointing for the Wan DiT, applied from outside the model file.

`apply_parallelism` is the one place a model becomes parallel: context parallelism first (it replaces the
attention kernel and sequence hooks, trainer/distributed/context_parallel.py), then activation checkpointing, then
FSDP2 (`fully_shard` on each block, then the root, over the mesh's "dp_shard_cp" dims; HSDP with dp_replicate).

Mixed precision: parameters stay fp32 (the optimizer's master weights); FSDP2 all-gathers them as bf16 for compute
and reduce-scatters gradients in fp32. Inputs are not cast by FSDP, because the model keeps its residual stream,
timestep features and head in fp32 and casts where it should; the training step runs under bf16 autocast so the
linear layers meet bf16 activations.
"""

from __future__ import annotations

import torch
import torch.nn as nn

from trainer.distributed.mesh import fsdp_mesh


def apply_activation_checkpointing(model: nn.Module, policy: str) -> None:
    """Recompute each block in backward (`policy` "block") or keep all activations ("none")."""
    if policy == "none":
        return
    if policy != "block":
        raise ValueError(f"activation checkpointing policy must be none or block, got {policy!r}")
    from torch.utils.checkpoint import checkpoint

    for block in model.blocks:
        inner = block.forward

        def forward(*args, _inner=inner, **kwargs):
            return checkpoint(_inner, *args, use_reentrant=False, **kwargs)

        # An instance attribute, not a wrapper module: parameter names (and so checkpoints) stay as released.
        block.forward = forward


def apply_compile(model: nn.Module) -> None:
    """torch.compile each block's forward in place (before checkpointing and FSDP2, as torchtitan orders them).

    The bound forward is compiled, not the module, so parameter names (and checkpoints) stay as released; FSDP2's
    hooks run around the compiled region. Shapes that change between phases recompile once each, then dynamo marks
    the sequence dimension dynamic."""
    for block in model.blocks:
        block.forward = torch.compile(block.forward)


def apply_fsdp(model: nn.Module, mesh, bf16: bool, reshard_after_forward: bool = True) -> None:
    """fully_shard every block and the root over the mesh's FSDP dims (bf16 compute, fp32 reduce when `bf16`)."""
    from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard

    mp = MixedPrecisionPolicy(param_dtype=torch.bfloat16 if bf16 else torch.float32, reduce_dtype=torch.float32,
                              cast_forward_inputs=False)
    dp = fsdp_mesh(mesh)
    for block in model.blocks:
        fully_shard(block, mesh=dp, mp_policy=mp, reshard_after_forward=reshard_after_forward)
    # The root keeps its parameters (embeddings, head) gathered after forward: backward needs them at once.
    fully_shard(model, mesh=dp, mp_policy=mp, reshard_after_forward=False)


def apply_context_parallel(model: nn.Module, mesh, parallel) -> None:
    """Context parallelism over the mesh's ring × ulysses dims (trainer.distributed.context_parallel).

    Gradient rule it must keep: every rank of a CP group computes the same full loss (after `leave` gathers the
    output), so a rank's parameter gradient is the contribution of its own tokens; those are summed over the CP
    group and averaged over data-parallel ranks. FSDP2 averages over all of "dp_shard_cp", so the CP code sets the
    divide factor to the data-parallel size (FSDPModule.set_gradient_divide_factor) after FSDP is applied.
    """
    if parallel.ring == 1 and parallel.ulysses == 1:
        return
    try:
        from trainer.distributed.context_parallel import apply_context_parallel as apply_cp
    except ImportError as e:
        raise NotImplementedError("parallel.ring/ulysses > 1 needs trainer.distributed.context_parallel, "
                                  "which this build does not have") from e
    apply_cp(model, mesh, parallel)


def apply_parallelism(model: nn.Module, mesh, parallel, checkpointing: str, bf16: bool,
                      compile_blocks: bool = False) -> nn.Module:
    """Make `model` parallel over `mesh` (None: one process): CP, then per-block torch.compile (optional), then
    activation checkpointing, then FSDP2."""
    if mesh is not None:
        apply_context_parallel(model, mesh, parallel)
    if compile_blocks:
        apply_compile(model)
    apply_activation_checkpointing(model, checkpointing)
    if mesh is not None:
        apply_fsdp(model, mesh, bf16)
    return model
