"""Context parallelism on 2 GPUs: the 1.3B DiT at 720×1280×81 (75,600 tokens) with Ulysses 2 and Ring 2 vs one GPU.

One command under torchrun with 2 processes. Back to back on the same machine, same model (random init, same
seed), same input, same activation-checkpointing policy (every block recomputed in backward), bf16 autocast with
fp32 master weights, AdamW:

- train: for "single" (rank 0 alone, rank 1 waits), "ulysses2" and "ring2": seconds per step, tokens/s per GPU,
  peak and activation memory per GPU, and one profiled step: GPU time in NCCL kernels by kind (send/recv = the
  Ulysses all-to-all or the Ring P2P; all-reduce = the gradient sum; all-gather = the output gather) and the
  effective bandwidth of the CP exchange (bytes this rank sends per step / its kernel time), the constants of the
  communication model in bench/BENCHMARKS.md.
- sample: seconds per N-step denoise loop of trainer.sample.generate (diffusers UniPC, DiT forwards only: no VAE,
  no text encoder; CFG with --guidance 5) on one GPU vs CP=2, and the CP result's difference from the single-GPU one next to bf16 noise (the same single-GPU loop
  with SDPA's memory-efficient kernel instead of flash).

    torchrun --standalone --nproc_per_node 2 bench/cp.py --out bench/_out/cp.json                 # 2 GPUs
    torchrun --standalone --nproc_per_node 2 bench/cp.py --part train --out bench/_out/cp_train.json
    torchrun --standalone --nproc_per_node 2 bench/cp.py --part sample --out bench/_out/cp_sample.json
    torchrun --standalone --nproc_per_node 2 bench/cp.py --part sample --no-noise-ref --guidance 5 --sample-modes ulysses2
    torchrun --standalone --nproc_per_node 2 bench/cp.py --smoke                                  # CPU, gloo, tiny

Prints one JSON object (rank 0).
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import gc
import json
import math
import os
import sys
import time

import torch
import torch.distributed as dist

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from trainer.distributed import context_parallel as cpmod  # noqa: E402
from trainer.distributed.mesh import ParallelConfig, build_mesh  # noqa: E402
from trainer.models.dit.model import PRESETS, WanDiT  # noqa: E402

GiB = 1024**3
MODES = {"single": None, "ulysses2": ParallelConfig(ulysses=2), "ring2": ParallelConfig(ring=2),
         "ring2_flash": ParallelConfig(ring=2)}


def ring_kernel(mode: str):
    """Ring's block kernel for a mode: `<mode>_flash` pins torch's flash ops; otherwise the device default (cuDNN)."""
    from trainer.distributed.ring import FlashKernel

    return FlashKernel() if mode.endswith("_flash") else None


def log(msg: str) -> None:
    """Progress on stderr (rank 0), so stdout stays one JSON object."""
    if dist.get_rank() == 0:
        print(f"[cp-bench {time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def sync(device) -> None:
    """Wait for the device (CUDA) so wall-clock times are real."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def build_model(preset: str, device, seed: int = 0) -> WanDiT:
    """The DiT with random weights (head included, so outputs are not zero), fp32 master weights on `device`."""
    torch.manual_seed(seed)
    with torch.device(device):
        model = WanDiT.from_config(preset)
    with torch.no_grad():
        torch.nn.init.normal_(model.head.head.weight, std=0.02)
    return model


def checkpoint_blocks(model: WanDiT) -> None:
    """Recompute every block in backward (the same policy for every mode)."""
    from torch.utils.checkpoint import checkpoint

    for block in model.blocks:
        inner = block.forward

        def forward(*args, _inner=inner, **kwargs):
            return checkpoint(_inner, *args, use_reentrant=False, **kwargs)

        block.forward = forward


def inputs(latent_shape, text_dim: int, text_tokens: int, device, seed: int = 1):
    """One sample: latent x0, noise, σ, text embedding (random, fixed seed: the same on every rank)."""
    g = torch.Generator().manual_seed(seed)
    x0 = torch.randn(*latent_shape, generator=g)
    noise = torch.randn(*latent_shape, generator=g)
    text = torch.randn(text_tokens, text_dim, generator=g)
    return x0.to(device), noise.to(device), text.to(device)


