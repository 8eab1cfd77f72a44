"""Captioning throughput on one GPU, old engine vs new in one run: `qwen2vl` (transformers' `generate`) and
`qwen2vl_fast` (`captioner.fast`) on a model of Qwen2-VL-7B-Instruct's exact architecture (public config.json values
below) in bfloat16 with SDPA attention and **random weights** (no weights can be downloaded here), built directly on
the GPU. Speed does not depend on the weights as long as the work is the same, so every answer is forced to exactly
`--new-tokens` tokens (`min_new_tokens`, the same logits processor in both engines).

Rows: `--frames` frames of a synthetic panning pattern already at 336x588 px (1,008 vision tokens per clip at 8
frames), a different pan per row, the instruction, OCR text on every other row (two prompt lengths per batch), through
the engines' own processor path (chat template, left padding) with a small offline tokenizer; the embedding and output
layers keep Qwen2-VL-7B's 152,064 rows, so the compute is Qwen's.

Per engine and batch size (rows per call): one warm-up call (new engine: the full call, which captures its CUDA
graph for that shape; old engine: 8 tokens), then `--rounds` timed calls (the best is reported):
clips/s and output tokens/s, peak GPU memory, prefill vs decode time (old engine: a 1-token call is the prefill, the
rest is decode; new engine: its own timers: processor, prefill, decode, steps), and whether every row got exactly
`--new-tokens` tokens. `--batches` run on both engines; `--old-batches` / `--fast-batches` on one only (to find each
engine's best batch size); `--eager-batches` run the new engine without CUDA graphs (what the graphs add).
Then: the share of identical generated token sequences between the engines at each common
batch size, and a torch.profiler run of each engine (`--profile-rows` rows, `--profile-tokens` tokens) giving the
GPU kernel time vs wall time (host-bound when the GPU is idle most of the wall time).

First, before the 7B model is built: the tiny test model in float32 on the same device, both engines free-running
on mixed prompt lengths, twice at one shape (the second call replays the captured graph): identical tokens expected
(`tiny_float32_check`), which checks the CUDA-graph path where bf16 noise cannot hide a bug.

A partial JSON is written after every measurement (`--out`), so a run cut short still leaves its figures; a
measurement that would start after `--budget-s` seconds is skipped and listed.

    python bench/caption.py --out $OUT/caption.json                 # the GPU comparison (defaults below)
    python bench/caption.py --batches --old-batches --fast-batches --eager-batches --pergroup-batches \
        --noise-rows 0 --profile-rows 0 --decode-profile-rows 64 384  # only the decode-step profiles
    python bench/caption.py --smoke                                 # CPU, tiny random model: plumbing only
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

# Qwen/Qwen2-VL-7B-Instruct config.json (public).
TEXT = dict(vocab_size=152064, hidden_size=3584, intermediate_size=18944, num_hidden_layers=28, num_attention_heads=28,
            num_key_value_heads=4, max_position_embeddings=32768, rope_theta=1000000.0, rms_norm_eps=1e-6,
            rope_scaling={"type": "mrope", "mrope_section": [16, 24, 24]}, tie_word_embeddings=False,
            hidden_act="silu", bos_token_id=None)
VISION = dict(depth=32, embed_dim=1280, hidden_size=3584, hidden_act="quick_gelu", mlp_ratio=4, num_heads=16,
              in_chans=3, patch_size=14, spatial_merge_size=2, temporal_patch_size=2)


def build(smoke: bool):
    """(model, processor, device): the 7B architecture on the GPU, or (smoke) the tiny test model on the CPU."""
    import torch
    from transformers import Qwen2VLConfig, Qwen2VLForConditionalGeneration

    from tiny_qwen2vl import build_processor, build_tiny_qwen2vl

    if smoke:
        import tempfile

        folder = build_tiny_qwen2vl(Path(tempfile.mkdtemp()) / "tiny-qwen2-vl")
        from transformers import AutoProcessor

        net = Qwen2VLForConditionalGeneration.from_pretrained(folder, dtype=torch.float32, attn_implementation="sdpa")
        return net.eval(), AutoProcessor.from_pretrained(folder), "cpu"
    processor, ids = build_processor()
    config = Qwen2VLConfig(
        text_config={**TEXT, "eos_token_id": ids["<|im_end|>"], "pad_token_id": ids["<|endoftext|>"]},
        vision_config=VISION, image_token_id=ids["<|image_pad|>"], video_token_id=ids["<|video_pad|>"],
        vision_start_token_id=ids["<|vision_start|>"], vision_end_token_id=ids["<|vision_end|>"])
    config._attn_implementation = "sdpa"
    torch.manual_seed(0)
    with torch.device("cuda"):  # weights created and initialised on the GPU (no CPU copy of 8 B parameters)
        net = Qwen2VLForConditionalGeneration._from_config(config, dtype=torch.bfloat16)
    return net.eval(), processor, "cuda"


def make_items(rows: int, frames: int, height: int, width: int) -> list[dict]:
    """`rows` clips: a smooth colour pattern panning by a different step per row; OCR text on every other row."""
    import numpy as np

    y, x = np.mgrid[0:height, 0:width].astype(np.float32)
    items = []
    for r in range(rows):
        clip = []
        for f in range(frames):
            shift = f * (4 + r % 13)
            rgb = [127 + 120 * np.sin((x + shift) / (17 + 3 * c + r % 7) + y / (23 + c)) for c in range(3)]
            clip.append(np.stack(rgb, -1).astype(np.uint8))
        items.append({"frames": np.stack(clip), "media_type": "video",
                      "ocr_text": "BREAKING NEWS: heavy rain tonight" if r % 2 else ""})
    return items


def measure(engine, name: str, items: list, new_tokens: int, rounds: int, cuda: bool) -> tuple[dict, object]:
    """Timings of one engine on one batch; also returns the generated ids of the last timed call."""
    import torch

    sync = torch.cuda.synchronize if cuda else (lambda: None)
    force = {"min_new_tokens": new_tokens, "max_new_tokens": new_tokens}

    def call(**kw):
        ids, ocr = engine.generate_ids(items, **kw)
        engine.results(ids, ocr)  # decoding and cleaning, as caption() does
        return ids

    t = time.perf_counter()
    # Warm-up at this batch shape (allocator, kernel choice); the fast engine captures its graph for this shape, so
    # it needs the full length; the old engine is warmed by a short call (its 200-token calls are the slow ones).
    call(**(force if name.startswith("qwen2vl_fast") else {"min_new_tokens": min(8, new_tokens),
                                                 "max_new_tokens": min(8, new_tokens)}))
    sync()
    warm = time.perf_counter() - t
    if cuda:
        torch.cuda.reset_peak_memory_stats()
    runs, ids, stats = [], None, None
    for _ in range(rounds):
        t = time.perf_counter()
        ids = call(**force)
        sync()
        runs.append(time.perf_counter() - t)
        stats = dict(getattr(engine, "last_stats", {}) or {})
    best = min(runs)
    rows = len(items)
    res = {"seconds": [round(r, 3) for r in runs], "warmup_s": round(warm, 2), "clips_per_s": round(rows / best, 3),
           "output_tokens_per_s": round(rows * new_tokens / best, 1),
           "all_rows_forced_length": bool(ids.shape[1] == new_tokens),
           "peak_gib": round(torch.cuda.max_memory_allocated() / 2**30, 2) if cuda else None}
    if not name.startswith("qwen2vl_fast"):
        t = time.perf_counter()
        engine.generate_ids(items, max_new_tokens=1)
        sync()
        prefill = time.perf_counter() - t
        res.update(prefill_s=round(prefill, 3), decode_s=round(best - prefill, 3),
                   decode_step_ms=round(1000 * (best - prefill) / max(1, new_tokens - 1), 2))
    else:
        res.update({k: round(v, 3) for k, v in stats.items() if k.endswith("_s")}, steps=int(stats.get("steps", 0)),
                   decode_step_ms=round(1000 * stats.get("decode_s", 0) / max(1, stats.get("steps", 1)), 2),
                   cuda_graphs=stats.get("cuda_graphs"), **({"graph_error": stats["graph_error"]}
                                                            if "graph_error" in stats else {}))
    return res, ids


def graph_step_ms(state, replays: int) -> float:
    """Device time of one decode step: the engine's captured graph replayed back to back (no host work between
    replays), at write positions inside its buffers (moves the write index; call in inference mode)."""
    import torch

    state.index.fill_(state.length - replays - 4)
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    start.record()
    for _ in range(replays):
        state.graph.replay()
    end.record()
    torch.cuda.synchronize()
    return round(start.elapsed_time(end) / replays, 3)


def kernel_table(prof, calls: int = 1, top: int = 12) -> tuple[float, list[dict]]:
    """(device seconds of all kernels / `calls`, the `top` kernels by device time per call) of a profile."""
    avg = prof.key_averages()
    busy_us = sum(getattr(e, "self_device_time_total", 0) or 0 for e in avg)
    best = sorted(avg, key=lambda e: -(getattr(e, "self_device_time_total", 0) or 0))[:top]
    return busy_us / 1e6 / calls, [{"name": e.key[:90], "ms": round(e.self_device_time_total / 1e3 / calls, 3),
                                    "calls": e.count / calls} for e in best]


def profile(engine, items: list, new_tokens: int) -> dict:
    """GPU kernel time vs wall time of one call (torch.profiler, CUDA activity)."""
    import torch
    from torch.profiler import ProfilerActivity

    force = {"min_new_tokens": new_tokens, "max_new_tokens": new_tokens}
    engine.generate_ids(items, **force)  # warm-up at this shape
    torch.cuda.synchronize()
    with torch.profiler.profile(activities=[ProfilerActivity.CUDA]) as prof:
        t = time.perf_counter()
        engine.generate_ids(items, **force)
        torch.cuda.synchronize()
        wall = time.perf_counter() - t
    busy_s, _ = kernel_table(prof)
    out = {"rows": len(items), "new_tokens": new_tokens, "wall_s": round(wall, 3),
           "gpu_kernel_s": round(busy_s, 3), "gpu_busy_share": round(busy_s / wall, 3)}
    state = getattr(engine, "_state", None)
    if state is not None and state.graph is not None:
        with torch.inference_mode():  # the engine's buffers are inference tensors
            out["graph_step_device_ms"] = graph_step_ms(state, 20)  # against the engine's wall time per step
            out["decode_step_wall_ms"] = round(1000 * engine.last_stats["decode_s"]
                                               / max(1, engine.last_stats["steps"]), 3)
    return out


def prefill_profile(engine, items: list) -> dict:
    """Where one prefill chunk's time goes (fast engine, `max_new_tokens=1`: processor + `generate` for one token):
    wall vs GPU kernel time, the top kernels, and the vision encoder alone with grouped and per-group attention."""
    import torch
    from torch.profiler import ProfilerActivity

    one = {"min_new_tokens": 1, "max_new_tokens": 1}
    engine.generate_ids(items, **one)  # warm-up
    torch.cuda.synchronize()
    with torch.profiler.profile(activities=[ProfilerActivity.CUDA]) as prof:
        t = time.perf_counter()
        engine.generate_ids(items, **one)
        torch.cuda.synchronize()
        wall = time.perf_counter() - t
    busy_s, top = kernel_table(prof)
    out = {"rows": len(items), "wall_s": round(wall, 3), "gpu_kernel_s": round(busy_s, 3),
           "gpu_busy_share": round(busy_s / wall, 3), **{k: round(v, 3) for k, v in engine.last_stats.items()
                                                                if k.endswith("_s")},
           "top_kernels": top}
    net = engine.model
    inputs, _ = engine.inputs(items)
    pixels = inputs["pixel_values_videos"].to(net.device, net.dtype)
    grid = inputs["video_grid_thw"].to(net.device)
    for on in (True, False):
        engine.segment_attention = on
        times = []
        with torch.inference_mode(), engine._vision_attention():
            for _ in range(3):
                torch.cuda.synchronize()
                t = time.perf_counter()
                net.model.visual(pixels, grid_thw=grid)
                torch.cuda.synchronize()
                times.append(time.perf_counter() - t)
        out[f"vision_encoder_s_{'grouped' if on else 'per_group'}"] = round(min(times), 4)
    engine.segment_attention = True
    return out


def decode_profile(engine, items: list) -> dict:
    """Where one decode step's device time goes at `len(items)` rows (new engine): the engine's state is set up by
    a short call, then 5 steps run eagerly (the kernels a graph replay launches) under the profiler; also the time
    of one graph replay, and the bytes a step must read (weights + the key/value cache) per ms of it."""
    import torch
    from torch.profiler import ProfilerActivity

    engine.generate_ids(items, min_new_tokens=8, max_new_tokens=8)  # prefill + state + graph at this shape
    state = engine._state
    out: dict = {"rows": len(items), "cache_length": state.length}
    with torch.inference_mode():
        if state.graph is not None:
            out["graph_step_ms"] = graph_step_ms(state, 10)
        state.index.fill_(state.length - 16)
        state.step()
        torch.cuda.synchronize()
        with torch.profiler.profile(activities=[ProfilerActivity.CUDA]) as prof:
            for _ in range(5):
                state.step()
            torch.cuda.synchronize()
    busy_s, top = kernel_table(prof, calls=5)
    net = engine.model
    weights = sum(p.numel() * p.element_size() for n, p in net.named_parameters() if "visual" not in n)
    cache = sum(t.numel() * t.element_size() for t in state.keys + state.values)
    out.update(kernel_ms_per_step=round(busy_s * 1e3, 3),
               bytes_per_step_gb=round((weights + cache) / 1e9, 2), weights_gb=round(weights / 1e9, 2),
               cache_gb=round(cache / 1e9, 2),
               top_kernels=top)  # ms and calls per step
    if "graph_step_ms" in out:
        out["read_gb_per_s_at_graph_speed"] = round((weights + cache) / 1e9 / (out["graph_step_ms"] / 1e3), 1)
    return out


def identity(a, b) -> dict:
    """How alike two engines' generated ids are: identical rows, and the mean share of the common leading tokens."""
    import torch

    n = min(a.shape[1], b.shape[1])
    same = (a[:, :n] == b[:, :n])
    lead = torch.where(same.all(1), torch.tensor(n), (~same).int().argmax(1))
    return {"rows": int(a.shape[0]), "identical_rows": int((same.all(1) & (a.shape[1] == b.shape[1])).sum()),
            "identical_share": round(float((same.all(1)).float().mean()), 4),
            "mean_common_prefix_share": round(float(lead.float().mean() / n), 4)}


