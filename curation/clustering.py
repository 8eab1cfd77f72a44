"""k-means clustering of sample embeddings (the paper's 100 groups), distributed assignment, balanced sampling, and
the post-write pass that fills `cluster_id` and `duplicate_of` in `<output>/samples/`.

Centroids are fitted with scikit-learn MiniBatchKMeans on a sample of embeddings (Euclidean on unit vectors, which
ranks neighbours as cosine does) and saved as `<output>/centroids.npy`; every row is then assigned to its nearest
centroid with the same rule as `KMeans.predict`, in a Ray Data map over all part files.
"""

from __future__ import annotations

import io
import json
import logging
import os
import time
from dataclasses import asdict
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa

from curation import outfs
from curation.dedup import DedupConfig, find_duplicates
from curation.manifest import rewrite_part, sample_parts, set_column

log = logging.getLogger(__name__)

CENTROIDS_FILE = "centroids.npy"
CENTROIDS_INFO = "centroids.json"
DUPLICATE_REASON = "duplicate_of"  # the reason `decide` gives for a `duplicate_of` reject_if_true rule
NO_CLUSTER = -1  # in-flight marker for rows without an embedding; written out as null
_PHASH_MISSING = np.iinfo(np.int64).min


def fit_centroids(embeddings: np.ndarray, k: int = 100, sample_size: int | None = 200_000, seed: int = 0,
                  batch_size: int = 4096, n_init: int = 3, max_iter: int = 100) -> tuple[np.ndarray, dict[str, Any]]:
    """Fit k-means (MiniBatchKMeans) on up to `sample_size` rows; returns centroids (k', D) and a summary."""
    from sklearn.cluster import MiniBatchKMeans

    x = np.asarray(embeddings, dtype=np.float32)
    if x.ndim != 2 or len(x) == 0:
        raise ValueError(f"need a non-empty (N, D) array of embeddings, got shape {x.shape}")
    rng = np.random.default_rng(seed)
    if sample_size and len(x) > sample_size:
        x = x[np.sort(rng.choice(len(x), size=sample_size, replace=False))]
    k_used = int(k)
    if k_used > len(x):
        log.warning("k-means: k=%d > %d rows to fit on; using k=%d", k, len(x), len(x))
        k_used = len(x)
    t0 = time.perf_counter()
    # scikit-learn's k-means++ upcasts float32 to float64 chunk by chunk, which made the init ~90% of the fit;
    # the same greedy k-means++ in float32 BLAS is ~10× faster. Best of n_init seeds by inertia on the init set.
    init_rows = x[rng.choice(len(x), size=min(len(x), max(3 * batch_size, 10 * k_used)), replace=False)]
    inits = [_kmeans_pp(init_rows, k_used, np.random.default_rng([seed, i])) for i in range(max(1, n_init))]
    best = min(inits, key=lambda c: _inertia(init_rows, c))
    km = MiniBatchKMeans(n_clusters=k_used, init=best, batch_size=min(batch_size, len(x)), n_init=1,
                         max_iter=max_iter, random_state=seed, compute_labels=False)
    km.fit(x)
    centroids = km.cluster_centers_.astype(np.float32)
    info = {"k_requested": int(k), "k": k_used, "fit_rows": len(x), "dim": int(x.shape[1]), "seed": seed,
            "batch_size": min(batch_size, len(x)), "n_init": n_init, "fit_seconds": round(time.perf_counter() - t0, 3),
            "n_steps": int(km.n_steps_)}
    if k_used < k:
        info["note"] = f"k reduced from {k} to {k_used}: only {len(x)} rows had embeddings"
    return centroids, info


def _sq_dist(x: np.ndarray, c: np.ndarray, x_sq: np.ndarray) -> np.ndarray:
    """Squared Euclidean distances (len(x), len(c)), float32, never negative."""
    d = x_sq[:, None] - 2.0 * (x @ c.T) + (c * c).sum(axis=1)[None, :]
    return np.maximum(d, 0.0, out=d)


def _kmeans_pp(x: np.ndarray, k: int, rng: np.random.Generator) -> np.ndarray:
    """Greedy k-means++ seeding (2 + ln k candidates per step, as scikit-learn does), in float32."""
    x_sq = (x * x).sum(axis=1)
    centres = np.empty((k, x.shape[1]), dtype=np.float32)
    centres[0] = x[rng.integers(len(x))]
    closest = _sq_dist(x, centres[:1], x_sq)[:, 0]
    trials = 2 + int(np.log(k))
    for i in range(1, k):
        total = float(closest.sum())
        if total <= 0:  # fewer distinct points than k: duplicates are as good as anything
            centres[i] = x[rng.integers(len(x))]
            continue
        cand = np.searchsorted(np.cumsum(closest, dtype=np.float64), rng.random(trials) * total)
        cand = np.minimum(cand, len(x) - 1)
        new_closest = np.minimum(closest[:, None], _sq_dist(x, x[cand], x_sq))  # (n, trials)
        best = int(np.argmin(new_closest.sum(axis=0)))
        centres[i] = x[cand[best]]
        closest = new_closest[:, best]
    return centres


