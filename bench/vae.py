"""Benchmark the Wan2.1 VAE: our chunked feature-cache encode/decode against the public reference implementation.

Measures frames/s and peak GPU memory at 480x832x81 (bf16 autocast, random weights), side by side with the reference
`wan/modules/vae.py` when its file is given (`--reference bench/_ref/vae.py`, a git-ignored copy of the public
Wan-Video/Wan2.1 file; it is never committed). Both models hold the same weights; outputs are compared in bf16 and in
fp32 (TF32 off), and each bf16 output is also compared with the fp32 reference output. Also: chunked against
non-chunked, peak memory at 17/81/161 frames, a conv-layout micro-benchmark and a kernel profile.

    python bench/vae.py --reference bench/_ref/vae.py --out bench/_out/vae.json      # GPU
    python bench/vae.py --smoke                                                      # CPU plumbing check
"""

from __future__ import annotations

import argparse
import contextlib
import gc
import importlib.util
import json
import os
import statistics
import sys
import time

import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from trainer.models.vae.model import WanVAE, vae_config  # noqa: E402

GiB = 1024**3


def load_reference(path: str):
    """Import the reference vae.py from a file path (kept out of the repository)."""
    spec = importlib.util.spec_from_file_location("wan_reference_vae", path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def build_reference(mod, cfg):
    """The reference model (`WanVAE_`) with the architecture of `cfg`, random init."""
    return mod.WanVAE_(dim=cfg.dim, z_dim=cfg.z_dim, dim_mult=list(cfg.dim_mult), num_res_blocks=cfg.num_res_blocks,
                       attn_scales=list(cfg.attn_scales), temperal_downsample=list(cfg.temporal_downsample),
                       dropout=0.0).eval().requires_grad_(False)


def random_model(cfg, seed: int = 0) -> WanVAE:
    """Our model with random weights; gammas and attention projections perturbed so every path matters."""
    torch.manual_seed(seed)
    m = WanVAE(cfg).eval().requires_grad_(False)
    with torch.no_grad():
        for name, p in m.named_parameters():
            if name.endswith("gamma"):
                p.add_(0.1 * torch.randn_like(p))
            elif name.endswith("proj.weight"):
                p.normal_(0.0, 0.02)
    return m


@contextlib.contextmanager
def cache_options(**opts):
    """Override FeatureCache options (e.g. pad_channels=False) of every encode/decode inside the block."""
    orig = WanVAE._cache

    def patched(self, device, fast):
        cache = orig(self, device, fast)
        for k, v in opts.items():
            setattr(cache, k, v)
        return cache

    WanVAE._cache = patched
    try:
        yield
    finally:
        WanVAE._cache = orig


def sync(device):
    """Wait for queued device work."""
    if device.type == "cuda":
        torch.cuda.synchronize()


def autocast(device, dtype):
    """bf16 autocast (fp32 weights), as the released WanVAE wrapper runs; a no-op for fp32."""
    if dtype == torch.float32:
        return contextlib.nullcontext()
    return torch.autocast(device.type, dtype=dtype)


def measure(fn, device, reps: int, warmup: int = 1):
    """(median seconds, peak bytes above the pre-call allocation, peak bytes total, last output)."""
    out = None
    for _ in range(warmup):
        out = fn()
        del out
        out = None
    sync(device)
    times, peak_total, base = [], 0, 0
    if device.type == "cuda":
        gc.collect()
        torch.cuda.empty_cache()
        base = torch.cuda.memory_allocated()
        torch.cuda.reset_peak_memory_stats()
    for _ in range(reps):
        out = None
        sync(device)
        t0 = time.perf_counter()
        out = fn()
        sync(device)
        times.append(time.perf_counter() - t0)
    if device.type == "cuda":
        peak_total = torch.cuda.max_memory_allocated()
    return statistics.median(times), peak_total - base, peak_total, out


def diff(a: torch.Tensor, b: torch.Tensor) -> dict:
    """Max abs and relative L2 difference (computed in fp32)."""
    a, b = a.float(), b.float()
    return {"max_abs": (a - b).abs().max().item(),
            "rel_l2": ((a - b).norm() / b.norm().clamp_min(1e-30)).item(),
            "ref_max_abs": b.abs().max().item()}


def conv_micro(device, reps: int) -> list[dict]:
    """cuDNN conv3d 3x3x3 at stage shapes, NCDHW vs channels-last, bf16."""
    rows = []
    shapes = [(96, 96, 6, 480, 832), (192, 192, 6, 240, 416), (384, 384, 4, 120, 208)]
    for cin, cout, t, h, w in shapes:
        for fmt_name, fmt in (("ncdhw", torch.contiguous_format), ("channels_last_3d", torch.channels_last_3d)):
            x = torch.randn(1, cin, t, h, w, device=device, dtype=torch.bfloat16).to(memory_format=fmt)
            wgt = torch.randn(cout, cin, 3, 3, 3, device=device, dtype=torch.bfloat16).to(memory_format=fmt) * 0.02
            f = lambda: torch.nn.functional.conv3d(x, wgt, None, 1, (0, 1, 1))  # noqa: E731
            sec, _, _, _ = measure(f, device, reps, warmup=2)
            flops = 2 * cin * cout * 27 * (t - 2) * h * w
            rows.append({"shape": [cin, cout, t, h, w], "format": fmt_name, "ms": sec * 1e3,
                         "tflops": flops / sec / 1e12})
            del x, wgt
    return rows


def profile_top(fn, device, n: int = 15) -> str:
    """The top CUDA kernels of one call by total time."""
    from torch.profiler import ProfilerActivity, profile

    acts = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.type == "cuda" else [])
    with profile(activities=acts) as prof:
        fn()
        sync(device)
    key = "self_cuda_time_total" if device.type == "cuda" else "self_cpu_time_total"
    return prof.key_averages().table(sort_by=key, row_limit=n, max_name_column_width=60)


