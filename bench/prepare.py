"""The latent pass on one GPU (issue #12, must-show 3): clips/s at 480x832x81 with our Wan2.1 VAE, and where the
time goes: decoding on the CPUs vs encoding on the GPU.

It synthesises its own clips (a photo panned across a `--source` sized H.264 video at 16 fps, long enough for 81
frames), writes them as a curated stage, and measures three things:

1. decode: `read_row_frames` (curation's isolated decoder, decoder-side resize) + centre crop to 480x832, 81 frames:
   seconds per clip on one core, then clips/s of Ray decode tasks over all CPUs;
2. encode: `WanVAE.encode` (Wan2.1 architecture; random weights unless `--vae-weights`: speed does not depend on
   them) of one 81x480x832 clip on the GPU, bf16 autocast and fp32: seconds per clip after a warm-up, peak memory;
3. end to end: `trainer.prepare.prepare` (Ray decode tasks -> one GPU actor: VAE + MiniLM text, shards + index) over
   all the clips: clips/s, and the decode / VAE split from its prepare.json.

The GPU is the bottleneck when 1-GPU encode clips/s < all-CPU decode clips/s. Prints one JSON object.

    python bench/prepare.py                      # on the GPU machine (32 clips of 720x1280 sources)
    python bench/prepare.py --smoke              # CPU only, tiny sizes: checks that the script runs
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _write_clips(folder: Path, n: int, h: int, w: int, frames: int, fps: int) -> list[dict]:
    """n H.264 clips panning across photos, and their stage rows."""
    import av
    import cv2
    import numpy as np
    import skimage.data

    photos = [skimage.data.astronaut(), skimage.data.coffee(), skimage.data.chelsea(), skimage.data.rocket()]
    rows = []
    for i in range(n):
        img = photos[i % len(photos)]
        big = cv2.resize(img, (int(w * 1.5), int(h * 1.5)), interpolation=cv2.INTER_LINEAR)
        path = folder / f"clip_{i:03d}.mp4"
        with av.open(str(path), "w") as c:
            s = c.add_stream("libx264", rate=fps, options={"crf": "23", "preset": "veryfast"})
            s.width, s.height, s.pix_fmt = w, h, "yuv420p"
            for t in range(frames):
                x = int((big.shape[1] - w) * t / max(1, frames - 1))
                y = int((big.shape[0] - h) * (0.5 + 0.4 * np.sin(t / 9 + i)))
                f = np.ascontiguousarray(big[y : y + h, x : x + w])
                for p in s.encode(av.VideoFrame.from_ndarray(f, format="rgb24")):
                    c.mux(p)
            for p in s.encode():
                c.mux(p)
        rows.append(dict(sample_id=f"bench{i:03d}", source_uri=str(path), media_type="video", start_frame=0,
                         end_frame=frames, fps=float(fps), num_frames=frames, duration_s=frames / fps, width=w,
                         height=h, rotation=0, status="kept", weight=1.0, cluster_id=i % 4,
                         caption=f"A camera pans across photo number {i} in warm light.", caption_source="bench"))
    return rows


def _decode_serial(cfg, reps: int) -> float:
    """Seconds per clip of the prepare pass's own decode (one process, one core)."""
    from trainer.prepare import _decode, plan_rows, read_stages

    planned = plan_rows(read_stages(cfg["stages_dir"], cfg["prepare"]), cfg["prepare"])
    sub = planned.head(reps)
    _decode(sub.head(1).copy(), 8192 * 8192, 600)  # start the decoder helper outside the timing
    t0 = time.perf_counter()
    out = _decode(sub.copy(), 8192 * 8192, 600)
    dt = (time.perf_counter() - t0) / len(sub)
    errs = [e for e in out["error"] if isinstance(e, str)]
    if errs:
        raise RuntimeError(f"decode failed: {errs[0]}")
    return dt