def _inertia(x: np.ndarray, c: np.ndarray) -> float:
    return float(_sq_dist(x, c, (x * x).sum(axis=1)).min(axis=1).sum())


def assign(embeddings: np.ndarray, centroids: np.ndarray, block: int = 65_536) -> np.ndarray:
    """Nearest centroid per row (squared Euclidean, as `KMeans.predict`), int64."""
    x = np.asarray(embeddings, dtype=np.float32)
    c = np.asarray(centroids, dtype=np.float32)
    c_sq = (c * c).sum(axis=1)
    out = np.empty(len(x), dtype=np.int64)
    for s in range(0, len(x), block):
        xb = x[s:s + block]
        # |x-c|² = |x|² - 2x·c + |c|²; |x|² is the same for every centroid so it cannot change the argmin.
        out[s:s + block] = np.argmin(c_sq[None, :] - 2.0 * (xb @ c.T), axis=1)
    return out


def save_centroids(output_dir: str | os.PathLike, centroids: np.ndarray, info: dict[str, Any]) -> str:
    """Write `centroids.npy` (and `centroids.json`), each appearing whole; return the location of the first."""
    buf = io.BytesIO()
    np.save(buf, np.asarray(centroids, dtype=np.float32))
    path = outfs.join(output_dir, CENTROIDS_FILE)
    outfs.write_bytes(buf.getvalue(), path)
    outfs.write_text(json.dumps(info, indent=1), outfs.join(output_dir, CENTROIDS_INFO))
    return path


def load_centroids(output_dir: str | os.PathLike) -> np.ndarray:
    """Read `<output>/centroids.npy` (no pickle)."""
    return np.load(io.BytesIO(outfs.read_bytes(outfs.join(output_dir, CENTROIDS_FILE))), allow_pickle=False)


def _stack_embeddings(col: Any) -> tuple[np.ndarray, np.ndarray]:
    """(present mask, stacked float32 matrix of the present rows) from a column of lists/arrays/None."""
    values = list(col)
    present = np.array([v is not None and len(v) > 0 for v in values], dtype=bool)
    rows = [np.asarray(v, dtype=np.float32) for v, p in zip(values, present) if p]
    mat = np.stack(rows) if rows else np.zeros((0, 0), dtype=np.float32)
    return present, mat


class ClusterAssigner:
    """Ray Data batch function (use `batch_format="pyarrow"`): adds `cluster_id` from `embedding` by nearest
    centroid, null where a row has no embedding. Arrow in, Arrow out, so other columns pass through untouched
    (numpy batches would turn a list column with nulls into objects in one block and tensors in the next)."""

    def __init__(self, centroids: np.ndarray, column: str = "cluster_id", missing: int | None = None):
        self.centroids = np.asarray(centroids, dtype=np.float32)
        self.column = column
        self.missing = missing

    def __call__(self, batch: pa.Table) -> pa.Table:
        ids = self.cluster_ids(batch.column("embedding").to_pylist())
        if self.column in batch.column_names:
            batch = batch.drop_columns([self.column])
        return batch.append_column(self.column, pa.array(ids, pa.int64()))

    def cluster_ids(self, embeddings: list) -> list[int | None]:
        """Nearest-centroid ids for a list of embeddings (None → `missing`)."""
        present, mat = _stack_embeddings(embeddings)
        ids: list[int | None] = [self.missing] * len(present)
        if len(mat):
            for i, c in zip(np.nonzero(present)[0], assign(mat, self.centroids).tolist()):
                ids[i] = c
        return ids


def balanced_sample(df: pd.DataFrame, n: int, by: str = "cluster_id", seed: int = 0) -> pd.DataFrame:
    """Up to `n` rows spread as evenly as possible over the groups of `by` (round-robin over shuffled groups)."""
    rng = np.random.default_rng(seed)
    groups = df.groupby(by, dropna=True, sort=True).indices
    if not groups or n <= 0:
        return df.iloc[0:0]
    labels = list(groups)
    group_rank = {labels[i]: r for r, i in enumerate(rng.permutation(len(labels)))}
    keys = []
    for lab in labels:
        pos = rng.permutation(groups[lab])
        # Round j of group g sorts before round j+1 of any group: each group gives its j-th row before any gives a
        # (j+1)-th, so small clusters are exhausted first and big ones fill the remainder.
        keys.extend((j, group_rank[lab], p) for j, p in enumerate(pos))
    keys.sort()
    take = [p for _, _, p in keys[:n]]
    return df.iloc[take]


