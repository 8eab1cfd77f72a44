"""CLIP ViT-L/14 image-embedding throughput: our operator path against a naive per-image loop, as a share of the
bf16 matmul ceiling measured on the same card in the same process. Random weights (speed only, no scores).

    python bench/embed.py --device cuda --batches 256 512 --compile      # on the GPU machine
    python bench/embed.py --device cpu --arch tiny-test --batches 8 --iters 2 --matmul-n 256 --naive 4   # smoke

Model FLOPs per image are counted analytically (every matmul of the tower, attention included, 2 FLOPs per MAC)
and cross-checked with torch's FlopCounterMode. Results go to stdout and, when $OUT is set, to $OUT/embed_bench.json.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
import types
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
VENDOR = ROOT / "bench" / "_ref" / "vendor"  # git-ignored copy of pure-python packages for a bare GPU machine


def _ensure_imports() -> dict[str, str]:
    """Fall back to vendored open_clip and a pyarrow type-tag stub when the GPU machine lacks them."""
    notes = {}
    try:
        import open_clip  # noqa: F401
    except ImportError:
        sys.path.insert(0, str(VENDOR))
        notes["open_clip"] = "vendored copy"
    try:
        import pyarrow  # noqa: F401
    except ImportError:
        sys.modules["pyarrow"] = _pyarrow_stub()
        notes["pyarrow"] = "stub (type tags only; the operator path never builds Arrow data itself)"
    return notes


def _pyarrow_stub() -> types.ModuleType:
    pa = types.ModuleType("pyarrow")

    class DataType:
        def __init__(self, name, value=None):
            self.name, self.value = name, value

    pa.DataType = DataType
    for n in ("float32", "float64", "int64", "string", "bool_"):
        setattr(pa, n, (lambda n=n: DataType(n)))
    pa.list_ = lambda t, *a: DataType("list", t)
    pa.large_list = lambda t: DataType("large_list", t)
    t = types.SimpleNamespace(
        is_list=lambda d: d.name == "list", is_large_list=lambda d: d.name == "large_list",
        is_floating=lambda d: d.name in ("float32", "float64"), is_integer=lambda d: d.name == "int64",
        is_boolean=lambda d: d.name == "bool_")
    pa.types = t
    return pa


def sync(device):
    import torch

    if device.type == "cuda":
        torch.cuda.synchronize()


def matmul_ceiling(device, n: int, iters: int = 20) -> float:
    """Measured bf16 dense matmul TFLOP/s at n×n×n."""
    import torch

    dtype = torch.bfloat16
    a = torch.randn(n, n, device=device, dtype=dtype)
    b = torch.randn(n, n, device=device, dtype=dtype)
    for _ in range(3):
        a @ b
    sync(device)
    t0 = time.perf_counter()
    for _ in range(iters):
        a @ b
    sync(device)
    return 2 * n ** 3 * iters / (time.perf_counter() - t0) / 1e12


def analytic_flops(visual) -> float:
    """Forward FLOPs per image of an open_clip VisionTransformer (2 per multiply-accumulate)."""
    conv = visual.conv1
    width = conv.out_channels
    gh, gw = visual.grid_size
    tokens = gh * gw + 1
    layers = len(visual.transformer.resblocks)
    mlp = visual.transformer.resblocks[0].mlp.c_fc.out_features
    patch = conv.in_channels * conv.kernel_size[0] * conv.kernel_size[1]
    per_layer = 2 * tokens * width * (3 * width + width + 2 * mlp) + 2 * 2 * tokens * tokens * width
    out = visual.proj.shape[1] if visual.proj is not None else width
    return 2 * gh * gw * patch * width + layers * per_layer + 2 * width * out


def counted_flops(visual, device, size: int) -> float | None:
    """FLOPs per image as torch's FlopCounterMode sees them (None if unavailable)."""
    import torch

    try:
        from torch.utils.flop_counter import FlopCounterMode

        x = torch.randn(2, 3, size, size, device=device)
        with torch.inference_mode(), FlopCounterMode(display=False) as fc:
            visual(x)
        return fc.get_total_flops() / 2
    except Exception as exc:  # noqa: BLE001
        print(f"FlopCounterMode failed: {exc}", file=sys.stderr)
        return None


def time_forward(bb, batch: int, iters: int, warmup: int) -> float:
    """Images/s of the tower's forward alone on device-resident pixels."""
    import torch

    x = torch.randn(batch, 3, bb.image_size, bb.image_size, device=bb.device)
    if bb.channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    with torch.inference_mode():
        for _ in range(warmup):
            bb.forward(x)
        sync(bb.device)
        t0 = time.perf_counter()
        for _ in range(iters):
            bb.forward(x)
        sync(bb.device)
    return batch * iters / (time.perf_counter() - t0)