def tiny_check(device: str) -> dict:
    """The CUDA-graph path against `generate` where bf16 noise cannot hide a bug: the tiny test model in float32,
    mixed prompt lengths, free-running (rows end early), two calls of the same shape (the second replays the graph
    captured by the first). Returns the share of identical rows per call."""
    import tempfile

    import torch
    from transformers import Qwen2VLForConditionalGeneration

    from captioner.fast import FastQwen2VLCaptioner
    from captioner.qwen2vl import Qwen2VLCaptioner
    from tiny_qwen2vl import build_tiny_qwen2vl

    # Full float32 (no TF32 in convolutions or matmuls), so that chunked prefill (other batch shapes) cannot round
    # differently from the reference's one batch.
    torch.backends.cudnn.allow_tf32 = False
    torch.backends.cuda.matmul.allow_tf32 = False
    folder = build_tiny_qwen2vl(Path(tempfile.mkdtemp()) / "tiny-qwen2-vl")
    ref = Qwen2VLCaptioner(str(folder), device=device, dtype="float32", max_new_tokens=24, short_side=112)
    assert isinstance(ref.model, Qwen2VLForConditionalGeneration)
    fast = FastQwen2VLCaptioner.from_loaded(ref.model, ref.processor, ref.name, max_new_tokens=24,
                                            short_side=112).configure(prefill_rows=2, sync_every=4)
    out = {}
    for call, items in enumerate((make_items(3, 4, 112, 168) + make_items(3, 2, 112, 224),
                                  make_items(3, 2, 112, 168) + make_items(3, 4, 112, 140))):
        want, _ = ref.generate_ids(items)
        got, _ = fast.generate_ids(items)
        out[f"call{call}"] = {**identity(want, got), "same_shape": want.shape == got.shape,
                              "equal": bool(want.shape == got.shape and torch.equal(want, got)),
                              "cuda_graphs": fast.last_stats.get("cuda_graphs")}
    del ref, fast
    torch.backends.cudnn.allow_tf32 = True  # PyTorch's defaults again for the bf16 runs
    return out