def comm_profile(prof, device) -> dict:
    """Time (ms) in communication in one profiled step, by kind: NCCL kernels on GPU, c10d/gloo ops on CPU."""
    kinds = {"send_recv": 0.0, "all_reduce": 0.0, "all_gather": 0.0, "other": 0.0}
    for ev in prof.key_averages():
        name = ev.key
        low = name.lower()
        if device.type == "cuda":
            if "nccl" not in low or not getattr(ev, "device_time_total", 0):
                continue
            t = ev.device_time_total / 1e3
        else:
            if not (low.startswith("c10d::") or low.startswith("gloo:")):
                continue
            t = ev.cpu_time_total / 1e3
        if any(k in low for k in ("sendrecv", "alltoall", "all_to_all", "send", "recv")):
            kinds["send_recv"] += t
        elif "allreduce" in low or "all_reduce" in low:
            kinds["all_reduce"] += t
        elif "allgather" in low or "all_gather" in low:
            kinds["all_gather"] += t
        else:
            kinds["other"] += t
    return {k: round(v, 2) for k, v in kinds.items()}


def cp_bytes_per_step(mode: str, tokens: int, cfg, recompute: bool = True) -> int:
    """Bytes this rank sends in the CP exchange per training step (bf16 activations; Ring's dK/dV in fp32).

    Ulysses U: per attention call 2 all-to-alls forward (q,k,v packed; out) and 2 backward, each rank sending
    (U-1)/U of its L/C·dim slice per tensor. Ring R: R-1 K/V rounds forward (K+V of L/R tokens, dim/U channels),
    R-1 K/V rounds + R dK/dV rounds (fp32) backward. Recompute (activation checkpointing) repeats the forward.
    """
    layers, dim = cfg.num_layers, cfg.dim
    fwd_passes = 2 if recompute else 1
    if mode.startswith("ulysses"):
        u = int(mode[len("ulysses"):])
        unit = tokens // u * dim * 2 * (u - 1) / u  # one [L/U, dim] bf16 tensor, the part that leaves the rank
        return int(layers * unit * (4 * fwd_passes + 4))
    if mode.startswith("ring"):
        r = int(mode[len("ring"):])
        kv = 2 * (tokens // r) * dim * 2
        dkv = 2 * (tokens // r) * dim * 4
        return int(layers * ((r - 1) * kv * (fwd_passes + 1) + r * dkv))
    return 0


def train_mode(mode: str, args, device, latent_shape) -> dict:
    """Train steps of one mode on this rank: timing, memory, one profiled step."""
    parallel = MODES[mode]
    mesh = build_mesh(parallel, dist.get_world_size(), device.type) if parallel else None
    cfg = PRESETS[args.preset]
    model = build_model(args.preset, device)
    cpmod.apply_context_parallel(model, mesh, parallel, kernel=ring_kernel(mode))
    checkpoint_blocks(model)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-5, fused=device.type == "cuda")
    x0, noise, text = inputs(latent_shape, cfg.text_dim, args.text_tokens, device)
    sigma = torch.tensor([0.7], device=device)
    xt = (1 - sigma) * x0 + sigma * noise
    target = noise - x0
    tokens = math.prod(latent_shape[1:]) // math.prod(cfg.patch_size)
    amp = torch.autocast(device.type, dtype=torch.bfloat16, enabled=not args.fp32)
    losses = []

    def step():
        opt.zero_grad(set_to_none=True)
        with amp:
            out = model([xt], sigma * 1000, [text])[0]
        loss = ((out.float() - target) ** 2).mean()
        loss.backward()
        cpmod.reduce_gradients(model, mesh)
        opt.step()
        losses.append(float(loss.detach()))

    for _ in range(args.warmup):
        step()
    sync(device)
    if device.type == "cuda":
        static = torch.cuda.memory_allocated(device)
        torch.cuda.reset_peak_memory_stats(device)
    times = []
    for _ in range(args.steps):
        sync(device)
        t0 = time.perf_counter()
        step()
        sync(device)
        times.append(time.perf_counter() - t0)
    res = {"step_s": round(min(times), 4), "step_s_all": [round(t, 4) for t in times], "tokens": tokens,
           "gpus": 1 if parallel is None else parallel.ring * parallel.ulysses, "first_loss": losses[0]}
    res["tokens_per_s_per_gpu"] = round(tokens / res["step_s"] / res["gpus"], 1)
    if device.type == "cuda":
        peak = torch.cuda.max_memory_allocated(device)
        res.update(peak_gib=round(peak / GiB, 2), static_gib=round(static / GiB, 2),
                   activation_gib=round((peak - static) / GiB, 2))
    from torch.profiler import ProfilerActivity, profile

    acts = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.type == "cuda" else [])
    with profile(activities=acts) as prof:
        step()
        sync(device)
    res["comm_ms"] = comm_profile(prof, device)
    sent = cp_bytes_per_step(mode, tokens, cfg)
    if sent:
        res["cp_bytes_sent_per_step"] = sent
        if res["comm_ms"]["send_recv"] > 0:
            res["cp_effective_GBps"] = round(sent / (res["comm_ms"]["send_recv"] / 1e3) / 1e9, 1)
    del model, opt
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()
    return res