def time_operator(op, rows: int, frames: int, h: int, w: int, iters: int, warmup: int) -> float:
    """Images/s through `ClipEmbedding.__call__`: uint8 frame views in, embedding lists out (what Ray calls)."""
    rng = np.random.default_rng(0)
    views = np.empty(rows, dtype=object)
    for i in range(rows):
        views[i] = rng.integers(0, 255, size=(frames, h, w, 3), dtype=np.uint8)
    batch = {"sample_id": np.array([f"s{i}" for i in range(rows)], dtype=object),
             "status": np.array(["kept"] * rows, dtype=object), "frames": views}
    for _ in range(warmup):
        op(batch)
    sync(op.backbone.device)
    t0 = time.perf_counter()
    for _ in range(iters):
        out = op(batch)
    sync(op.backbone.device)
    assert all(s == "kept" for s in out["status"]), out["error"]
    return rows * frames * iters / (time.perf_counter() - t0)


def time_naive(arch: str, device, n: int, h: int, w: int) -> float:
    """Images/s of the usual loop: PIL + torchvision transform per image, fp32 forward of one image at a time."""
    import open_clip
    import torch
    from PIL import Image

    from operators.models.clip import _build_visual

    visual = _build_visual(arch, None, True).eval().to(device)
    pre = open_clip.image_transform(224, is_train=False, mean=open_clip.OPENAI_DATASET_MEAN,
                                    std=open_clip.OPENAI_DATASET_STD)
    rng = np.random.default_rng(0)
    imgs = [rng.integers(0, 255, size=(h, w, 3), dtype=np.uint8) for _ in range(n)]
    with torch.no_grad():
        visual(pre(Image.fromarray(imgs[0]))[None].to(device))
        sync(device)
        t0 = time.perf_counter()
        for img in imgs:
            visual(pre(Image.fromarray(img))[None].to(device)).cpu()
        sync(device)
    return n / (time.perf_counter() - t0)


def _actor_worker(rank, args_dict, batch, rows, calls, barrier, queue):
    """One simulated Ray actor: its own process and model on the shared GPU (fractional num_gpus)."""
    _ensure_imports()
    from operators.clip_embedding import ClipEmbedding

    op = ClipEmbedding(arch=args_dict["arch"], weights=None, allow_random_weights=True, heads=[],
                       device=args_dict["device"], batch_images=batch)
    op.setup()
    op._ready = True
    h, w = args_dict["frame_hw"]
    time_operator(op, rows, args_dict["frames"], h, w, 1, 2)  # compile + warm up before the common start
    barrier.wait()
    t0 = time.perf_counter()
    time_operator(op, rows, args_dict["frames"], h, w, calls, 0)
    queue.put((rank, rows * args_dict["frames"] * calls, t0, time.perf_counter()))