# -- the post-write pass over <output>/samples/ --------------------------------------------------------------------


def _eff_kept(status: Any, reasons: Any) -> bool:
    """Kept before this pass: kept, or rejected for no reason but an earlier `duplicate` mark (re-runs)."""
    if status == "kept":
        return True
    rs = [] if reasons is None else [r for r in list(reasons) if r != DUPLICATE_REASON]
    return status == "rejected" and not rs


def _sample_for_fit(parts: list[str], sample_size: int, seed: int) -> np.ndarray:
    """A proportional, deterministic sample of non-failed rows' embeddings across part files."""
    counts = [outfs.parquet_rows(p) for p in parts]
    total = max(sum(counts), 1)
    chunks = []
    for i, (p, n) in enumerate(zip(parts, counts)):
        if n == 0:
            continue
        t = outfs.read_parquet(p, columns=["embedding", "status"])
        present, mat = _stack_embeddings(t.column("embedding").to_pylist())
        status = np.array(t.column("status").to_pylist(), dtype=object)[present]
        mat = mat[status != "failed"] if len(mat) else mat
        want = int(np.ceil(sample_size * n / total))
        if len(mat) > want:
            rng = np.random.default_rng([seed, i])
            mat = mat[np.sort(rng.choice(len(mat), size=want, replace=False))]
        if len(mat):
            chunks.append(mat)
    return np.concatenate(chunks) if chunks else np.zeros((0, 0), dtype=np.float32)


def _dedup_group(batch: pd.DataFrame, cfg: DedupConfig) -> pd.DataFrame:
    """Ray map_groups body: `duplicate_of` for the rows of one comparison group (a cluster, or everything)."""
    out = batch[["path", "sample_id", "cluster_id"]].copy()
    out["duplicate_of"] = None
    live = ((batch["status"] != "failed") & (batch["cluster_id"] != NO_CLUSTER)).to_numpy()
    if live.sum() < 2:
        return out
    sub = batch[live]
    _, emb = _stack_embeddings(sub["embedding"])
    phash = None
    if "phash" in sub:
        phash = np.array([_PHASH_MISSING if v is None or pd.isna(v) else int(v) for v in sub["phash"]], np.int64)
    quality = [None if v is None or pd.isna(v) else float(v) for v in sub["quality_score"]] \
        if "quality_score" in sub else None
    status = ["kept" if _eff_kept(s, r) else s for s, r in zip(sub["status"], sub["reject_reasons"])]
    dup = find_duplicates(list(sub["sample_id"]), emb, phash, quality, status, cfg)
    out.loc[live, "duplicate_of"] = pd.Series(dup, index=out.index[live], dtype=object)
    return out


def _rewrite_part(batch: pd.DataFrame, reject_duplicates: bool, like: str = "") -> pd.DataFrame:
    """Ray map_groups body: rewrite one part file with `cluster_id` and `duplicate_of` (it appears whole)."""
    path = outfs.location_of(str(batch["path"].iloc[0]), like)
    table = rewrite_part(path, lambda t: _mark(t, batch, reject_duplicates))
    n_dup = table.num_rows - table.column("duplicate_of").null_count
    return pd.DataFrame({"path": [str(path)], "rows": [table.num_rows], "duplicates": [n_dup]})


def _mark(table: pa.Table, batch: pd.DataFrame, reject_duplicates: bool) -> pa.Table:
    """`table` with `cluster_id` and `duplicate_of` from the pass (and duplicate rejections when asked)."""
    cluster = dict(zip(batch["sample_id"], batch["cluster_id"]))
    dup = dict(zip(batch["sample_id"], batch["duplicate_of"]))
    ids = table.column("sample_id").to_pylist()
    cid = [None if cluster.get(s, NO_CLUSTER) == NO_CLUSTER else int(cluster[s]) for s in ids]
    dof = [None if dup.get(s) is None or pd.isna(dup.get(s)) else str(dup[s]) for s in ids]
    table = set_column(table, "cluster_id", pa.array(cid, pa.int64()))
    table = set_column(table, "duplicate_of", pa.array(dof, pa.string()))
    if reject_duplicates and "reject_reasons" in table.column_names:
        status = table.column("status").to_pylist()
        reasons = table.column("reject_reasons").to_pylist()
        for i, d in enumerate(dof):
            rs = [r for r in (reasons[i] or []) if r != DUPLICATE_REASON]  # forget an earlier pass's verdict
            if status[i] == "rejected" and not rs:
                status[i] = "kept"
            if d is not None and status[i] != "failed":
                rs.append(DUPLICATE_REASON)
                status[i] = "rejected"
            reasons[i] = rs
        table = set_column(table, "status", pa.array(status, table.schema.field("status").type))
        table = set_column(table, "reject_reasons", pa.array(reasons, table.schema.field("reject_reasons").type))
    return table