def sample_mode(mode: str, args, device, latent_shape, backend=None) -> tuple[dict, torch.Tensor]:
    """trainer.sample.generate (diffusers UniPC, shift 5; CFG when --guidance != 1), DiT only: seconds, latents."""
    from trainer.sample import generate

    parallel = MODES[mode]
    mesh = build_mesh(parallel, dist.get_world_size(), device.type) if parallel else None
    cfg = PRESETS[args.preset]
    model = build_model(args.preset, device).eval().requires_grad_(False)
    if backend is not None:
        for block in model.blocks:
            block.self_attn.attn.backends = [backend]
    cpmod.apply_context_parallel(model, mesh, parallel, kernel=ring_kernel(mode))
    _, _, text = inputs(latent_shape, cfg.text_dim, args.text_tokens, device)
    negative = [text.flip(0)] if args.guidance != 1.0 else None
    dtype = torch.float32 if args.fp32 else torch.bfloat16

    def run(steps: int):
        return generate(model, [text], negative, latent_shape, steps=steps, shift=5.0, guidance=args.guidance,
                        solver="unipc", seed=0, dtype=dtype)[0]

    run(2)  # warm-up: kernels chosen, memory pools filled
    sync(device)
    t0 = time.perf_counter()
    x = run(args.sample_steps)
    sync(device)
    res = {"seconds": round(time.perf_counter() - t0, 3), "steps": args.sample_steps, "guidance": args.guidance}
    del model
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()
    return res, x


def rel_err(a: torch.Tensor, b: torch.Tensor) -> dict:
    """Max and mean absolute difference, relative to b's RMS."""
    d = (a.float() - b.float()).abs()
    rms = b.float().pow(2).mean().sqrt()
    return {"max_rel": float(d.max() / rms), "mean_rel": float(d.mean() / rms)}


def block_flops_per_token(cfg, tokens: int) -> float:
    """Forward FLOPs of one block per video token: linears (self q,k,v,o; cross q,o; FFN) + both attentions."""
    d, f = cfg.dim, cfg.ffn_dim
    linear = 2 * (4 * d * d + 2 * d * d + 2 * d * f)
    return linear + 4 * tokens * d + 4 * cfg.text_len * d


def comm_model(preset: str, tokens: int, ulysses: int, ring: int, fsdp: int, flops: float, bw_a2a: float,
               bw_ring: float, bw_fsdp: float, recompute: bool = True) -> dict:
    """Per-rank compute and communication time of one training step (one sample per CP group), in seconds.

    compute  = 4·layers·L·f_tok / (C·F)        (forward, recomputed forward, backward = 2 forwards), C = U·R
    ulysses  = layers·12·(L/C)·dim·2·(U-1)/U / B_a2a     (exposed: nothing to overlap the all-to-all with)
    ring     = layers·[(R-1)·3·KV + R·dKV] / B_ring,  KV = 2·(L/R)·(dim/U)·2 B, dKV in fp32 (twice KV)
               hidden behind the block attention while ring_ratio < 1:
    ring_ratio = per-round transfer / per-round block compute = 1.2·F / (B_ring·L/R)   (backward, the worse)
    fsdp     = (2 all-gathers of bf16 params + reduce-scatter of fp32 grads)·(N-1)/N = 8·P·(N-1)/N / B_fsdp,
               hidden behind compute (prefetch) while fsdp < compute.
    exposed  = ulysses + ring·max(0, 1 - 1/ring_ratio) + max(0, fsdp - compute)
    """
    cfg = PRESETS[preset]
    c = ulysses * ring
    layers, dim = cfg.num_layers, cfg.dim
    f_tok = block_flops_per_token(cfg, tokens)
    compute = (4 if recompute else 3) * layers * tokens * f_tok / c / flops
    passes = 3 if recompute else 2
    uly = layers * 4 * passes * (tokens / c) * dim * 2 * (ulysses - 1) / ulysses / bw_a2a if ulysses > 1 else 0.0
    kv = 2 * (tokens / ring) * (dim / ulysses) * 2
    ring_s = layers * ((ring - 1) * passes * kv + ring * 2 * kv) / bw_ring if ring > 1 else 0.0
    ring_ratio = 1.2 * flops / (bw_ring * tokens / ring) if ring > 1 else 0.0
    with torch.device("meta"):  # shapes only: 14B parameters would not fit in host memory
        params = sum(p.numel() for p in WanDiT.from_config(preset).parameters())
    fsdp_s = 8 * params * (fsdp - 1) / fsdp / bw_fsdp if fsdp > 1 else 0.0
    # Ring transfers hide behind the attention of the block in hand: only the part beyond it (ratio > 1) shows.
    ring_exposed = ring_s * max(0.0, 1.0 - 1.0 / ring_ratio) if ring_ratio else 0.0
    exposed = uly + ring_exposed + max(0.0, fsdp_s - compute)
    return {"C": c, "tokens_per_rank": tokens // c, "attention_share": round(4 * tokens * dim / f_tok, 3),
            "compute_s": round(compute, 3), "ulysses_s": round(uly, 3), "ring_s": round(ring_s, 3),
            "ring_ratio": round(ring_ratio, 3), "ring_exposed_s": round(ring_exposed, 3), "fsdp_s": round(fsdp_s, 3),
            "exposed_comm_s": round(exposed, 3), "efficiency": round(compute / (compute + exposed), 3)}


