"""DiT training throughput with FSDP2: one GPU against N GPUs back to back, peak memory, checkpoint → resume.

    python bench/train_dit.py --gpus 2                  # the 1.3B model at 480x832x81 on the lent 2xH200 machine
    python bench/train_dit.py --smoke                   # the same plumbing on CPU: tiny model, 2 gloo processes
    python bench/train_dit.py --gpus 2 --runs one,multi && python bench/train_dit.py --gpus 2 --runs resume
                                                        # the same in two commands (per-command time limits)
    python bench/train_dit.py --gpus 1 --runs one,one_compiled
                                                        # one GPU, eager against `model.compile: true`

It writes random latents and text of the right shapes in the documented shard format (no data needed), then runs
the real trainer (`python -m torch.distributed.run ... -m trainer.train_dit`) four times:
  1. one process, `--steps` steps (warm-up steps excluded from the figures);
  2. N processes (FSDP2 over N GPUs), the same global batch per GPU;
  3. N processes, `--resume-at` steps then a checkpoint;  4. resumed from it up to `--steps`;
  (and, asked for by `--runs one_compiled`: one process with `model.compile: true`, the blocks compiled by
  torch.compile; its warm-up steps include the compilation, left out of the figures like any warm-up);
and reads each run's metrics.jsonl: tokens/s per GPU (median over the measured steps), MFU against a bf16 matmul
measured in the same process, peak memory per GPU, and the losses of the resumed steps against run 2's. Results
go to OUT/results.json and a Markdown table on stdout for bench/BENCHMARKS.md.
"""

from __future__ import annotations

import argparse
import json
import os
import pathlib
import statistics
import subprocess
import sys
import time

import numpy as np

ROOT = pathlib.Path(__file__).resolve().parents[1]


def write_random_latents(root: str, n: int, bucket: str, channels: int, text_dim: int, text_tokens: int,
                         seed: int = 0) -> None:
    """`n` random samples of one bucket in the prepare format (the shard format trainer.data.latents reads)."""
    import pyarrow as pa
    import pyarrow.parquet as pq
    import torch
    from safetensors.torch import save_file

    f, h, w = (int(v) for v in bucket.split("x"))
    shape = [channels, 1 + (f - 1) // 4, h // 8, w // 8]
    g = torch.Generator().manual_seed(seed)
    tensors, rows = {}, []
    shard = "shards/bench/shard-bench-00000.safetensors"
    for i in range(n):
        sid = f"bench-{i}"
        tensors[f"latent.{sid}"] = torch.randn(shape, generator=g)
        tensors[f"text.{sid}"] = torch.randn(text_tokens, text_dim, generator=g)
        rows.append(dict(sample_id=sid, stage="bench", bucket=bucket, weight=1.0, latent_shape=shape,
                         text_tokens=text_tokens, shard=shard, caption="random", caption_source="bench",
                         cluster_id=None, status="ok", error=None))
    os.makedirs(os.path.join(root, "shards", "bench"), exist_ok=True)
    os.makedirs(os.path.join(root, "index"), exist_ok=True)
    save_file(tensors, os.path.join(root, shard))
    schema = pa.schema([("sample_id", pa.string()), ("stage", pa.string()), ("bucket", pa.string()),
                        ("weight", pa.float64()), ("latent_shape", pa.list_(pa.int32())), ("text_tokens", pa.int32()),
                        ("shard", pa.string()), ("caption", pa.string()), ("caption_source", pa.string()),
                        ("cluster_id", pa.int64()), ("status", pa.string()), ("error", pa.string())])
    pq.write_table(pa.Table.from_pylist(rows, schema=schema), os.path.join(root, "index", "part-bench-00000.parquet"))
    with open(os.path.join(root, "prepare.json"), "w") as fh:
        json.dump(dict(format_version=1, vae="random", text_encoder="random", text_dim=text_dim,
                       text_len=max(text_tokens, 1), storage_dtype="float32", counts={"ok": n, "failed": 0}), fh)


def run_trainer(nproc: int, config: str, sets: list[str], log: str) -> float:
    """Run trainer.train_dit under torchrun with `nproc` processes; returns wall seconds (raises on failure)."""
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", str(nproc), "-m",
           "trainer.train_dit", "--config", config]
    for s in sets:
        cmd += ["--set", s]
    env = dict(os.environ, PYTHONPATH=f"{ROOT}{os.pathsep}{os.environ.get('PYTHONPATH', '')}")
    t = time.perf_counter()
    with open(log, "w") as fh:
        proc = subprocess.run(cmd, cwd=ROOT, env=env, stdout=fh, stderr=subprocess.STDOUT)
    if proc.returncode:
        tail = pathlib.Path(log).read_text()[-4000:]
        raise SystemExit(f"trainer failed ({' '.join(cmd)}):\n{tail}")
    return time.perf_counter() - t


