"""Near-duplicate detection: cosine similarity of `embedding` within a cluster, plus a 64-bit DCT perceptual hash.

Two rows are near-duplicates when their embeddings' cosine similarity reaches `cos_threshold` or their pHashes
differ in at most `hamming_threshold` bits (SemDeDup's idea — compare only inside a k-means cluster — with a hash
that catches re-encodes whose embeddings drift). Duplicates form groups (connected components); each group keeps
one representative — a kept row before a rejected one, then the highest `quality_score`, then the smallest
`sample_id` — and every other member gets `duplicate_of = <representative's sample_id>`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import numpy as np


@dataclass(frozen=True)
class DedupConfig:
    """Thresholds of near-duplicate detection."""

    cos_threshold: float = 0.95
    hamming_threshold: int = 8  # of 64 bits; re-encodes land at 0-4, unrelated images around 32
    use_phash: bool = True
    block: int = 2048  # rows per block of the similarity matrix (memory: block² floats)
    max_group: int = 20_000  # larger clusters are split by a second k-means before the O(n²) comparison


def phash64(frame: np.ndarray) -> int:
    """64-bit DCT perceptual hash of an RGB or grey uint8 image, returned as a signed int64 (same bits)."""
    import cv2

    img = np.asarray(frame)
    if img.ndim == 3:
        img = cv2.cvtColor(img, cv2.COLOR_RGB2GRAY)
    small = cv2.resize(img.astype(np.float32), (32, 32), interpolation=cv2.INTER_AREA)
    low = cv2.dct(small)[:8, :8].ravel()
    # The DC term measures overall brightness; leaving it out of the median makes the hash about structure.
    bits = low > np.median(low[1:])
    value = 0
    for b in bits:
        value = (value << 1) | int(b)
    return int(np.array(value, dtype=np.uint64).view(np.int64))


def hamming(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Bit differences between int64 hashes (broadcasting)."""
    x = np.bitwise_xor(np.asarray(a, dtype=np.int64), np.asarray(b, dtype=np.int64)).view(np.uint64)
    return np.bitwise_count(x).astype(np.int64)


class _UnionFind:
    def __init__(self, n: int):
        self.parent = np.arange(n)

    def find(self, i: int) -> int:
        """Root of i's set."""
        root = i
        while self.parent[root] != root:
            root = self.parent[root]
        while self.parent[i] != root:  # path compression keeps later finds O(1)
            self.parent[i], i = root, self.parent[i]
        return root

    def union(self, i: int, j: int) -> None:
        """Merge the sets of i and j (the smaller index becomes the root)."""
        ri, rj = self.find(i), self.find(j)
        if ri != rj:
            self.parent[max(ri, rj)] = min(ri, rj)


def duplicate_pairs(embeddings: np.ndarray, phashes: np.ndarray | None, cfg: DedupConfig) -> list[tuple[int, int]]:
    """Index pairs (i < j) that are near-duplicates, comparing block by block to bound memory."""
    x = np.asarray(embeddings, dtype=np.float32)
    x = x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)
    n = len(x)
    ph = None if phashes is None or not cfg.use_phash else np.asarray(phashes)
    pairs: list[tuple[int, int]] = []
    for s in range(0, n, cfg.block):
        e = min(n, s + cfg.block)
        sim = x[s:e] @ x.T  # (b, n)
        hit = sim >= cfg.cos_threshold
        if ph is not None:
            valid = ph != np.iinfo(np.int64).min  # sentinel for a missing hash
            hd = hamming(ph[s:e, None], ph[None, :])
            hit |= (hd <= cfg.hamming_threshold) & valid[s:e, None] & valid[None, :]
        ii, jj = np.nonzero(hit)
        ii = ii + s
        keep = jj > ii
        pairs.extend(zip(ii[keep].tolist(), jj[keep].tolist()))
    return pairs


def find_duplicates(sample_ids: Sequence[str], embeddings: np.ndarray, phashes: np.ndarray | None = None,
                    quality: Sequence[float | None] | None = None, status: Sequence[str | None] | None = None,
                    cfg: DedupConfig = DedupConfig()) -> list[str | None]:
    """`duplicate_of` for each row of one group (e.g. one cluster): the representative's sample_id, or None."""
    n = len(sample_ids)
    if n < 2:
        return [None] * n
    if len(embeddings) > cfg.max_group:
        return _find_in_subgroups(sample_ids, embeddings, phashes, quality, status, cfg)
    uf = _UnionFind(n)
    for i, j in duplicate_pairs(embeddings, phashes, cfg):
        uf.union(i, j)
    roots = np.array([uf.find(i) for i in range(n)])
    q = np.array([-np.inf if quality is None or quality[i] is None or np.isnan(quality[i]) else quality[i]
                  for i in range(n)], dtype=np.float64)
    kept = np.array([status is not None and status[i] == "kept" for i in range(n)])
    out: list[str | None] = [None] * n
    for root in np.unique(roots):
        members = np.nonzero(roots == root)[0]
        if len(members) == 1:
            continue
        # Representative: kept over rejected (never lose a keepable clip to a rejected twin), then best quality,
        # then smallest id — deterministic, so a re-run picks the same one.
        rep = min(members, key=lambda m: (not kept[m], -q[m], str(sample_ids[m])))
        for m in members:
            if m != rep:
                out[m] = str(sample_ids[rep])
    return out


def _find_in_subgroups(sample_ids, embeddings, phashes, quality, status, cfg: DedupConfig) -> list[str | None]:
    """Split an oversized group with a second k-means (near-duplicates share a sub-cluster) and dedup each part."""
    from sklearn.cluster import MiniBatchKMeans

    x = np.asarray(embeddings, dtype=np.float32)
    k = int(np.ceil(len(x) / (cfg.max_group / 2)))
    labels = MiniBatchKMeans(n_clusters=k, random_state=0, n_init=1, batch_size=4096).fit_predict(x)
    out: list[str | None] = [None] * len(x)
    for lab in np.unique(labels):
        idx = np.nonzero(labels == lab)[0]
        sub = find_duplicates([sample_ids[i] for i in idx], x[idx], None if phashes is None else phashes[idx],
                              None if quality is None else [quality[i] for i in idx],
                              None if status is None else [status[i] for i in idx],
                              DedupConfig(**{**cfg.__dict__, "max_group": max(len(idx), cfg.max_group)}))
        for i, d in zip(idx, sub):
            out[i] = d
    return out
