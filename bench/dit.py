"""Wan2.1 DiT 1.3B forward+backward on one GPU: our WanDiT against the public reference, side by side in one run.

    python bench/dit.py --out bench/_out/dit.json                      # GPU; reference from bench/_ref (git-ignored)
    python bench/dit.py --smoke                                        # CPU plumbing check (tiny sizes)

Both models get the same random weights (fp32 master weights, bf16 autocast, as the reference trains), the same latents
([16, F', 60, 104] for 480×832) and a 512-token text. Model FLOPs per step as the reference measurement counts them:
per layer 2·L·(6·d² + 2·d·ffn) + 4·L²·d (self-attention) + 4·L·512·d (cross-attention), × layers, × 3 for forward
and backward, no credit for recomputation. MFU is against a bf16 matmul measured in the same process.

Variants: the reference with its flash-attention call replaced by SDPA (torch's default backend choice) and ours with
(a) the same settings, (b) cuDNN attention, (c) + torch.compile per block, (d) without per-block checkpointing where
the H200's memory holds the activations. A bf16-vs-fp32 accuracy check (reference and ours against an fp32 reference
computation, output and every gradient) and a profile of where the time goes (attention / GEMM / other kernels) are
part of the run. Results go to --out as JSON after each variant, so a run cut short keeps what it measured.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import functools
import gc
import json
import os
import statistics
import sys
import time
import traceback

import torch
import torch.utils.checkpoint

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
sys.path.insert(0, os.path.join(ROOT, "bench"))

from trainer.models.dit.model import PRESETS, DiTConfig, WanDiT  # noqa: E402


def model_flops(tokens: int, cfg: DiTConfig, text_tokens: int = 512) -> float:
    """Forward+backward model FLOPs of one step (the reference measurement's count)."""
    d, f, n = cfg.dim, cfg.ffn_dim, tokens
    per_layer = 2 * n * (6 * d * d + 2 * d * f) + 4 * n * n * d + 4 * n * text_tokens * d
    return 3.0 * per_layer * cfg.num_layers


def matmul_ceiling(device: str, n: int = 8192, reps: int = 10) -> float:
    """bf16 n³ matmul TFLOP/s (median of timed reps after warm-up, random data)."""
    a = torch.randn(n, n, device=device, dtype=torch.bfloat16)
    b = torch.randn(n, n, device=device, dtype=torch.bfloat16)
    for _ in range(3):
        a @ b
    times = []
    for _ in range(reps):
        s, e = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        s.record()
        a @ b
        e.record()
        torch.cuda.synchronize()
        times.append(s.elapsed_time(e) / 1e3)
    return 2 * n**3 / statistics.median(times) / 1e12


def attention_backends(name: str):
    """A context manager pinning SDPA's kernel ('default' leaves torch's choice)."""
    from torch.nn.attention import SDPBackend, sdpa_kernel

    table = {"cudnn": [SDPBackend.CUDNN_ATTENTION], "flash": [SDPBackend.FLASH_ATTENTION],
             "efficient": [SDPBackend.EFFICIENT_ATTENTION], "math": [SDPBackend.MATH]}
    return contextlib.nullcontext() if name == "default" else sdpa_kernel(table[name])


def wrap_blocks(model: torch.nn.Module, checkpoint: bool, compile_blocks: bool) -> None:
    """Per-block torch.compile and/or activation checkpointing, applied to model.blocks in place."""
    for block in model.blocks:
        fwd = block.forward
        if compile_blocks:
            fwd = torch.compile(fwd)
        if checkpoint:
            fwd = functools.partial(torch.utils.checkpoint.checkpoint, fwd, use_reentrant=False)
        block.forward = fwd


def build(kind: str, cfg: DiTConfig, device: str, state: dict | None):
    """The reference WanModel or our WanDiT with `state` loaded (or fresh random weights)."""
    if kind == "ref":
        from wan_reference import load_reference

        mod = load_reference()
        model = mod.WanModel(model_type="t2v", **dataclasses.asdict(cfg))
    else:
        model = WanDiT(**dataclasses.asdict(cfg))
    model = model.to(device)
    if state is not None:
        model.load_state_dict(state, strict=True)
    return model


def inputs(cfg: DiTConfig, frames: int, height: int, width: int, device: str, seed: int = 0):
    """One latent clip, timestep and 512-token text (as a training step sees them)."""
    g = torch.Generator(device="cpu").manual_seed(seed)
    lat = (cfg.in_dim, 1 + (frames - 1) // 4, height // 8, width // 8)
    x = [torch.randn(lat, generator=g).to(device)]
    t = torch.tensor([500.0], device=device)
    ctx = [torch.randn(512, cfg.text_dim, generator=g).to(device)]
    tokens = lat[1] * (lat[2] // cfg.patch_size[1]) * (lat[3] // cfg.patch_size[2])
    return x, t, ctx, tokens


def run_variant(name: str, kind: str, cfg: DiTConfig, state: dict, frames: int, args, attn: str, checkpoint: bool,
                compile_blocks: bool) -> dict:
    """Time forward+backward steps of one variant; returns its figures (or the error)."""
    device = args.device
    torch.cuda.empty_cache()
    torch.cuda.reset_peak_memory_stats()
    model = build(kind, cfg, device, state)
    wrap_blocks(model, checkpoint, compile_blocks)
    x, t, ctx, tokens = inputs(cfg, frames, args.height, args.width, device)
    weight = torch.randn_like(x[0])
    times = []

    def step():
        with attention_backends(attn), torch.autocast("cuda", dtype=torch.bfloat16):
            out = model(x, t, ctx, seq_len=tokens)
        loss = (out[0].float() * weight).mean()
        loss.backward()
        for p in model.parameters():
            p.grad = None

    try:
        warm = args.warmup + (2 if compile_blocks else 0)
        t0 = time.monotonic()
        for _ in range(warm):
            step()
        torch.cuda.synchronize()
        warm_s = time.monotonic() - t0
        for _ in range(args.steps):
            s, e = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            s.record()
            step()
            e.record()
            torch.cuda.synchronize()
            times.append(s.elapsed_time(e) / 1e3)
        sec = statistics.median(times)
        flops = model_flops(tokens, cfg)
        res = dict(variant=name, model=kind, frames=frames, tokens=tokens, attention=attn, checkpoint=checkpoint,
                   compile=compile_blocks, s_per_step=sec, step_times=times, tokens_per_s=tokens / sec,
                   tflops=flops / sec / 1e12, mfu=flops / sec / 1e12 / args.ceiling,
                   peak_gib=torch.cuda.max_memory_allocated() / 2**30, warmup_s=warm_s)
    except torch.OutOfMemoryError as exc:
        res = dict(variant=name, model=kind, frames=frames, tokens=tokens, error=f"OOM: {str(exc)[:200]}")
    except Exception as exc:  # noqa: BLE001 - one variant failing must not lose the others
        res = dict(variant=name, model=kind, frames=frames, tokens=tokens,
                   error=f"{type(exc).__name__}: {exc}"[:500], trace=traceback.format_exc()[-2000:])
    del model
    gc.collect()
    torch.cuda.empty_cache()
    return res


def relative_errors(state: dict, cfg: DiTConfig, args) -> dict:
    """‖bf16 − fp32‖/‖fp32‖ of the output and of all gradients, for the reference and for ours (cuDNN, compiled)."""
    device = args.device
    small = dataclasses.replace(cfg, num_layers=args.check_layers)
    sd = {k: v for k, v in state.items() if not k.startswith("blocks.") or int(k.split(".")[1]) < small.num_layers}
    x, t, ctx, tokens = inputs(small, 17, 240, 416, device, seed=1)
    weight = torch.randn_like(x[0])

    def grads(kind, dtype, attn, compile_blocks):
        model = build(kind, small, device, sd)
        wrap_blocks(model, False, compile_blocks)
        with attention_backends(attn), torch.autocast("cuda", dtype=torch.bfloat16, enabled=dtype == "bf16"):
            if dtype == "fp32":
                torch.backends.cuda.matmul.allow_tf32 = False
                torch.backends.cudnn.allow_tf32 = False
            out = model(x, t, ctx, seq_len=tokens)[0].float()
        (out * weight).sum().backward()
        g = {n: p.grad.detach().float().clone() for n, p in model.named_parameters() if p.grad is not None}
        del model
        return out.detach(), g

    ref_out, ref_g = grads("ref", "fp32", "math", False)

    def err(out, g):
        num = sum(((g[k] - ref_g[k]) ** 2).sum() for k in ref_g)
        den = sum((ref_g[k] ** 2).sum() for k in ref_g)
        return dict(output=((out - ref_out).norm() / ref_out.norm()).item(), grads=(num / den).sqrt().item(),
                    worst_param=max(((g[k] - ref_g[k]).norm() / ref_g[k].norm().clamp_min(1e-30)).item()
                                    for k in ref_g))

    out = {"tokens": tokens, "layers": small.num_layers}
    o, g = grads("ref", "bf16", "default", False)
    out["reference_bf16"] = err(o, g)
    o, g = grads("ours", "bf16", "cudnn", True)
    out["ours_bf16_cudnn_compiled"] = err(o, g)
    o, g = grads("ours", "fp32", "math", False)
    out["ours_fp32"] = err(o, g)
    return out


def profile(kind: str, cfg: DiTConfig, state: dict, frames: int, args, attn: str, checkpoint: bool,
            compile_blocks: bool) -> dict:
    """CUDA time per kernel class (attention, GEMM, other) over one step, after warm-up."""
    from torch.profiler import ProfilerActivity
    from torch.profiler import profile as prof

    device = args.device
    model = build(kind, cfg, device, state)
    wrap_blocks(model, checkpoint, compile_blocks)
    x, t, ctx, tokens = inputs(cfg, frames, args.height, args.width, device)

    def step():
        with attention_backends(attn), torch.autocast("cuda", dtype=torch.bfloat16):
            out = model(x, t, ctx, seq_len=tokens)
        out[0].float().mean().backward()
        for p in model.parameters():
            p.grad = None

    for _ in range(2 + (2 if compile_blocks else 0)):
        step()
    torch.cuda.synchronize()
    with prof(activities=[ProfilerActivity.CUDA]) as p:
        step()
        torch.cuda.synchronize()
    kernels = {}
    for ev in p.key_averages():
        us = getattr(ev, "device_time_total", None) or getattr(ev, "cuda_time_total", 0)
        if us:
            kernels[ev.key] = kernels.get(ev.key, 0) + us
    total = sum(kernels.values())

    def cls(name: str) -> str:
        low = name.lower()
        if any(k in low for k in ("flash", "fmha", "cudnn", "attention", "sdpa", "attn")):
            return "attention"
        if any(k in low for k in ("gemm", "xmma", "cutlass", "nvjet", "matmul", "wgmma", "sm90")):
            return "gemm"
        return "other"

    classes: dict[str, float] = {}
    for k, us in kernels.items():
        classes[cls(k)] = classes.get(cls(k), 0) + us
    top = sorted(kernels.items(), key=lambda kv: -kv[1])[:15]
    del model
    gc.collect()
    torch.cuda.empty_cache()
    return dict(model=kind, frames=frames, attention=attn, checkpoint=checkpoint, compile=compile_blocks,
                gpu_ms=total / 1e3, share={k: v / total for k, v in classes.items()},
                top=[(k[:90], us / 1e3) for k, us in top])


def main(argv: list[str] | None = None) -> int:
    """Run every variant, the accuracy check and the profiles; print a table; write JSON."""
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--frames", type=int, nargs="+", default=[17, 81])
    p.add_argument("--height", type=int, default=480)
    p.add_argument("--width", type=int, default=832)
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--steps", type=int, default=4)
    p.add_argument("--check-layers", type=int, default=4)
    p.add_argument("--skip", nargs="*", default=[], help="variant names to leave out")
    p.add_argument("--no-profile", action="store_true")
    p.add_argument("--no-check", action="store_true")
    p.add_argument("--out", default=os.path.join(ROOT, "bench", "_out", "dit.json"))
    p.add_argument("--smoke", action="store_true", help="CPU: tiny model forward/backward only (plumbing)")
    args = p.parse_args(argv)
    if args.smoke:
        cfg = PRESETS["tiny"]
        model = WanDiT(**dataclasses.asdict(cfg))
        wrap_blocks(model, True, False)
        x, t, ctx, tokens = inputs(cfg, 5, 32, 32, "cpu")
        out = model(x, t, [c[:, : cfg.text_dim][:16] for c in ctx], seq_len=tokens)
        out[0].mean().backward()
        print(json.dumps({"smoke": "ok", "tokens": tokens, "flops": model_flops(tokens, cfg)}))
        return 0
    args.device = "cuda"
    cfg = PRESETS["1.3B"]
    os.makedirs(os.path.dirname(args.out), exist_ok=True)
    result: dict = {"device": torch.cuda.get_device_name(), "torch": torch.__version__, "height": args.height,
                    "width": args.width, "variants": []}
    args.ceiling = matmul_ceiling(args.device)
    result["matmul_tflops"] = args.ceiling
    print(f"bf16 matmul ceiling {args.ceiling:.0f} TFLOP/s", flush=True)
    torch.manual_seed(0)
    ref0 = build("ours", cfg, "cpu", None)
    with torch.no_grad():
        ref0.head.head.weight.normal_(0, 0.02)  # a zero head would leave every other gradient zero
    state = {k: v.clone() for k, v in ref0.state_dict().items()}
    del ref0

    def save():
        with open(args.out, "w") as fh:
            json.dump(result, fh, indent=1)

    plan = []
    for frames in args.frames:
        ckpt = frames >= 49  # the reference measurement's policy: per-block checkpointing at 81 frames only
        plan += [(f"ref_{frames}", "ref", frames, "default", ckpt, False),
                 (f"ours_same_{frames}", "ours", frames, "default", ckpt, False),
                 (f"ours_cudnn_{frames}", "ours", frames, "cudnn", ckpt, False),
                 (f"ours_cudnn_compiled_{frames}", "ours", frames, "cudnn", ckpt, True)]
        if ckpt:
            plan.append((f"ours_cudnn_compiled_nockpt_{frames}", "ours", frames, "cudnn", False, True))
    for name, kind, frames, attn, ckpt, comp in plan:
        if name in args.skip:
            continue
        res = run_variant(name, kind, cfg, state, frames, args, attn, ckpt, comp)
        result["variants"].append(res)
        save()
        if "error" in res:
            print(f"{name:34s} {res['error'][:120]}", flush=True)
        else:
            print(f"{name:34s} {res['s_per_step']:.3f} s/step {res['tokens_per_s']:9.0f} tok/s "
                  f"{res['tflops']:6.1f} TFLOP/s MFU {100 * res['mfu']:5.1f}% peak {res['peak_gib']:6.1f} GiB",
                  flush=True)
    for frames in args.frames:
        rows = {r["variant"]: r for r in result["variants"] if r.get("frames") == frames and "error" not in r}
        base = rows.get(f"ref_{frames}")
        ours = [r for n, r in rows.items() if n.startswith("ours")]
        if base and ours:
            best = max(ours, key=lambda r: r["tokens_per_s"])
            result[f"speedup_{frames}"] = {"best": best["variant"], "x": best["tokens_per_s"] / base["tokens_per_s"]}
            print(f"{frames} frames: best {best['variant']} = {best['tokens_per_s'] / base['tokens_per_s']:.2f}x "
                  f"the reference", flush=True)
    save()
    if not args.no_check:
        try:
            result["accuracy"] = relative_errors(state, cfg, args)
            print("accuracy vs fp32:", json.dumps(result["accuracy"]), flush=True)
        except Exception as exc:  # noqa: BLE001
            result["accuracy"] = {"error": f"{type(exc).__name__}: {exc}"[:500]}
        save()
    if not args.no_profile:
        result["profiles"] = []
        frames = max(args.frames)
        best = result.get(f"speedup_{frames}", {}).get("best", "")
        row = next((r for r in result["variants"] if r["variant"] == best), None)
        todo = [("ref", "default", frames >= 49, False)]
        if row:
            todo.append(("ours", row["attention"], row["checkpoint"], row["compile"]))
        for kind, attn, ckpt, comp in todo:
            try:
                result["profiles"].append(profile(kind, cfg, state, frames, args, attn, ckpt, comp))
                pr = result["profiles"][-1]
                print(f"profile {kind}: {pr['gpu_ms']:.0f} ms GPU;",
                      ", ".join(f"{k} {100 * v:.0f}%" for k, v in pr["share"].items()), flush=True)
            except Exception as exc:  # noqa: BLE001
                result["profiles"].append({"model": kind, "error": f"{type(exc).__name__}: {exc}"[:500]})
            save()
    return 0


if __name__ == "__main__":
    sys.exit(main())
