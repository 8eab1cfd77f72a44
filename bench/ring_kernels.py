"""Ring attention's block kernels on one GPU: exactness against the fp32 math kernel, and the time of one block.

The ring computes, per attention call, R blocks of (L/R queries × L/R keys) and merges them by log-sum-exp; its
speed is the block kernel's. This compares, at the 1.3B model's Ring-2 block for 720×1280×81 (37,800 × 37,800
tokens, 12 heads of 128), forward and backward of:

- `cudnn`: aten._scaled_dot_product_cudnn_attention (+ backward), what trainer.distributed.ring uses by default;
- `flash`: aten._scaled_dot_product_flash_attention (+ backward), the ring's kernel before;
- `sdpa`: F.scaled_dot_product_attention forward + autograd backward (what one GPU runs; no log-sum-exp exposed).

    python bench/ring_kernels.py --out bench/_out/ring_kernels.json

Checks first (small shapes, bf16 vs fp32 math, including blocks cut to each sample's valid keys and the backward
from a global output/log-sum-exp); exits non-zero if a kernel disagrees. Prints one JSON object.
"""

from __future__ import annotations

import argparse
import json
import os
import sys

import torch
import torch.nn.functional as F

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from trainer.distributed.ring import KERNELS, MathKernel, _block_backward, _block_forward, merge  # noqa: E402


def check(name: str) -> dict:
    """Max abs difference of a fused kernel (bf16) from fp32 math: one block, cut blocks, and a 2-block merge."""
    g = torch.Generator(device="cuda").manual_seed(0)
    q, k, v, dout = (torch.randn(2, 4, 256, 64, generator=g, device="cuda") for _ in range(4))
    scale = 64 ** -0.5
    kern = KERNELS[name]()
    worst = {}
    for valid in ([256, 256], [100, 256]):
        res = {}
        for label, kn in (("math", MathKernel()), (name, kern)):
            qb, kb, vb = (t.bfloat16() for t in (q, k, v))
            o, lse, metas = _block_forward(kn, qb, kb, vb, scale, valid)
            fused = label != "math"
            grads = _block_backward(kn, dout.bfloat16() if fused else dout, qb, kb, vb, o.bfloat16() if fused else o,
                                    lse, scale, valid, metas)
            res[label] = (o.float(), lse, *grads)
        for part, a, b in zip(("out", "lse", "dq", "dk", "dv"), res[name], res["math"]):
            worst[f"{part}_{'cut' if valid[0] != 256 else 'full'}"] = float((a.float() - b.float()).abs().max())
    # two key blocks merged by log-sum-exp vs one call over all keys
    kk, vv = torch.cat([k, k.flip(2)], 2).bfloat16(), torch.cat([v, v.flip(2)], 2).bfloat16()
    o1, l1, _ = _block_forward(kern, q.bfloat16(), kk[:, :, :256], vv[:, :, :256], scale, [256, 256])
    o2, l2, _ = _block_forward(kern, q.bfloat16(), kk[:, :, 256:], vv[:, :, 256:], scale, [256, 256])
    merged, _ = merge(o1, l1, o2, l2)
    full = F.scaled_dot_product_attention(q, kk.float(), vv.float(), scale=scale)
    worst["merged_vs_full_fp32"] = float((merged - full).abs().max())
    return worst


def timed(fn, iters: int) -> float:
    """Milliseconds per call (CUDA events, after 2 warm-up calls)."""
    for _ in range(2):
        fn()
    torch.cuda.synchronize()
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    start.record()
    for _ in range(iters):
        fn()
    end.record()
    torch.cuda.synchronize()
    return start.elapsed_time(end) / iters


def speed(tokens: int, heads: int, head_dim: int, iters: int) -> dict:
    """Forward and forward+backward ms of one (tokens × tokens) block per kernel, bf16, and TFLOP/s."""
    g = torch.Generator(device="cuda").manual_seed(0)
    q, k, v, dout = (torch.randn(1, heads, tokens, head_dim, generator=g, device="cuda", dtype=torch.bfloat16)
                     for _ in range(4))
    scale = head_dim ** -0.5
    flops_fwd = 4 * tokens * tokens * head_dim * heads
    out = {}
    for name in ("cudnn", "flash"):
        kern = KERNELS[name]()
        o, lse, meta = kern.forward(q, k, v, scale)
        fwd = timed(lambda: kern.forward(q, k, v, scale), iters)
        bwd = timed(lambda: kern.backward(dout, q, k, v, o, lse, scale, meta), iters)
        out[name] = {"fwd_ms": round(fwd, 2), "bwd_ms": round(bwd, 2),
                     "fwd_tflops": round(flops_fwd / fwd / 1e9, 1), "bwd_tflops": round(2.5 * flops_fwd / bwd / 1e9, 1)}
    qs, ks, vs = (t.detach().requires_grad_() for t in (q, k, v))

    def sdpa_fwd():
        with torch.no_grad():
            return F.scaled_dot_product_attention(q, k, v, scale=scale)

    def sdpa_fwd_bwd():
        F.scaled_dot_product_attention(qs, ks, vs, scale=scale).backward(dout)

    fwd = timed(sdpa_fwd, iters)
    both = timed(sdpa_fwd_bwd, iters)
    out["sdpa"] = {"fwd_ms": round(fwd, 2), "bwd_ms": round(both - fwd, 2),
                   "fwd_tflops": round(flops_fwd / fwd / 1e9, 1),
                   "bwd_tflops": round(2.5 * flops_fwd / (both - fwd) / 1e9, 1)}
    return out


def main() -> None:
    """Checks, then timings; one JSON object on stdout (and in --out)."""
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--tokens", type=int, default=37_800, help="block length (Ring 2 of 75,600)")
    p.add_argument("--heads", type=int, default=12)
    p.add_argument("--head-dim", type=int, default=128)
    p.add_argument("--iters", type=int, default=5)
    p.add_argument("--out", default=None)
    args = p.parse_args()
    if not torch.cuda.is_available():
        raise SystemExit("bench/ring_kernels.py needs a CUDA GPU")
    res = {"device": torch.cuda.get_device_name(), "torch": torch.__version__,
           "cudnn": torch.backends.cudnn.version(), "checks": {n: check(n) for n in ("cudnn", "flash")}}
    bad = {n: c for n, c in res["checks"].items() if max(c.values()) > 5e-2}
    res["speed"] = speed(args.tokens, args.heads, args.head_dim, args.iters)
    text = json.dumps(res, indent=1)
    print(text, flush=True)
    if args.out:
        os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
        with open(args.out, "w") as f:
            f.write(text + "\n")
    if bad:
        raise SystemExit(f"kernels disagree with fp32 math beyond bf16 precision: {bad}")


if __name__ == "__main__":
    main()