def main(argv=None) -> int:
    """Run the benchmark and print a summary table."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--reference", default="bench/_ref/vae.py", help="path to the reference wan/modules/vae.py")
    ap.add_argument("--height", type=int, default=480)
    ap.add_argument("--width", type=int, default=832)
    ap.add_argument("--frames", type=int, default=81)
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--memory-frames", default="17,81,161", help="frame counts for the memory-scaling check")
    ap.add_argument("--fp32-frames", type=int, default=17, help="frames for the fp32 (TF32 off) equality check")
    ap.add_argument("--variants", default="default,chunks8,no_pad,no_fold,plain,non_chunked",
                    help="comma list of our variants to time")
    ap.add_argument("--no-micro", action="store_true", help="skip the conv layout micro-benchmark")
    ap.add_argument("--ref-cudnn-benchmark", action="store_true",
                    help="also time the reference with torch.backends.cudnn.benchmark on")
    ap.add_argument("--no-profile", action="store_true", help="skip the kernel profile")
    ap.add_argument("--smoke", action="store_true", help="tiny model, tiny video, CPU: a plumbing check")
    ap.add_argument("--out", default=None, help="write all figures as JSON here")
    args = ap.parse_args(argv)

    device = torch.device("cuda" if torch.cuda.is_available() and not args.smoke else "cpu")
    if args.smoke:
        cfg = vae_config("tiny")
        args.height, args.width, args.frames, args.reps, args.fp32_frames = 32, 48, 9, 1, 5
        args.memory_frames = "5,9"
        args.no_micro = True
    else:
        cfg = vae_config("wan2.1")
    dtype = torch.bfloat16
    t_start = time.perf_counter()
    res: dict = {"device": torch.cuda.get_device_name() if device.type == "cuda" else "cpu",
                 "torch": torch.__version__, "cudnn": torch.backends.cudnn.version(),
                 "size": [args.frames, args.height, args.width], "dtype": "bf16 autocast, fp32 weights"}
    print(json.dumps(res), flush=True)

    if not args.no_micro and device.type == "cuda":
        torch.backends.cudnn.benchmark = True
        res["conv_micro"] = conv_micro(device, reps=5)
        for r in res["conv_micro"]:
            print(f"conv3d {r['shape']} {r['format']:>16}: {r['ms']:.2f} ms {r['tflops']:.0f} TFLOP/s", flush=True)

    ref_mod = load_reference(args.reference) if args.reference and os.path.exists(args.reference) else None
    ours = random_model(cfg)
    ref = None
    if ref_mod is not None:
        ref = build_reference(ref_mod, cfg)
        ref.load_state_dict(ours.state_dict(), strict=True)
    scale = [ours.latent_mean.view(-1).to(device), ours.latent_inv_std.view(-1).to(device)]

    g = torch.Generator().manual_seed(1)
    video_cpu = torch.rand(1, 3, args.frames, args.height, args.width, generator=g) * 2 - 1
    # A smooth-ish video (random low-res upsampled) so activations resemble real footage more than white noise.
    smooth = torch.nn.functional.interpolate(
        torch.rand(1, 3, args.frames, args.height // 16, args.width // 16, generator=g) * 2 - 1,
        size=(args.frames, args.height, args.width), mode="trilinear")
    video_cpu = (0.8 * smooth + 0.2 * video_cpu).clamp(-1, 1)
    video = video_cpu.to(device, dtype)
    n_frames = args.frames
    table = []

    def set_model(which):
        ours.to(device if which == "ours" else "cpu")
        if ref is not None:
            ref.to(device if which == "ref" else "cpu")
        gc.collect()
        if device.type == "cuda":
            torch.cuda.empty_cache()

    # ---- our latents, used as the common decode input -----------------------------------------------------
    set_model("ours")
    torch.backends.cudnn.benchmark = True
    with autocast(device, dtype):
        latents = ours.encode(video).float()

    variants = {
        "default": dict(enc=dict(chunk_frames=4, fast=True), dec=dict(chunk_latents=1, fast=True)),
        "chunks8": dict(enc=dict(chunk_frames=8, fast=True), dec=dict(chunk_latents=2, fast=True)),
        "chunks16": dict(enc=dict(chunk_frames=16, fast=True), dec=dict(chunk_latents=4, fast=True)),
        "no_pad": dict(enc=dict(chunk_frames=4, fast=True), dec=dict(chunk_latents=1, fast=True),
                       cache=dict(pad_channels=False)),
        "no_fold": dict(enc=dict(chunk_frames=4, fast=True), dec=dict(chunk_latents=1, fast=True),
                        cache=dict(pad_channels=False, fold_bias=False)),
        "plain": dict(enc=dict(chunk_frames=4, fast=False), dec=dict(chunk_latents=1, fast=False)),
        "no_cudnn_benchmark": dict(enc=dict(chunk_frames=4, fast=True), dec=dict(chunk_latents=1, fast=True),
                                   benchmark=False),
        "non_chunked": dict(enc=dict(chunk_frames=None, fast=True), dec=dict(chunk_latents=None, fast=True)),
    }
    outputs = {}
    for name in [v for v in args.variants.split(",") if v]:
        spec = variants[name]
        torch.backends.cudnn.benchmark = spec.get("benchmark", True)
        for kind in ("encode", "decode"):
            def fn(kind=kind, spec=spec):
                with autocast(device, dtype):
                    if kind == "encode":
                        return ours.encode(video, **spec["enc"])
                    return ours.decode(latents, **spec["dec"])
            try:
                with cache_options(**spec.get("cache", {})):
                    sec, peak, peak_total, out = measure(fn, device, args.reps)
            except (torch.OutOfMemoryError, RuntimeError) as e:  # non-chunked at large sizes may not fit
                table.append({"impl": f"ours/{name}", "op": kind, "error": f"{type(e).__name__}: {str(e)[:120]}"})
                gc.collect()
                if device.type == "cuda":
                    torch.cuda.empty_cache()
                print(table[-1], flush=True)
                continue
            if name == "default":
                outputs[kind] = out
            del out
            table.append({"impl": f"ours/{name}", "op": kind, "fps": n_frames / sec, "sec": sec,
                          "peak_gib": peak_total / GiB, "peak_above_inputs_gib": peak / GiB,
                          "t": round(time.perf_counter() - t_start)})
            print(table[-1], flush=True)

    if ref is not None:
        set_model("ref")
        for bench_flag in (False, True) if args.ref_cudnn_benchmark else (False,):
            torch.backends.cudnn.benchmark = bench_flag
            for kind in ("encode", "decode"):
                def rfn(kind=kind):
                    with autocast(device, dtype):
                        if kind == "encode":
                            return ref.encode(video, scale)
                        return ref.decode(latents, scale)
                sec, peak, peak_total, out = measure(rfn, device, args.reps)
                name = "reference" + ("/cudnn_benchmark" if bench_flag else "")
                table.append({"impl": name, "op": kind, "fps": n_frames / sec, "sec": sec,
                              "peak_gib": peak_total / GiB, "peak_above_inputs_gib": peak / GiB,
                              "t": round(time.perf_counter() - t_start)})
                print(table[-1], flush=True)
                if not bench_flag:
                    key = "ref_" + kind
                    outputs[key] = out
                del out
        if "encode" in outputs:
            res["diff_bf16"] = {"encode": diff(outputs["encode"], outputs["ref_encode"]),
                                "decode": diff(outputs["decode"], outputs["ref_decode"])}
            print("bf16 diffs ours vs reference:", json.dumps(res["diff_bf16"]), flush=True)
    res["timings"] = table
    outputs.clear()

    # ---- fp32 equality (TF32 off) on a shorter clip, plus each bf16 output against the fp32 reference ------
    if ref is not None:
        torch.backends.cudnn.benchmark = True
        torch.backends.cudnn.allow_tf32 = False
        torch.backends.cuda.matmul.allow_tf32 = False
        v32 = video_cpu[:, :, : args.fp32_frames].to(device)
        fp = {}
        set_model("ref")
        fp["ref_enc32"] = ref.encode(v32, scale)
        z32 = fp["ref_enc32"].float()
        fp["ref_dec32"] = ref.decode(z32, scale)
        with autocast(device, dtype):
            fp["ref_enc16"] = ref.encode(v32.to(dtype), scale)
            fp["ref_dec16"] = ref.decode(z32, scale)
        set_model("ours")
        with torch.no_grad():
            fp["enc32"] = ours.encode(v32)
            fp["dec32"] = ours.decode(z32)
            fp["enc32_full"] = ours.encode(v32, chunk_frames=None)
            fp["dec32_full"] = ours.decode(z32, chunk_latents=None)
        with autocast(device, dtype):
            fp["enc16"] = ours.encode(v32.to(dtype))
            fp["dec16"] = ours.decode(z32)
        res["diff_fp32"] = {
            "encode_ours_vs_ref": diff(fp["enc32"], fp["ref_enc32"]),
            "decode_ours_vs_ref": diff(fp["dec32"], fp["ref_dec32"]),
            "encode_chunked_vs_full": diff(fp["enc32"], fp["enc32_full"]),
            "decode_chunked_vs_full": diff(fp["dec32"], fp["dec32_full"]),
            "encode_bf16_vs_fp32ref": {"ours": diff(fp["enc16"], fp["ref_enc32"]),
                                       "reference": diff(fp["ref_enc16"], fp["ref_enc32"])},
            "decode_bf16_vs_fp32ref": {"ours": diff(fp["dec16"], fp["ref_dec32"]),
                                       "reference": diff(fp["ref_dec16"], fp["ref_dec32"])},
        }
        print("fp32 checks:", json.dumps(res["diff_fp32"]), flush=True)
        del fp, v32
        torch.backends.cudnn.allow_tf32 = True
        torch.backends.cuda.matmul.allow_tf32 = True

    # ---- memory vs video length --------------------------------------------------------------------------------
    set_model("ours")
    torch.backends.cudnn.benchmark = True
    mem = []
    for f in [int(v) for v in args.memory_frames.split(",") if v]:
        vid = (torch.rand(1, 3, f, args.height, args.width, device=device) * 2 - 1).to(dtype)
        with autocast(device, dtype):
            lat = ours.encode(vid).float()
        io_bytes = vid.numel() * vid.element_size() + lat.numel() * lat.element_size()
        for kind in ("encode", "decode"):
            def mfn(kind=kind):
                with autocast(device, dtype):
                    return ours.encode(vid) if kind == "encode" else ours.decode(lat)
            sec, peak, peak_total, out = measure(mfn, device, reps=2)
            out_bytes = out.numel() * out.element_size()
            del out
            mem.append({"frames": f, "op": kind, "mode": "chunked", "fps": f / sec, "peak_gib": peak_total / GiB,
                        "working_gib": (peak - out_bytes) / GiB, "io_gib": (io_bytes + out_bytes) / GiB})
            print(mem[-1], flush=True)
        if f == min(int(v) for v in args.memory_frames.split(",") if v):
            for kind in ("encode", "decode"):
                def nfn(kind=kind):
                    with autocast(device, dtype):
                        return (ours.encode(vid, chunk_frames=None) if kind == "encode"
                                else ours.decode(lat, chunk_latents=None))
                sec, peak, peak_total, out = measure(nfn, device, reps=2)
                out_bytes = out.numel() * out.element_size()
                del out
                mem.append({"frames": f, "op": kind, "mode": "non_chunked", "fps": f / sec,
                            "peak_gib": peak_total / GiB, "working_gib": (peak - out_bytes) / GiB})
                print(mem[-1], flush=True)
        del vid, lat
    res["memory_scaling"] = mem

    if not args.no_profile:
        with autocast(device, dtype):
            res["profile_encode"] = profile_top(lambda: ours.encode(video), device)
            res["profile_decode"] = profile_top(lambda: ours.decode(latents), device)
        print(res["profile_encode"][-4000:], flush=True)
        print(res["profile_decode"][-4000:], flush=True)

    # ---- summary -------------------------------------------------------------------------------------------------
    print("\n| impl | op | frames/s | peak GiB |")
    print("|---|---|---|---|")
    for r in table:
        if "error" in r:
            print(f"| {r['impl']} | {r['op']} | {r['error']} | |")
        else:
            print(f"| {r['impl']} | {r['op']} | {r['fps']:.1f} | {r['peak_gib']:.2f} |")
    print("\n| frames | op | mode | frames/s | peak GiB | peak minus input/output GiB |")
    print("|---|---|---|---|---|---|")
    for r in mem:
        print(f"| {r['frames']} | {r['op']} | {r['mode']} | {r['fps']:.1f} | {r['peak_gib']:.2f} "
              f"| {r['working_gib']:.2f} |")
    refs = {r["op"]: r for r in table if r["impl"] == "reference"}
    for r in table:
        if r["impl"] == "ours/default" and r["op"] in refs and "fps" in r:
            print(f"speedup {r['op']}: {r['fps'] / refs[r['op']]['fps']:.2f}x, peak {r['peak_gib']:.2f} vs "
                  f"{refs[r['op']]['peak_gib']:.2f} GiB")
    if args.out:
        os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
        with open(args.out, "w") as fh:
            json.dump(res, fh, indent=1)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
