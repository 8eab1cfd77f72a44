"""Worker processes of the context-parallel tests (tests/test_context_parallel.py): real gloo process groups.

Every worker computes the single-process reference itself (same seeds, same model) and compares its own CP
results against it, raising AssertionError naming what differs; torch.multiprocessing.spawn re-raises it.
"""

from __future__ import annotations

import contextlib
import copy
import os
from collections import Counter
from unittest import mock

import torch
import torch.distributed as dist

from trainer.distributed import context_parallel as cpmod
from trainer.distributed.mesh import ParallelConfig, build_mesh
from trainer.distributed.ring import KERNELS
from trainer.models.dit.model import SDPAttention, WanDiT

RTOL, ATOL = 1e-4, 1e-5


def spawn_main(rank: int, world: int, init_file: str, case: str, kwargs: dict) -> None:
    """mp.spawn entry: join the gloo group, run `case`, leave."""
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world)
    try:
        CASES[case](**kwargs)
    finally:
        dist.destroy_process_group()


def _close(name: str, got: torch.Tensor, want: torch.Tensor, rtol=RTOL, atol=ATOL) -> None:
    if got.shape != want.shape:
        raise AssertionError(f"rank {dist.get_rank()}: {name}: shape {tuple(got.shape)} != {tuple(want.shape)}")
    if not torch.allclose(got, want, rtol=rtol, atol=atol):
        err = (got - want).abs().max().item()
        raise AssertionError(f"rank {dist.get_rank()}: {name} differs (max abs err {err:.3g}, "
                             f"max |want| {want.abs().max().item():.3g})")


@contextlib.contextmanager
def count_collectives():
    """Count the torch.distributed calls made inside (all_to_all_single, batch_isend_irecv ops, all_gather...)."""
    counts: Counter = Counter()

    def wrap(name, fn):
        def inner(*args, **kw):
            counts[name] += 1
            if name == "all_gather_single":
                counts["all_gather_into_tensor"] += 1  # one count for the gather, whatever torch calls it
                counts[name] -= 1
            if name == "batch_isend_irecv":
                counts["p2p_ops"] += len(args[0])
            return fn(*args, **kw)
        return inner

    names = ["all_to_all_single", "batch_isend_irecv", "all_gather_into_tensor", "all_reduce", "all_gather",
             *(["all_gather_single"] if hasattr(dist, "all_gather_single") else []),
             "send", "recv", "broadcast", "reduce_scatter_tensor"]  # isend/irecv: P2POp checks identity
    with contextlib.ExitStack() as stack:
        for n in names:
            stack.enter_context(mock.patch.object(dist, n, wrap(n, getattr(dist, n))))
        yield counts


# ------------------------------------------------------------------------------------------------------------------
# Attention level: CPAttention against full SDPA, outputs and dq/dk/dv


def attention_case(ring: int, ulysses: int, kernel: str, length: int, k_lens: list[int] | None) -> None:
    """CPAttention on this rank's shard of random q, k, v against SDPA on the whole sequence, with gradients."""
    world = dist.get_world_size()
    mesh = build_mesh(ParallelConfig(ring=ring, ulysses=ulysses), world, "cpu")
    groups = cpmod.cp_groups(mesh)
    g = torch.Generator().manual_seed(0)
    b, h, d = 2, 4, 8
    q, k, v, dout = (torch.randn(b, length, h, d, generator=g) for _ in range(4))
    lens = None if k_lens is None else torch.tensor(k_lens)
    ref_in = [t.clone().requires_grad_() for t in (q, k, v)]
    ref = SDPAttention()(*ref_in, lens)
    ref.backward(dout)
    s = length // groups.size
    lo = groups.rank * s
    mine = [t[:, lo:lo + s].clone().requires_grad_() for t in (q, k, v)]
    attn = cpmod.CPAttention(groups, SDPAttention(), KERNELS[kernel]())
    with count_collectives() as counts:
        out = attn(*mine, lens)
        fwd = dict(counts)
        out.backward(dout[:, lo:lo + s])
    bwd = {n: counts[n] - fwd.get(n, 0) for n in counts}
    tol = dict(rtol=RTOL, atol=ATOL) if kernel != "cpu_flash" else dict(rtol=1e-4, atol=2e-5)
    _close("attention output", out, ref[:, lo:lo + s], **tol)
    for name, mine_t, ref_t in zip("qkv", mine, ref_in):
        _close(f"d{name}", mine_t.grad, ref_t.grad[:, lo:lo + s], **tol)
    _check_counts(fwd, bwd, ring, ulysses, layers=1)