def read_metrics(run_dir: str) -> list[dict]:
    """The per-step records of a run's metrics.jsonl."""
    with open(os.path.join(run_dir, "metrics.jsonl")) as fh:
        return [r for r in map(json.loads, fh) if "loss" in r]


def summarise(recs: list[dict], warmup: int) -> dict:
    """Median tokens/s per GPU, MFU and TFLOP/s over the steps after `warmup`; peak memory of the run."""
    meas = [r for r in recs if r["step"] > warmup] or recs
    out = {"steps_measured": len(meas),
           "tokens_per_s_per_gpu": statistics.median(r["tokens_per_s_per_rank"] for r in meas)}
    if "mfu" in meas[0]:
        out["mfu"] = statistics.median(r["mfu"] for r in meas)
        out["tflops_per_gpu"] = statistics.median(r["tflops_per_gpu"] for r in meas)
    if "peak_mem_gib" in meas[-1]:
        out["peak_mem_gib"] = max(r["peak_mem_gib"] for r in recs)
    return out


def main(argv=None) -> int:
    """Command-line entry point."""
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--smoke", action="store_true", help="tiny model on CPU with gloo (checks the plumbing)")
    ap.add_argument("--gpus", type=int, default=2, help="processes of the multi-process runs")
    ap.add_argument("--model", default="1.3B")
    ap.add_argument("--bucket", default="81x480x832", help="FRAMESxHEIGHTxWIDTH in pixels")
    ap.add_argument("--steps", type=int, default=12)
    ap.add_argument("--warmup", type=int, default=3, help="first steps left out of the figures")
    ap.add_argument("--resume-at", type=int, default=6)
    ap.add_argument("--checkpointing", default="block", help="activation checkpointing: none | block")
    ap.add_argument("--text-tokens", type=int, default=128)
    ap.add_argument("--out", default="runs/bench_train_dit")
    ap.add_argument("--runs", default="one,multi,resume",
                    help="which parts (one, multi, resume, one_compiled), e.g. to fit a per-command time limit; "
                         "results.json collects them (resume compares with an earlier multi run)")
    args = ap.parse_args(argv)

    out = os.path.abspath(args.out)
    os.makedirs(out, exist_ok=True)
    if args.smoke:
        model_sets = ["model.preset=tiny", "train.device=cpu", "train.precision=fp32"]
        args.bucket, text_dim, args.checkpointing = "5x32x32", 32, "none"
        args.steps, args.warmup, args.resume_at = min(args.steps, 6), 1, 3
        args.text_tokens = min(args.text_tokens, 16)  # the tiny preset's text_len
    else:
        model_sets = [f"model.preset={args.model}", "train.device=cuda", "train.precision=bf16"]
        text_dim = 4096
    latents = os.path.join(out, "latents")
    n = 4 * args.gpus
    write_random_latents(latents, n, args.bucket, 16, text_dim, args.text_tokens)
    config = os.path.join(out, "config.yaml")
    import yaml

    with open(config, "w") as fh:
        yaml.safe_dump({"phases": [{"name": "bench", "stage": "bench", "steps": args.steps, "batch": {"*": 1}}],
                        "data": {"latents": latents}}, fh)
    common = model_sets + [f"model.checkpointing={args.checkpointing}", "train.log_every=1",
                           "train.probe_samples=0", "train.tensorboard=false", "train.checkpoint_every=1000000",
                           "train.checkpoint_at_end=false", "train.export_final=false", "optim.lr=1e-5",
                           "ema.decay=0.999"]

    parts = set(args.runs.split(","))
    known = {"one", "multi", "resume", "one_compiled"}
    if parts - known:
        raise SystemExit(f"--runs: unknown parts {sorted(parts - known)}")
    results_path = os.path.join(out, "results.json")
    results: dict = {}
    if os.path.exists(results_path):
        with open(results_path) as fh:
            results = json.load(fh)
    results.update({"model": args.model if not args.smoke else "tiny", "bucket": args.bucket,
                    "checkpointing": args.checkpointing, "gpus": args.gpus, "steps": args.steps,
                    "warmup": args.warmup})
    runs = {}
    for name, nproc in (("one", 1), ("one_compiled", 1), ("multi", args.gpus)):
        if name not in parts:
            continue
        run_dir = os.path.join(out, name)
        sets = common + [f"train.output_dir={run_dir}", "train.resume=false", f"phases.0.batch={{'*': {nproc}}}"]
        if name == "one_compiled":
            sets.append("model.compile=true")
        wall = run_trainer(nproc, config, sets, os.path.join(out, f"{name}.log"))
        runs[name] = read_metrics(run_dir)
        results[name] = dict(summarise(runs[name], args.warmup), nproc=nproc, wall_s=wall)
        print(f"{name}: {results[name]}", flush=True)
        with open(results_path, "w") as fh:
            json.dump(results, fh, indent=1)
    if "one" in results and "one_compiled" in results:
        results["compile_speedup"] = (results["one_compiled"]["tokens_per_s_per_gpu"]
                                      / results["one"]["tokens_per_s_per_gpu"])
        print(f"compile speed-up (one GPU): {results['compile_speedup']:.3f}", flush=True)
    if "one" in results and "multi" in results:
        results["scaling_per_gpu"] = (results["multi"]["tokens_per_s_per_gpu"]
                                      / results["one"]["tokens_per_s_per_gpu"])
    if "resume" in parts:
        resume_check(args, config, common, out, results)
    with open(results_path, "w") as fh:
        json.dump(results, fh, indent=1)
    print_table(results)
    return 0