def _decode_ray(cfg, rows: int) -> float:
    """clips/s of the decode stage alone as Ray tasks over every CPU, in steady state: `rows` decodes (the clips
    repeated), timed on a second pass so that worker and decoder-helper start-up are not counted."""
    import ray

    from trainer.prepare import _decode, _records, plan_rows, read_stages

    planned = plan_rows(read_stages(cfg["stages_dir"], cfg["prepare"]), cfg["prepare"])
    records = [_records(planned)[i % len(planned)] for i in range(rows)]
    rate = 0.0
    for _ in range(2):
        ds = ray.data.from_items(records, override_num_blocks=len(records))
        ds = ds.map_batches(_decode, fn_kwargs={"max_pixels": 8192 * 8192, "timeout_s": 600},
                            batch_format="pandas", batch_size=1, num_cpus=1)
        t0 = time.perf_counter()
        n = sum(len(b) for b in ds.iter_batches(batch_format="pandas", batch_size=None))
        rate = n / (time.perf_counter() - t0)
    return rate


def _encode(preset: str, overrides: dict, weights: str | None, shape: tuple[int, int, int], device: str,
            dtypes: list[str], reps: int) -> dict:
    """Seconds per clip of the pass's VAE encode (`trainer.prepare.encode_clips`: uint8 in, normalised posterior
    mean out, chunked) of one clip of `shape` = (frames, h, w) already on the device, per compute dtype."""
    import torch

    from trainer.models.vae.model import WanVAE, load_state_dict_file, vae_config
    from trainer.prepare import encode_clips

    torch.backends.cudnn.benchmark = True
    torch.manual_seed(0)
    model = WanVAE(vae_config(preset, **overrides))
    if weights:
        model.load_state_dict(load_state_dict_file(weights), strict=True)
    model = model.to(device).eval()
    pix = torch.randint(0, 256, (1,) + shape + (3,), dtype=torch.uint8, device=device)
    out = {}
    for dt in dtypes:
        if device == "cuda":
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
        z = encode_clips(model, pix, dt)  # warm-up (cuDNN autotune, Triton compile)
        if device == "cuda":
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        for _ in range(reps):
            z = encode_clips(model, pix, dt)
        if device == "cuda":
            torch.cuda.synchronize()
        sec = (time.perf_counter() - t0) / reps
        rec = {"s_per_clip": round(sec, 4), "clips_per_s": round(1 / sec, 3),
               "frames_per_s": round(shape[0] / sec, 1), "latent_shape": list(z.shape[1:])}
        if device == "cuda":
            rec["peak_gib"] = round(torch.cuda.max_memory_allocated() / 2**30, 2)
        out[dt] = rec
    del model, pix, z
    if device == "cuda":
        torch.cuda.empty_cache()  # the prepare pass's GPU actor comes next
    return out