def main() -> None:
    """Command line entry point."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--batches", type=int, nargs="*", default=[16, 64])
    ap.add_argument("--old-batches", type=int, nargs="*", default=[128])
    ap.add_argument("--fast-batches", type=int, nargs="*", default=[128, 256, 384])
    ap.add_argument("--eager-batches", type=int, nargs="*", default=[64],
                    help="qwen2vl_fast without CUDA graphs (what the graphs add)")
    ap.add_argument("--pergroup-batches", type=int, nargs="*", default=[64],
                    help="qwen2vl_fast with transformers' per-group vision attention (what grouping adds)")
    ap.add_argument("--noise-rows", type=int, default=64,
                    help="bf16 batching noise at this many rows (one of --batches): the old engine on the same rows "
                         "in calls of --prefill-rows, and the new engine prefilling all rows in one chunk, each "
                         "against the old engine's one call")
    ap.add_argument("--new-tokens", type=int, default=200)
    ap.add_argument("--rounds", type=int, default=1)
    ap.add_argument("--frames", type=int, default=8)
    ap.add_argument("--size", type=int, nargs=2, default=[336, 588], metavar=("H", "W"))
    ap.add_argument("--prefill-rows", type=int, default=16, help="qwen2vl_fast: rows per prefill chunk")
    ap.add_argument("--sync-every", type=int, default=16, help="qwen2vl_fast: decode steps between end checks")
    ap.add_argument("--no-graphs", action="store_true", help="qwen2vl_fast without CUDA graphs")
    ap.add_argument("--profile-rows", type=int, default=16, help="rows of the per-engine profiles (0: none)")
    ap.add_argument("--decode-profile-rows", type=int, nargs="*", default=[64, 384],
                    help="new engine: one decode step's kernels at these batch sizes")
    ap.add_argument("--profile-tokens", type=int, default=32)
    ap.add_argument("--budget-s", type=float, default=420.0, help="skip measurements that would start later")
    ap.add_argument("--smoke", action="store_true", help="tiny random model on the CPU, small shapes: plumbing only")
    ap.add_argument("--out", type=Path, default=None)
    args = ap.parse_args()
    if args.smoke:
        args.batches, args.old_batches, args.fast_batches, args.eager_batches = [2, 3], [4], [5], [3]
        args.pergroup_batches, args.noise_rows = [3], 3
        args.new_tokens, args.frames, args.size, args.prefill_rows = 6, 4, [112, 168], 2
    sys.path[:0] = [str(ROOT), str(ROOT / "tests")]
    import torch
    import transformers

    from captioner.fast import FastQwen2VLCaptioner
    from captioner.qwen2vl import Qwen2VLCaptioner

    check = tiny_check("cpu" if args.smoke else "cuda")
    print("tiny float32 check", check, flush=True)
    t0 = time.perf_counter()
    net, processor, device = build(args.smoke)
    cuda = device == "cuda"
    common = dict(max_new_tokens=args.new_tokens, short_side=min(args.size))
    engines = {"qwen2vl": Qwen2VLCaptioner.from_loaded(net, processor, "random-qwen2-vl-7b-arch", **common),
               "qwen2vl_fast": FastQwen2VLCaptioner.from_loaded(net, processor, "random-qwen2-vl-7b-arch",
                                                                **common).configure(
                   prefill_rows=args.prefill_rows, sync_every=args.sync_every, cuda_graphs=not args.no_graphs),
               "qwen2vl_fast_eager": FastQwen2VLCaptioner.from_loaded(net, processor, "random-qwen2-vl-7b-arch",
                                                                      **common).configure(
                   prefill_rows=args.prefill_rows, sync_every=args.sync_every, cuda_graphs=False),
               "qwen2vl_fast_pergroup": FastQwen2VLCaptioner.from_loaded(net, processor, "random-qwen2-vl-7b-arch",
                                                                         **common).configure(
                   prefill_rows=args.prefill_rows, sync_every=args.sync_every, cuda_graphs=not args.no_graphs,
                   segment_attention=False)}
    res: dict = {"device": torch.cuda.get_device_name(0) if cuda else "cpu", "torch": torch.__version__,
                 "transformers": transformers.__version__, "params": sum(p.numel() for p in net.parameters()),
                 "build_s": round(time.perf_counter() - t0, 1), "new_tokens": args.new_tokens,
                 "frames": args.frames, "size": args.size, "prefill_rows": args.prefill_rows,
                 "sync_every": args.sync_every, "cuda_graphs": not args.no_graphs and cuda,
                 "tiny_float32_check": check,
                 "runs": {"qwen2vl": {}, "qwen2vl_fast": {}, "qwen2vl_fast_eager": {}, "qwen2vl_fast_pergroup": {}},
                 "identity": {},
                 "skipped": []}

    def save() -> None:
        if args.out:
            args.out.parent.mkdir(parents=True, exist_ok=True)
            args.out.write_text(json.dumps(res, indent=1))

    plan = [(b, e) for b in args.batches for e in ("qwen2vl", "qwen2vl_fast")]
    plan += [(b, "qwen2vl") for b in args.old_batches] + [(b, "qwen2vl_fast") for b in args.fast_batches]
    plan += [(b, "qwen2vl_fast_eager") for b in args.eager_batches]
    plan += [(b, "qwen2vl_fast_pergroup") for b in args.pergroup_batches]
    kept_ids: dict = {}
    for rows, name in plan:
        if time.perf_counter() - t0 > args.budget_s:
            res["skipped"].append(f"{name} at {rows} rows (time budget)")
            continue
        items = make_items(rows, args.frames, *args.size)
        try:
            out, ids = measure(engines[name], name, items, args.new_tokens, args.rounds, cuda)
            kept_ids[(name, rows)] = ids
        except Exception as exc:  # noqa: BLE001 - an OOM at one size must not lose the others
            out = {"error": f"{type(exc).__name__}: {str(exc)[:300]}"}
            if cuda:
                torch.cuda.empty_cache()
        res["runs"][name][rows] = out
        print(name, rows, out, flush=True)
        if ("qwen2vl", rows) in kept_ids and ("qwen2vl_fast", rows) in kept_ids and rows not in res["identity"]:
            res["identity"][rows] = identity(kept_ids[("qwen2vl", rows)], kept_ids[("qwen2vl_fast", rows)])
            print("identity", rows, res["identity"][rows], flush=True)
        save()
    for name in ("qwen2vl_fast", "qwen2vl_fast_eager", "qwen2vl_fast_pergroup"):
        engines[name]._state = None  # cached buffers and graphs
    if cuda:
        torch.cuda.empty_cache()
    rows = args.noise_rows
    if ("qwen2vl", rows) in kept_ids and time.perf_counter() - t0 <= args.budget_s:
        # Is a difference between the engines at this batch size the engines', or bf16 rounding of other batch
        # shapes? The old engine against itself with the new engine's prefill grouping (calls of --prefill-rows
        # rows, longest-prompt order as the new engine sorts them), and the new engine with one prefill chunk.
        force = {"min_new_tokens": args.new_tokens, "max_new_tokens": args.new_tokens}
        items = make_items(rows, args.frames, *args.size)
        fast = engines["qwen2vl_fast"]
        order = sorted(range(rows), key=lambda i: fast._prompt_cost(items[i]))
        old_split = torch.empty_like(kept_ids[("qwen2vl", rows)])
        for a in range(0, rows, args.prefill_rows):
            part = order[a:a + args.prefill_rows]
            ids, _ = engines["qwen2vl"].generate_ids([items[i] for i in part], **force)
            old_split[torch.tensor(part)] = ids
        fast.configure(prefill_rows=rows)
        one_chunk, _ = fast.generate_ids(items, **force)
        fast.configure(prefill_rows=args.prefill_rows)
        fast._state = None
        ref = kept_ids[("qwen2vl", rows)]
        res["batching_noise"] = {"rows": rows, "old_in_calls_of_prefill_rows_vs_old": identity(ref, old_split),
                                 "new_one_prefill_chunk_vs_old": identity(ref, one_chunk),
                                 "new_vs_old_in_calls_of_prefill_rows": identity(old_split,
                                                                                 kept_ids[("qwen2vl_fast", rows)])
                                 if ("qwen2vl_fast", rows) in kept_ids else None}
        print("batching noise", res["batching_noise"], flush=True)
        save()
    if cuda:
        torch.cuda.empty_cache()
        for name in ("qwen2vl", "qwen2vl_fast") if args.profile_rows else ():
            engine = engines[name]
            if time.perf_counter() - t0 > args.budget_s + 60:
                res["skipped"].append(f"profile of {name} (time budget)")
                continue
            try:
                items = make_items(args.profile_rows, args.frames, *args.size)
                res.setdefault("profile", {})[name] = profile(engine, items, args.profile_tokens)
            except Exception as exc:  # noqa: BLE001
                res.setdefault("profile", {})[name] = {"error": f"{type(exc).__name__}: {str(exc)[:300]}"}
            print("profile", name, res["profile"][name], flush=True)
            save()
        if args.profile_rows:
            try:
                items = make_items(args.prefill_rows, args.frames, *args.size)
                res["prefill_profile"] = prefill_profile(engines["qwen2vl_fast"], items)
            except Exception as exc:  # noqa: BLE001
                res["prefill_profile"] = {"error": f"{type(exc).__name__}: {str(exc)[:300]}"}
            print("prefill profile", res["prefill_profile"], flush=True)
            save()
        for rows in args.decode_profile_rows:
            try:
                engines["qwen2vl_fast"]._state = None
                torch.cuda.empty_cache()
                out = decode_profile(engines["qwen2vl_fast"], make_items(rows, args.frames, *args.size))
            except Exception as exc:  # noqa: BLE001
                out = {"error": f"{type(exc).__name__}: {str(exc)[:300]}"}
            res.setdefault("decode_profile", {})[rows] = out
            print("decode profile", rows, out, flush=True)
            save()
    best = {name: max((r["output_tokens_per_s"], b) for b, r in runs.items() if "output_tokens_per_s" in r)
            for name, runs in res["runs"].items() if any("output_tokens_per_s" in r for r in runs.values())}
    res["best"] = {name: {"output_tokens_per_s": v, "rows": b} for name, (v, b) in best.items()}
    if "qwen2vl" in best and "qwen2vl_fast" in best:
        res["speedup_at_best"] = round(best["qwen2vl_fast"][0] / best["qwen2vl"][0], 2)
    res["total_s"] = round(time.perf_counter() - t0, 1)
    save()
    print(json.dumps({k: res[k] for k in ("best", "speedup_at_best", "identity", "skipped", "total_s") if k in res},
                     indent=1))


if __name__ == "__main__":
    main()