def resume_check(args, config: str, common: list[str], out: str, results: dict) -> None:
    """Checkpoint → resume on N processes: stop after --resume-at steps with a checkpoint, resume to --steps, and
    compare the resumed steps' losses with the uninterrupted N-process run."""
    run_dir = os.path.join(out, "resume")
    sets = common + [f"train.output_dir={run_dir}", f"phases.0.batch={{'*': {args.gpus}}}"]
    t_save = run_trainer(args.gpus, config, sets + ["train.resume=false", f"train.max_steps={args.resume_at}",
                                                      "train.checkpoint_at_end=true"],
                         os.path.join(out, "resume_a.log"))
    t_resume = run_trainer(args.gpus, config, sets + ["train.resume=true"], os.path.join(out, "resume_b.log"))
    resumed = {r["step"]: r["loss"] for r in read_metrics(run_dir)}
    straight = {r["step"]: r["loss"] for r in read_metrics(os.path.join(out, "multi"))}
    diffs = [abs(resumed[s] - straight[s]) / max(1e-12, abs(straight[s]))
             for s in straight if s in resumed and s > args.resume_at]
    ckpt = os.path.join(run_dir, "checkpoints")
    size = sum(f.stat().st_size for f in pathlib.Path(ckpt).rglob("*") if f.is_file())
    results["resume"] = {"resumed_at": args.resume_at, "steps_compared": len(diffs),
                         "max_rel_loss_diff_vs_uninterrupted": max(diffs) if diffs else None,
                         "losses_identical": all(d == 0 for d in diffs), "wall_save_run_s": t_save,
                         "wall_resume_run_s": t_resume, "checkpoint_bytes_on_disk": size}
    print(f"resume: {results['resume']}", flush=True)


def print_table(results: dict) -> None:
    """The Markdown table for bench/BENCHMARKS.md."""
    print("\n| run | GPUs | tokens/s per GPU | MFU | TFLOP/s per GPU | peak memory per GPU |")
    print("|---|---|---|---|---|---|")
    for name in ("one", "one_compiled", "multi"):
        r = results.get(name)
        if not r:
            continue
        mfu = f"{100 * r['mfu']:.1f}%" if "mfu" in r else "n/a"
        tfl = f"{r['tflops_per_gpu']:.0f}" if "tflops_per_gpu" in r else "n/a"
        mem = f"{r['peak_mem_gib']:.1f} GiB" if "peak_mem_gib" in r else "n/a"
        label = {"one": "1 GPU", "one_compiled": "1 GPU, model.compile"}.get(name, f"FSDP2 x{r['nproc']}")
        print(f"| {label} | {r['nproc']} | {r['tokens_per_s_per_gpu']:.0f} | {mfu} | {tfl} | {mem} |")
    if "scaling_per_gpu" in results:
        print(f"\nscaling per GPU: {100 * results['scaling_per_gpu']:.1f}%")


if __name__ == "__main__":
    raise SystemExit(main())