def _check_counts(fwd: dict, bwd: dict, ring: int, ulysses: int, layers: int, gathers: int = 0) -> None:
    """The design: per attention call Ulysses does 2 all-to-alls forward and 2 backward; Ring R-1 K/V rounds
    forward, R-1 K/V rounds + R dK/dV rounds backward, each round one isend + one irecv."""
    want_fwd = {"all_to_all_single": 2 * layers if ulysses > 1 else 0,
                "batch_isend_irecv": (ring - 1) * layers, "p2p_ops": 2 * (ring - 1) * layers,
                "all_gather_into_tensor": gathers}
    rounds_bwd = (2 * ring - 1) * layers if ring > 1 else 0
    want_bwd = {"all_to_all_single": 2 * layers if ulysses > 1 else 0,
                "batch_isend_irecv": rounds_bwd, "p2p_ops": 2 * rounds_bwd, "all_gather_into_tensor": 0}
    got_fwd = {n: fwd.get(n, 0) for n in want_fwd}
    got_bwd = {n: bwd.get(n, 0) for n in want_bwd}
    if got_fwd != want_fwd or got_bwd != want_bwd:
        raise AssertionError(f"collectives (ring {ring}, ulysses {ulysses}): forward {got_fwd} != {want_fwd} or "
                             f"backward {got_bwd} != {want_bwd}")
    others = {n: c for n, c in {**fwd, **bwd}.items() if n not in want_fwd and c}
    if others:
        raise AssertionError(f"unexpected collectives: {others}")


# ------------------------------------------------------------------------------------------------------------------
# Model level: a tiny Wan DiT in fp32, one process against CP


SHAPES = {
    "even": [(16, 2, 4, 8)],  # 16 tokens: divisible by 2 and 4
    "uneven": [(16, 3, 2, 6)],  # 9 tokens: padded to 10 (C=2) or 12 (C=4)
    "two_sizes": [(16, 2, 4, 4), (16, 3, 2, 6)],  # 8 and 9 tokens: k_lens masking plus CP padding
}


def tiny_model(seed: int = 0) -> WanDiT:
    """The tiny preset with every weight random (the released init zeroes the head, which would hide gradients)."""
    torch.manual_seed(seed)
    model = WanDiT.from_config("tiny")
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("bias") or name.endswith("head.weight"):
                p.normal_(0, 0.1)
    return model


def tiny_inputs(shapes, seed: int = 1):
    """Latents, timesteps, text and flow targets for one batch."""
    g = torch.Generator().manual_seed(seed)
    x = [torch.randn(*s, generator=g) for s in shapes]
    t = torch.rand(len(shapes), generator=g) * 1000
    ctx = [torch.randn(5 + 3 * i, 32, generator=g) for i in range(len(shapes))]
    target = [torch.randn(*s, generator=g) for s in shapes]
    return x, t, ctx, target


def loss_fn(out, target):
    """Mean squared error per sample, averaged over samples (as flow_loss does)."""
    return torch.stack([((o - y) ** 2).mean() for o, y in zip(out, target)]).mean()


def model_case(ring: int, ulysses: int, shape_names: list[str], steps: int = 2) -> None:
    """Output and every parameter gradient of the tiny DiT under CP equal one process; then AdamW steps agree."""
    world = dist.get_world_size()
    mesh = build_mesh(ParallelConfig(ring=ring, ulysses=ulysses), world, "cpu")
    base = tiny_model()
    cp = cpmod.apply_context_parallel(copy.deepcopy(base), mesh, kernel=KERNELS["math"]())
    layers = base.config.num_layers
    for shape_name in shape_names:
        x, t, ctx, target = tiny_inputs(SHAPES[shape_name])
        base.zero_grad()
        cp.zero_grad()
        ref = base(x, t, ctx)
        loss_fn(ref, target).backward()
        with count_collectives() as counts:
            out = cp(x, t, ctx)
            fwd = dict(counts)
            loss = loss_fn(out, target)
            loss.backward()
        bwd = {n: counts[n] - fwd.get(n, 0) for n in counts}
        _check_counts(fwd, bwd, ring, ulysses, layers, gathers=1)
        for i, (o, r) in enumerate(zip(out, ref)):
            _close(f"{shape_name}: output {i}", o, r)
        cpmod.reduce_gradients(cp, mesh)
        for (name, p), (_, pr) in zip(cp.named_parameters(), base.named_parameters()):
            if pr.grad is None or pr.grad.abs().max() == 0:
                raise AssertionError(f"{shape_name}: reference gradient of {name} is zero: the test could not fail")
            _close(f"{shape_name}: grad {name}", p.grad, pr.grad)
    # A whole training run of a few AdamW steps: same losses, same parameters.
    # Adam's first steps move each weight by about lr·sign(g): eps bounds how much a rounding-level difference of a
    # near-zero gradient can change an update (lr/eps per unit of gradient error).
    opt_ref = torch.optim.AdamW(base.parameters(), lr=1e-3, eps=1e-5, weight_decay=0.01)
    opt_cp = torch.optim.AdamW(cp.parameters(), lr=1e-3, eps=1e-5, weight_decay=0.01)
    for step in range(steps):
        x, t, ctx, target = tiny_inputs(SHAPES["two_sizes"], seed=100 + step)
        for model, opt in ((base, opt_ref), (cp, opt_cp)):
            opt.zero_grad()
            loss = loss_fn(model(x, t, ctx), target)
            loss.backward()
            if model is cp:
                cpmod.reduce_gradients(cp, mesh)
                loss_cp = loss.detach()
            else:
                loss_ref = loss.detach()
            opt.step()
        _close(f"step {step}: loss", loss_cp, loss_ref)
        for (name, p), (_, pr) in zip(cp.named_parameters(), base.named_parameters()):
            _close(f"step {step}: parameter {name}", p.detach(), pr.detach())