def run_alone(gloo, fn):
    """Run fn on rank 0 only while the other ranks wait (a gloo barrier: no NCCL timeout, no GPU spin)."""
    out = fn() if dist.get_rank() == 0 else None
    dist.barrier(group=gloo)
    return out


def print_comm_model(args) -> None:
    """The 14B model at 720p×81 on 8 GPUs (Ulysses 8, FSDP 8) and 128 (U8 × R2, FSDP 32, DP 4), and beyond."""
    tokens = 21 * 45 * 80
    nv, ib, f = args.bw_nvlink, args.bw_ib, args.flops
    rows = {
        "8 GPUs: U8, FSDP 8 (one node)": comm_model("14B", tokens, 8, 1, 8, f, nv, nv, nv),
        "128 GPUs: U8 x R2, FSDP 32, DP 4": comm_model("14B", tokens, 8, 2, 32, f, nv, ib, ib),
        "U8 x R4 (C=32), FSDP 32": comm_model("14B", tokens, 8, 4, 32, f, nv, ib, ib),
        "U8 x R8 (C=64), FSDP 64": comm_model("14B", tokens, 8, 8, 64, f, nv, ib, ib),
        "U8 x R16 (C=128), FSDP 128": comm_model("14B", tokens, 8, 16, 128, f, nv, ib, ib),
    }
    print(json.dumps({"constants": {"flops": f, "bw_nvlink": nv, "bw_ib": ib, "tokens": tokens}, "rows": rows},
                     indent=1))