def time_actors(args, n_actors: int, batch: int, calls: int) -> dict:
    """Aggregate images/s of `n_actors` processes sharing one GPU, each running the operator's default config."""
    import torch.multiprocessing as mp

    ctx = mp.get_context("spawn")
    barrier, queue = ctx.Barrier(n_actors), ctx.Queue()
    rows = max(args.rows, 2 * batch // args.frames)
    procs = [ctx.Process(target=_actor_worker, args=(r, vars(args), batch, rows, calls, barrier, queue))
             for r in range(n_actors)]
    for p in procs:
        p.start()
    got = [queue.get(timeout=600) for _ in procs]
    for p in procs:
        p.join()
    images = sum(g[1] for g in got)
    span = max(g[3] for g in got) - min(g[2] for g in got)
    return {"actors": n_actors, "batch_images": batch, "rows_per_call": rows, "img_s": round(images / span, 1)}


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--device", default="cuda")
    p.add_argument("--arch", default="ViT-L-14")
    p.add_argument("--batches", type=int, nargs="+", default=[256, 512])
    p.add_argument("--iters", type=int, default=10)
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--matmul-n", type=int, default=8192)
    p.add_argument("--naive", type=int, default=64, help="images for the naive loop")
    p.add_argument("--compile", action="store_true", help="also time torch.compile'd bf16 tower")
    p.add_argument("--frames", type=int, default=8, help="frames per row (the `frames` view's K)")
    p.add_argument("--rows", type=int, default=64, help="rows per operator call (the Ray batch size)")
    p.add_argument("--variants", choices=["all", "default"], default="all")
    p.add_argument("--actors", type=int, nargs="*", default=[], help="also time N actor processes sharing the GPU")
    p.add_argument("--actor-calls", type=int, default=6)
    p.add_argument("--actor-batch", type=int, default=256, help="batch_images of the simulated actors")
    p.add_argument("--frame-hw", type=int, nargs=2, default=[320, 568], help="frame view size (short side 320)")
    args = p.parse_args()

    notes = _ensure_imports()
    import torch

    from operators.clip_embedding import ClipEmbedding
    from operators.models.clip import ClipBackbone

    device = torch.device(args.device)
    res: dict = {"device": torch.cuda.get_device_name(0) if device.type == "cuda" else "cpu",
                 "torch": torch.__version__, "arch": args.arch, "notes": notes, "runs": []}
    out_dir = Path(os.environ["OUT"]) if os.environ.get("OUT") else None

    def dump():
        print(json.dumps(res, indent=1), flush=True)
        if out_dir:
            (out_dir / "embed_bench.json").write_text(json.dumps(res, indent=1))

    ceiling = matmul_ceiling(device, args.matmul_n)
    res["bf16_matmul_tflops"] = round(ceiling, 3)
    res["matmul_n"] = args.matmul_n
    dump()

    base = ClipBackbone(arch=args.arch, device=args.device)
    base.load()
    flops = analytic_flops(base.visual)
    res["gflops_per_image_analytic"] = round(flops / 1e9, 2)
    counted = counted_flops(base.visual, device, base.image_size)
    res["gflops_per_image_flopcounter"] = None if counted is None else round(counted / 1e9, 2)
    del base
    dump()

    variants = [("autocast bf16 (fp32 weights)", dict(precision="autocast", compile=False), args.batches),
                ("bf16 (open_clip mixed: bf16 weights, fp32 LayerNorm)", dict(precision="bf16", compile=False),
                 args.batches),
                ("pure bf16", dict(precision="pure_bf16", compile=False), args.batches)]
    if args.variants == "default":
        variants = []
    if args.compile or args.variants == "default":
        # Compiling a ViT-L takes ~30 s per input shape, so the compiled variants are timed at fewer batch sizes.
        variants += [("bf16 + torch.compile (operator default on CUDA)", dict(precision="bf16", compile=True),
                      args.batches),
                     ("pure bf16 + torch.compile", dict(precision="pure_bf16", compile=True), [max(args.batches)])]
        if args.variants == "default":
            variants = variants[:1]
    h, w = args.frame_hw
    for label, kw, batches in variants:
        op = ClipEmbedding(arch=args.arch, weights=None, allow_random_weights=True, heads=[], device=args.device,
                           batch_images=max(args.batches), **kw)
        op.setup()
        op._ready = True
        for b in batches:
            op.backbone.set_batch_images(b)
            t_compile = time.perf_counter()
            fwd = time_forward(op.backbone, b, args.iters, args.warmup)
            t_compile = time.perf_counter() - t_compile
            # A Ray batch holds ≥ 2 chunks, so one chunk's host→device copy hides behind the other's forward.
            rows = max(args.rows, 2 * b // args.frames)
            opr = time_operator(op, rows, args.frames, h, w, max(2, args.iters // 2), 1)
            res["runs"].append({
                "variant": label, "batch_images": b, "rows_per_call": rows, "images_per_call": rows * args.frames,
                "forward_img_s": round(fwd, 1),
                "forward_tflops": round(fwd * flops / 1e12, 2),
                "forward_pct_ceiling": round(100 * fwd * flops / 1e12 / ceiling, 1),
                "operator_img_s": round(opr, 1),
                "operator_tflops": round(opr * flops / 1e12, 2),
                "operator_pct_ceiling": round(100 * opr * flops / 1e12 / ceiling, 1),
                "first_measure_s": round(t_compile, 1),
            })
            dump()
        del op
        if device.type == "cuda":
            torch.cuda.empty_cache()

    for n_actors in args.actors:
        for b in [args.actor_batch]:
            r = time_actors(args, n_actors, b, args.actor_calls)
            r["tflops"] = round(r["img_s"] * flops / 1e12, 2)
            r["pct_ceiling"] = round(100 * r["img_s"] * flops / 1e12 / ceiling, 1)
            res.setdefault("actor_pool", []).append(r)
            dump()

    naive = time_naive(args.arch, device, args.naive, h, w)
    res["naive_loop"] = {"img_s": round(naive, 1), "tflops": round(naive * flops / 1e12, 2),
                         "pct_ceiling": round(100 * naive * flops / 1e12 / ceiling, 2),
                         "how": "PIL+torchvision transform per image, fp32 forward of batch 1"}
    if device.type == "cuda":
        res["max_memory_gib"] = round(torch.cuda.max_memory_allocated() / 2 ** 30, 2)
    dump()


if __name__ == "__main__":
    main()