def cluster_manifest(output_dir: str | os.PathLike, k: int = 100, sample_size: int = 200_000, seed: int = 0,
                     refit: bool = False, dedup: DedupConfig | None = DedupConfig(),
                     reject_duplicates: bool = True, batch_size: int = 4096) -> dict[str, Any]:
    """Fit (or reuse) centroids on `<output>/samples/`, then a Ray pass fills `cluster_id` and `duplicate_of` in
    every part file in place. Idempotent: a re-run reuses `centroids.npy` (unless `refit`) and rewrites the same
    values. Returns a summary for run.json."""
    import ray

    out = os.fspath(output_dir)
    parts = sample_parts(out)
    t0 = time.perf_counter()
    if not parts:
        return {"skipped": "no samples/part-*.parquet"}
    centroids_path = outfs.join(out, CENTROIDS_FILE)
    if outfs.is_file(centroids_path) and not refit:
        centroids = load_centroids(out)
        info_path = outfs.join(out, CENTROIDS_INFO)
        info = json.loads(outfs.read_text(info_path)) if outfs.is_file(info_path) else {"k": len(centroids)}
        info["reused"] = True
    else:
        sample = _sample_for_fit(parts, sample_size, seed)
        if len(sample) == 0:
            return {"skipped": "no row has an embedding"}
        centroids, info = fit_centroids(sample, k=k, sample_size=sample_size, seed=seed)
        save_centroids(out, centroids, info)
    schema = outfs.parquet_schema(parts[0])
    cols = [c for c in ("sample_id", "embedding", "phash", "quality_score", "status", "reject_reasons")
            if c in schema.names]
    paths, fs = outfs.arrow_paths(parts)
    ds = ray.data.read_parquet(paths, filesystem=fs, include_paths=True).select_columns(cols + ["path"])
    ds = ds.map_batches(ClusterAssigner(centroids, missing=NO_CLUSTER), batch_format="pyarrow", batch_size=batch_size)
    if "reject_reasons" not in cols:
        ds = ds.add_column("reject_reasons", lambda b: pd.Series([None] * len(b), dtype=object),
                           batch_format="pandas")
    if dedup is not None:
        # Compare within clusters (SemDeDup); a manifest small enough for one comparison group is compared whole,
        # so a tiny run whose k collapsed to near-singleton clusters still finds its duplicates.
        total = sum(outfs.parquet_rows(p) for p in parts)
        key = "cluster_id"
        if total <= dedup.max_group:
            key = "_dedup_group"
            ds = ds.map_batches(lambda t: t.append_column(key, pa.array(np.zeros(len(t), np.int64))),
                                batch_format="pyarrow")
        # Partitions bound the shuffle's task count (the default of 200 dominates small runs).
        parts_n = 1 if key == "_dedup_group" else max(1, min(len(centroids), 64))
        ds = ds.groupby(key, num_partitions=parts_n).map_groups(lambda b: _dedup_group(b, dedup),
                                                                batch_format="pandas")
    else:
        ds = ds.map_batches(lambda b: b[["path", "sample_id", "cluster_id"]].assign(duplicate_of=None),
                            batch_format="pandas")
    done = ds.groupby("path", num_partitions=max(1, min(len(parts), 64))).map_groups(
        lambda b: _rewrite_part(b, reject_duplicates, out), batch_format="pandas")
    stats = done.to_pandas()
    summary = {**info, "centroids": str(centroids_path), "parts": len(parts), "rows": int(stats["rows"].sum()),
               "duplicates": int(stats["duplicates"].sum()), "dedup": None if dedup is None else asdict(dedup),
               "seconds": round(time.perf_counter() - t0, 3)}
    untouched = set(parts) - set(stats["path"])
    if untouched:  # parts with zero rows never reach map_groups; nothing to fill in them
        summary["empty_parts"] = sorted(untouched)
    return summary
