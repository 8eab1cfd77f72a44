"""Clustering cost on CPU: MiniBatchKMeans fit for N × D embeddings (default 1,000,000 × 768, K = 100),
nearest-centroid assignment throughput, and within-cluster near-duplicate search throughput.

    OMP_NUM_THREADS=2 nice python bench/cluster.py --n 1000000 --dim 768 --k 100

Data: unit vectors around K random centres (a stand-in for CLIP embeddings; timing does not depend on the values).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from curation.clustering import assign, fit_centroids  # noqa: E402
from curation.dedup import DedupConfig, find_duplicates  # noqa: E402


def rss_gib() -> float:
    """Peak resident set size of this process so far."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2 ** 20


def make_data(n: int, d: int, k: int, seed: int = 0) -> np.ndarray:
    """Unit vectors scattered around k centres, float32, generated in blocks to bound peak memory."""
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(k, d)).astype(np.float32)
    x = np.empty((n, d), dtype=np.float32)
    for s in range(0, n, 100_000):
        e = min(n, s + 100_000)
        block = centres[rng.integers(0, k, e - s)] + 0.8 * rng.standard_normal((e - s, d), dtype=np.float32)
        x[s:e] = block / np.linalg.norm(block, axis=1, keepdims=True)
    return x


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--n", type=int, default=1_000_000)
    p.add_argument("--dim", type=int, default=768)
    p.add_argument("--k", type=int, default=100)
    p.add_argument("--sample-sizes", type=int, nargs="+", default=[0, 200_000], help="0 = fit on all rows")
    p.add_argument("--dedup-group", type=int, default=20_000)
    args = p.parse_args()
    res = {"n": args.n, "dim": args.dim, "k": args.k, "threads": os.environ.get("OMP_NUM_THREADS", "all"),
           "cpus": os.cpu_count(), "fits": []}
    t0 = time.perf_counter()
    x = make_data(args.n, args.dim, args.k)
    res["data_gib"] = round(x.nbytes / 2 ** 30, 2)
    res["generate_s"] = round(time.perf_counter() - t0, 1)
    for sample in args.sample_sizes:
        t0 = time.perf_counter()
        centroids, info = fit_centroids(x, k=args.k, sample_size=sample or None, seed=0)
        res["fits"].append({"fit_rows": info["fit_rows"], "wall_s": round(time.perf_counter() - t0, 1),
                            "n_steps": info["n_steps"], "peak_rss_gib": round(rss_gib(), 2)})
        print(json.dumps(res["fits"][-1]), flush=True)
    t0 = time.perf_counter()
    labels = assign(x, centroids)
    dt = time.perf_counter() - t0
    res["assign_rows_per_s"] = round(args.n / dt)
    res["cluster_sizes"] = {"min": int(np.bincount(labels).min()), "max": int(np.bincount(labels).max())}
    g = x[: args.dedup_group]
    t0 = time.perf_counter()
    find_duplicates([str(i) for i in range(len(g))], g, None, cfg=DedupConfig())
    res["dedup_rows_per_s_at_group"] = {"group": len(g), "rows_per_s": round(len(g) / (time.perf_counter() - t0))}
    res["peak_rss_gib"] = round(rss_gib(), 2)
    print(json.dumps(res, indent=1))


if __name__ == "__main__":
    main()
