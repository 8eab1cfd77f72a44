"""Captioning throughput on one GPU: `Qwen2VLCaptioner.caption` with a model of Qwen2-VL-7B-Instruct's exact
architecture (public config.json values below) in bfloat16 with SDPA attention, **random weights** (no weights can be
downloaded here). Speed does not depend on the weights as long as the work is the same, so every answer is forced to
exactly `--new-tokens` tokens (`min_new_tokens`); the captions themselves are noise and are not looked at.

Per batch size: clips/s and generated tokens/s over `--rounds` timed calls after one warm-up, the prompt length per
clip (8 frames at 336 px of a real photo panning, plus the instruction and OCR text on half the clips), the time of
the prefill alone (1 new token), and peak GPU memory. Prompts come through our own processor path (chat template,
frame sizing, left padding) with a small offline tokenizer whose vocabulary is smaller than Qwen's; the model's
embedding and output layers keep Qwen2-VL-7B's 152,064 rows, so the compute is Qwen's.

    python bench/caption.py --batches 8 16 32 --new-tokens 200 --rounds 2
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


def main() -> None:
    """Command line entry point."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--batches", type=int, nargs="+", default=[8, 16, 32])
    ap.add_argument("--new-tokens", type=int, default=200)
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--frames", type=int, default=8)
    ap.add_argument("--short-side", type=int, default=336)
    ap.add_argument("--out", type=Path, default=None)
    args = ap.parse_args()
    sys.path[:0] = [str(ROOT), str(ROOT / "tests")]
    import cv2
    import numpy as np
    import skimage.data
    import torch
    from transformers import Qwen2VLConfig, Qwen2VLForConditionalGeneration

    from captioner.qwen2vl import Qwen2VLCaptioner
    from tiny_qwen2vl import build_processor

    processor, ids = build_processor()
    config = Qwen2VLConfig(
        text_config={**TEXT, "eos_token_id": ids["<|im_end|>"], "pad_token_id": ids["<|endoftext|>"]},
        vision_config=VISION, image_token_id=ids["<|image_pad|>"], video_token_id=ids["<|video_pad|>"],
        vision_start_token_id=ids["<|vision_start|>"], vision_end_token_id=ids["<|vision_end|>"])
    config._attn_implementation = "sdpa"
    torch.manual_seed(0)
    t0 = time.perf_counter()
    with torch.device("cuda"):
        net = Qwen2VLForConditionalGeneration._from_config(config, dtype=torch.bfloat16)
    params = sum(p.numel() for p in net.parameters())
    build_s = time.perf_counter() - t0
    cap = Qwen2VLCaptioner.from_loaded(net, processor, "random-qwen2-vl-7b-arch", max_new_tokens=args.new_tokens,
                                       short_side=args.short_side)
    photo = cv2.resize(skimage.data.chelsea(), (480, 272))
    clip = np.stack([np.roll(photo, 12 * i, axis=1) for i in range(args.frames)])
    res: dict = {"device": torch.cuda.get_device_name(0), "torch": torch.__version__, "params": params,
                 "build_s": round(build_s, 1), "new_tokens": args.new_tokens, "frames": args.frames,
                 "short_side": args.short_side, "batches": {}}
    for b in args.batches:
        items = [{"frames": clip, "media_type": "video", "ocr_text": "BREAKING NEWS: heavy rain tonight" if i % 2 else ""}
                 for i in range(b)]
        inputs = processor(text=[processor.apply_chat_template(
            [{"role": "user", "content": [{"type": "video"}, {"type": "text", "text": "x"}]}],
            add_generation_prompt=True, tokenize=False)], videos=[cap_frames(cap, clip)],
            videos_kwargs={"cap_pixels_per_frame": True}, return_tensors="pt")
        vision_tokens = int((inputs["input_ids"] == ids["<|video_pad|>"]).sum())
        force = {"min_new_tokens": args.new_tokens}
        cap.caption(items[:2], **force)  # warm-up
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        runs = []
        for _ in range(args.rounds):
            t = time.perf_counter()
            cap.caption(items, **force)
            torch.cuda.synchronize()
            runs.append(time.perf_counter() - t)
        t = time.perf_counter()
        cap.caption(items, max_new_tokens=1)
        torch.cuda.synchronize()
        prefill = time.perf_counter() - t
        best = min(runs)
        res["batches"][b] = {"seconds": [round(r, 2) for r in runs], "clips_per_s": round(b / best, 3),
                             "generated_tokens_per_s": round(b * args.new_tokens / best, 1),
                             "vision_tokens_per_clip": vision_tokens, "prefill_s": round(prefill, 2),
                             "peak_gib": round(torch.cuda.max_memory_allocated() / 2**30, 1)}
        print(b, res["batches"][b], flush=True)
    print(json.dumps(res, indent=1))
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(res, indent=1))


def cap_frames(cap, clip):
    """The clip as the captioner sizes it (to count its vision tokens)."""
    from captioner.qwen2vl import fit_frames

    return fit_frames(clip, cap.short_side)


if __name__ == "__main__":
    main()
