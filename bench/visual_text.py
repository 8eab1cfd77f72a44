"""Synthetic visual-text throughput: renders/s per core, the PP-OCRv4 gate included, and what the gate keeps.

One process, one thread for everything (OpenCV, ONNX Runtime 1 intra-op thread), timed by the process's CPU time
(`process_time`: what a core-bound render actor pays, robust to neighbours on a shared machine) and by wall time.
Each sample is rendered, written as PNG and read back by the gate exactly as a Ray render actor does
(`captioner.visual_text.make.sample_row`); warm-up samples (fonts, vocabulary and OCR models loaded) are not timed.
Also reported: the kept share and mean character accuracy per language, per font and per size bucket.

    .venv/bin/python bench/visual_text.py --n 200 --out bench/_out/visual_text.json
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))


def main() -> int:
    """Run the bench and print a JSON summary (also written to --out)."""
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--n", type=int, default=200)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--warmup", type=int, default=4)
    p.add_argument("--config", default=None, help="YAML with a visual_text: section (default: built-in defaults)")
    p.add_argument("--out", default=None)
    args = p.parse_args()

    import cv2
    import pandas as pd

    cv2.setNumThreads(1)
    from captioner.visual_text import render as R
    from captioner.visual_text.make import OcrGate, _per_block, _shares, load_config, render_sample, sample_row

    cfg = load_config(args.config)
    fonts = R.available_fonts(list(cfg.fonts) if cfg.fonts else None)
    gate = OcrGate(threads=1)
    with tempfile.TemporaryDirectory() as tmp:
        images = Path(tmp)
        for i in range(args.warmup):
            sample_row(args.seed + 1, i, cfg, fonts, images, gate)
        # Render alone (no write, no OCR), then the full row (render + PNG + OCR gate), same samples.
        c0, w0 = time.process_time(), time.perf_counter()
        for i in range(args.n):
            render_sample(args.seed, i, cfg, fonts)
        c1, w1 = time.process_time(), time.perf_counter()
        rows = [sample_row(args.seed, i, cfg, fonts, images, gate) for i in range(args.n)]
        c2, w2 = time.process_time(), time.perf_counter()
    df = pd.DataFrame(rows)
    per_font, per_size = _per_block(df, cfg)
    kept = df[df["status"] == "kept"]
    out = {
        "n": args.n, "seed": args.seed, "fonts": [f.key for f in fonts],
        "render_only_per_s_cpu": round(args.n / (c1 - c0), 2),
        "renders_per_s_per_core_with_gate": round(args.n / (c2 - c1), 2),
        "renders_per_s_wall_with_gate": round(args.n / (w2 - w1), 2),
        "render_only_wall_s": round(w1 - w0, 2), "with_gate_cpu_s": round(c2 - c1, 2),
        "kept": len(kept), "dropped_ocr": int((df["status"] == "rejected").sum()),
        "failed": int((df["status"] == "failed").sum()),
        "per_language": _shares(df, "render_lang"),
        "mean_char_accuracy_kept": {k: round(float(g["ocr_char_accuracy"].mean()), 4)
                                    for k, g in kept.groupby("render_lang")},
        "per_font": per_font, "per_size": per_size,
        "cpu": os.cpu_count(),
    }
    text = json.dumps(out, indent=2, ensure_ascii=False)
    print(text)
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