def fsdp_case(dp_shard: int, ring: int, ulysses: int) -> None:
    """FSDP2 over dp_shard×cp, the loop unchanged (the CP hooks set FSDP's divide factor to DP at the first forward):
    every gradient equals one process's gradient of the mean loss over the data-parallel ranks' samples (the rule in
    context_parallel's docstring); calling set_fsdp_cp_divide_factor explicitly as well changes nothing."""
    from torch.distributed.fsdp import fully_shard

    from trainer.distributed.mesh import dp_rank_world, fsdp_mesh

    world = dist.get_world_size()
    mesh = build_mesh(ParallelConfig(dp_shard=dp_shard, ring=ring, ulysses=ulysses), world, "cpu")
    base = tiny_model()
    batches = [tiny_inputs(SHAPES["two_sizes"], seed=10 + i) for i in range(dp_shard)]
    base.zero_grad()
    ref_losses = [loss_fn(base(x, t, ctx), y) for x, t, ctx, y in batches]
    torch.stack(ref_losses).mean().backward()
    rank, size = dp_rank_world(mesh)
    assert size == dp_shard
    for explicit in (False, True):
        model = cpmod.apply_context_parallel(copy.deepcopy(base), mesh, kernel=KERNELS["math"]())
        for block in model.blocks:
            fully_shard(block, mesh=fsdp_mesh(mesh))
        fully_shard(model, mesh=fsdp_mesh(mesh))
        if explicit:
            cpmod.set_fsdp_cp_divide_factor(model, mesh)
        x, t, ctx, y = batches[rank]
        loss = loss_fn(model(x, t, ctx), y)
        _close(f"dp rank {rank}: loss", loss.detach(), ref_losses[rank].detach())
        loss.backward()
        for (name, p), (_, pr) in zip(model.named_parameters(), base.named_parameters()):
            _close(f"FSDP (explicit={explicit}) grad {name}", p.grad.full_tensor(), pr.grad)


def sample_case(ring: int, ulysses: int) -> None:
    """trainer.sample.generate (CFG, diffusers Euler) with the tiny DiT under CP gives the single-process latents."""
    from trainer.sample import generate

    base = tiny_model().eval()
    mesh = cpmod.init_inference_mesh(ulysses, ring, "cpu")
    cp = cpmod.apply_context_parallel(copy.deepcopy(base), mesh, kernel=KERNELS["math"]())
    g = torch.Generator().manual_seed(3)
    ctx, neg = [torch.randn(6, 32, generator=g)], [torch.randn(4, 32, generator=g)]
    kw = dict(shape=(16, 3, 2, 6), steps=3, guidance=4.0, solver="euler", seed=5, dtype=torch.float32)
    want = generate(base, ctx, neg, **kw)[0]
    got = generate(cp, ctx, neg, **kw)[0]
    _close("sampled latents", got, want)


def suite_case(cases: list[tuple[str, dict]]) -> None:
    """Several cases in one set of processes (starting processes is the slow part)."""
    for name, kwargs in cases:
        CASES[name](**kwargs)


CASES = {"attention": attention_case, "model": model_case, "fsdp": fsdp_case, "sample": sample_case,
         "suite": suite_case}


def run_spawned(world: int, tmp_path, case: str, **kwargs) -> None:
    """Run `case` on `world` gloo processes (raises the first worker's error)."""
    import torch.multiprocessing as mp

    init = os.path.join(str(tmp_path), f"init-{case}-{world}-{os.getpid()}-{id(kwargs)}")
    mp.spawn(spawn_main, args=(world, init, case, kwargs), nprocs=world, join=True)