def main() -> None:
    """Command-line entry point."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--smoke", action="store_true", help="CPU, tiny VAE and sizes: only checks that it runs")
    ap.add_argument("--clips", type=int, default=32)
    ap.add_argument("--source", default="720x1280", help="source video size HxW (decoded and scaled to 480x832)")
    ap.add_argument("--vae-weights", default=None, help="Wan2.1_VAE.pth (optional: speed does not depend on it)")
    ap.add_argument("--reps", type=int, default=3, help="timed VAE encodes per dtype")
    ap.add_argument("--work", type=Path, default=None, help="working folder (default: a temporary one)")
    ap.add_argument("--no-ray", action="store_true",
                    help="skip the Ray parts (all-CPU decode, end to end): for a GPU machine without Ray; the "
                         "all-CPU decode rate is then estimated as cores / (seconds per clip on one core)")
    args = ap.parse_args()
    sys.path[:0] = [str(ROOT)]
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    import torch

    from trainer.components.config import from_dict
    from trainer.prepare import PrepareConfig, prepare

    smoke = args.smoke
    device = "cuda" if torch.cuda.is_available() and not smoke else "cpu"
    if not smoke and device != "cuda":
        raise SystemExit("no CUDA device: run with --smoke on CPU")
    frames, bh, bw = (9, 48, 80) if smoke else (81, 480, 832)
    sh, sw = (72, 128) if smoke else (int(v) for v in args.source.split("x"))
    n = 3 if smoke else args.clips
    fps = 16
    work = args.work or Path(tempfile.mkdtemp(prefix="bench_prepare_"))
    media = work / "media"
    media.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    rows = _write_clips(media, n, sh, sw, frames + 15, fps)
    t_synth = time.perf_counter() - t0
    import pandas as pd

    stage = work / "curated" / "stages" / "bench_480"
    stage.mkdir(parents=True, exist_ok=True)
    pd.DataFrame(rows).to_parquet(stage / "part-00000.parquet")
    cfg = from_dict(PrepareConfig, {
        "stages": [{"name": "bench_480", "sizes": [[bh, bw]], "frames": [frames], "fps": fps}],
        "vae": {"preset": "tiny" if smoke else "wan2.1", "weights": args.vae_weights,
                "dtype": "float32" if smoke else "bfloat16"},
        "text_encoder": {"kind": "minilm", "model": "minilm-l6-v2"},
        "storage_dtype": "bfloat16",
        "compute": {"batch_size": 4, "vae_batch": 1, "num_gpus": 0 if smoke else 1, "num_cpus": 1,
                    "concurrency": 1, "decode_batch_size": 1, "decode_cpus": 1, "decode_timeout_s": 600},
    })
    ctx = {"stages_dir": work / "curated" / "stages", "prepare": cfg}
    ncpu = os.cpu_count() or 1
    if not args.no_ray:
        import ray

        ray.init(num_cpus=ncpu, include_dashboard=False, log_to_driver=False)
    result: dict = {"device": torch.cuda.get_device_name(0) if device == "cuda" else "cpu", "cpus": ncpu,
                    "smoke": smoke, "clips": n, "source": f"{sh}x{sw}@{fps}fps H.264", "bucket": f"{frames}x{bh}x{bw}",
                    "vae": "wan2.1 " + ("weights " + args.vae_weights if args.vae_weights else "random init")
                    if not smoke else "tiny random", "synthesis_s": round(t_synth, 2)}
    dec1 = _decode_serial(ctx, min(n, 3))
    result["decode_one_core_s_per_clip"] = round(dec1, 4)
    if args.no_ray:
        result["decode_all_cpus_clips_per_s"] = round(ncpu / dec1, 3)
        result["decode_all_cpus_note"] = "estimated: cores / one-core seconds per clip (no Ray on this machine)"
    else:
        result["decode_all_cpus_clips_per_s"] = round(_decode_ray(ctx, max(n, 2 * ncpu)), 3)
    enc = _encode("tiny" if smoke else "wan2.1", {}, args.vae_weights, (frames, bh, bw), device,
                  ["float32"] if smoke else ["bfloat16", "float32"], 1 if smoke else args.reps)
    result["encode"] = enc
    if not args.no_ray:
        t0 = time.perf_counter()
        meta = prepare(ctx["stages_dir"], work / "latents", cfg)
        wall = time.perf_counter() - t0
        r = meta["this_run"]
        result["end_to_end"] = {"clips_per_s": round(n / wall, 3), "wall_s": round(wall, 2),
                                "pass_s": r["timings_s"]["pass"], "ok": meta["counts"]["ok"],
                                "decode_cpu_s_sum": r["timings_s"]["decode_cpu_sum"], "vae_s_sum": r["timings_s"]["vae_sum"],
                                "text_s_sum": r["timings_s"]["text_sum"], "write_s_sum": r["timings_s"]["write_sum"],
                                "encoder_busy_s": r["timings_s"]["encoder_busy_sum"],
                                "encoder_clips_per_busy_s": round(n / max(1e-9, r["timings_s"]["encoder_busy_sum"]), 3),
                                "note": "wall includes Ray start-up, the actor's model loads and the first-call warm-up; "
                                        "encoder_clips_per_busy_s is the actor's rate while it has work"}
    gpu_rate = enc[cfg.vae.dtype]["clips_per_s"]
    result["bottleneck"] = ("gpu" if gpu_rate < result["decode_all_cpus_clips_per_s"] else "cpu decode")
    result["decode_cpus_per_gpu_needed"] = round(dec1 * gpu_rate, 2)
    if not args.no_ray:
        import ray

        ray.shutdown()
    print(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
