"""Watermark heuristic on pans of every sample photo: slow pans (content drifting less than an edge's width between
the sampled frames) and normal ones, clean and with corner logos of 14, 9 and 7 % of the width; with and without the
drift check (`operators.watermark.drifts`), side by side in one run.

Clips are 10 s at 24 fps (240 source frames) at 640x360; the operator sees its K = 8 uniform frames, which are the
only frames rendered. A pan moves the content by `total` px over the clip (direction 3:1, x:y), so consecutive
sampled frames are total/7 px apart. Prints one JSON object: per pan length and condition, how many clips score
above 0.5 (the shipped configs' reject threshold), for logo clips how many of those name the logo's corner (a score
above 0.5 from another corner is a false positive that happens to share the clip), and the highest / lowest score.

    python bench/watermark.py --out bench/_out/watermark.json
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from curation.testing import samples as S  # noqa: E402
from operators.watermark import watermark_heuristic  # noqa: E402

W, H, N, K = 640, 360, 240, 8
CORNERS = ("tl", "tr", "bl", "br")


def clip(photo: np.ndarray, total: float) -> np.ndarray:
    """The K sampled frames of a 240-frame constant-velocity pan moving the content by `total` px."""
    d = math.hypot(3, 1)
    vx, vy = total / (N - 1) * 3 / d, total / (N - 1) * 1 / d
    p = S.fit_photo(photo, W + abs(vx) * (N - 1) + 4, H + abs(vy) * (N - 1) + 4)
    cx0, cy0 = p.shape[1] / 2 - vx * (N - 1) / 2, p.shape[0] / 2 - vy * (N - 1) / 2
    picks = np.linspace(0, N - 1, K).round().astype(int)
    return np.stack([S.view(p, cx0 + vx * i, cy0 + vy * i, W, H) for i in picks])


def logo(corner: str, font: str, scale: float, opacity: float) -> S.Overlay:
    """The sample set's station logo at `scale` x its 14 % width, in `corner`."""
    lw, lh = int(W * scale), int(H * scale)
    ov = S.logo_overlay("NEWS24", corner, font, lw, lh, opacity)
    if corner in ("tr", "br"):
        ov.x0 += W - lw
    if corner in ("bl", "br"):
        ov.y0 += H - lh
    return ov


def main() -> None:
    """Command line entry point."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--totals", type=float, nargs="*", default=[3, 6, 12, 24, 48, 717])
    ap.add_argument("--out", type=Path, default=None)
    args = ap.parse_args()
    photos = S.load_photos()
    font = S.find_fonts()["en"]
    conditions = {"clean": None, "logo 14%": 1.0, "logo 9%": 0.64, "logo 7%": 0.5}
    res: dict = {"clip": f"{W}x{H}, {N} frames, K={K}", "photos": sorted(photos), "by_total_px": {}}
    t0 = time.perf_counter()
    for total in args.totals:
        row = {}
        for cond, scale in conditions.items():
            scores = {True: [], False: []}
            right = {True: 0, False: 0}
            for i, name in enumerate(sorted(photos)):
                frames = clip(photos[name], total)
                if scale is not None:
                    frames = np.stack(list(logo(CORNERS[i % 4], font, scale, 0.4 + 0.2 * (i % 2)).apply(frames)))
                for check in (True, False):
                    score, zone = watermark_heuristic(frames, drift_check=check)
                    scores[check].append(score)
                    right[check] += int(score > 0.5 and zone == CORNERS[i % 4])
            row[cond] = {("with_drift_check" if c else "without"): {
                "above_0.5": f"{sum(s > 0.5 for s in v)}/{len(v)}", "max": round(max(v), 3), "min": round(min(v), 3),
                **({} if scale is None else {"in_the_logo_corner": f"{right[c]}/{len(v)}"})}
                for c, v in scores.items()}
        res["by_total_px"][f"{total:g}"] = row
        print(f"{total:g} px", json.dumps(row), flush=True)
    res["seconds"] = round(time.perf_counter() - t0, 1)
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(res, indent=1))
    print(json.dumps(res, indent=1))


if __name__ == "__main__":
    main()