def main() -> None:
    """Parse flags, run the parts, print JSON."""
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--smoke", action="store_true", help="tiny model on CPU with gloo (plumbing check)")
    p.add_argument("--part", choices=["all", "train", "sample"], default="all")
    p.add_argument("--modes", default="single,ulysses2,ring2")
    p.add_argument("--frames", type=int, default=81)
    p.add_argument("--height", type=int, default=720)
    p.add_argument("--width", type=int, default=1280)
    p.add_argument("--steps", type=int, default=3, help="timed training steps per mode (the fastest is reported)")
    p.add_argument("--warmup", type=int, default=1)
    p.add_argument("--sample-steps", type=int, default=50)
    p.add_argument("--sample-modes", default="ulysses2,ring2")
    p.add_argument("--guidance", type=float, default=1.0,
                   help="CFG scale for the sampling part (1: one DiT forward per step; 5: Wan's, two)")
    p.add_argument("--noise-ref", action=argparse.BooleanOptionalAction, default=True,
                   help="also sample on one GPU with SDPA's efficient kernel: the size of bf16 noise")
    p.add_argument("--text-tokens", type=int, default=128)
    p.add_argument("--fp32", action="store_true", help="no bf16 autocast")
    p.add_argument("--out", default=None)
    p.add_argument("--comm-model", action="store_true",
                   help="print the communication model (no processes needed) from the constants below")
    p.add_argument("--flops", type=float, default=450e12, help="achieved bf16 FLOP/s per GPU in the DiT")
    p.add_argument("--bw-nvlink", type=float, default=300e9, help="all-to-all / P2P bytes/s per GPU inside a node")
    p.add_argument("--bw-ib", type=float, default=50e9, help="bytes/s per GPU between nodes (400 Gb/s NIC each)")
    args = p.parse_args()
    if args.comm_model:
        print_comm_model(args)
        return

    if args.smoke:
        args.preset = "tiny"
        args.frames, args.height, args.width = 9, 64, 80  # latent 3×8×10 → 60 tokens
        args.steps, args.warmup, args.sample_steps, args.text_tokens = 2, 1, 3, 8
    else:
        args.preset = "1.3B"
    use_cuda = torch.cuda.is_available() and not args.smoke
    if use_cuda:
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", 0)))
        device = torch.device("cuda", torch.cuda.current_device())
    else:
        device = torch.device("cpu")
        torch.set_num_threads(max(1, (os.cpu_count() or 2) // 2))
    dist.init_process_group("nccl" if use_cuda else "gloo", timeout=datetime.timedelta(minutes=30))
    if dist.get_world_size() != 2:
        raise SystemExit(f"bench/cp.py compares 1 GPU with CP=2: run it with 2 processes, not "
                         f"{dist.get_world_size()}")
    gloo = dist.new_group(backend="gloo") if use_cuda else None
    cfg = PRESETS[args.preset]
    latent_shape = (cfg.in_dim, (args.frames - 1) // 4 + 1, args.height // 8, args.width // 8)
    result = {"device": torch.cuda.get_device_name(device) if use_cuda else "cpu", "torch": torch.__version__,
              "preset": args.preset, "video": [args.frames, args.height, args.width],
              "latent": list(latent_shape), "attention_checkpointing": "every block",
              "precision": "fp32" if args.fp32 else "bf16 autocast, fp32 master weights"}
    modes = [m for m in args.modes.split(",") if m]
    if args.part in ("all", "train"):
        train = {}
        for mode in modes:
            log(f"train {mode}")
            if MODES[mode] is None:
                r = run_alone(gloo, lambda: train_mode(mode, args, device, latent_shape))
            else:
                r = train_mode(mode, args, device, latent_shape)
            if dist.get_rank() == 0:
                train[mode] = r
        if "single" in train:
            base = train["single"]
            for mode, r in train.items():
                if mode != "single":
                    r["vs_single_tokens_per_s_per_gpu"] = round(r["tokens_per_s_per_gpu"]
                                                                / base["tokens_per_s_per_gpu"], 3)
                    if "activation_gib" in r and base.get("activation_gib"):
                        r["vs_single_activation_memory"] = round(r["activation_gib"] / base["activation_gib"], 3)
                    r["first_loss_rel_diff"] = abs(r["first_loss"] - base["first_loss"]) / abs(base["first_loss"])
        result["train"] = train
    if args.part in ("all", "sample"):
        sample = {}
        log("sample single")
        single = run_alone(gloo, lambda: sample_mode("single", args, device, latent_shape))
        if args.noise_ref and use_cuda:
            from torch.nn.attention import SDPBackend

            log("sample single (efficient attention: bf16 noise reference)")
            ref = run_alone(gloo, lambda: sample_mode("single", args, device, latent_shape,
                                                      backend=SDPBackend.EFFICIENT_ATTENTION))
        else:
            ref = None
        if dist.get_rank() == 0:
            sample["single"] = single[0]
            if ref is not None:
                sample["single_efficient_attention"] = {**ref[0], "diff_vs_single": rel_err(ref[1], single[1])}
        for mode in [m for m in args.sample_modes.split(",") if m]:
            log(f"sample {mode}")
            r, x = sample_mode(mode, args, device, latent_shape)
            if dist.get_rank() == 0:
                r["speedup_vs_single"] = round(single[0]["seconds"] / r["seconds"], 3)
                r["diff_vs_single"] = rel_err(x, single[1])
                sample[mode] = r
        result["sample"] = sample
    if dist.get_rank() == 0:
        text = json.dumps(result, indent=1)
        print(text, flush=True)
        if args.out:
            os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
            with open(args.out, "w") as f:
                f.write(text + "\n")
    dist.barrier(group=gloo)
    dist.destroy_process_group()


if __name__ == "__main__":
    with contextlib.suppress(KeyboardInterrupt):
        main()
