"""k-means: assignment equals `KMeans.predict`, also through Ray Data; balanced sampling; the post-write pass over
`samples/` (real Ray, real Parquet) fills `cluster_id` and `duplicate_of` and is idempotent."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from curation.clustering import (ClusterAssigner, assign, balanced_sample, cluster_manifest, fit_centroids,
                                 load_centroids)
from curation.dedup import DedupConfig
from curation.schema import make_sample_id, manifest_schema


def _blobs(n: int, k: int, d: int, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    centers = rng.normal(size=(k, d))
    x = centers[rng.integers(0, k, n)] + 0.3 * rng.normal(size=(n, d))
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


def test_assign_matches_kmeans_predict():
    x = _blobs(3000, 12, 32)
    centroids, info = fit_centroids(x, k=12, sample_size=1000, seed=0)
    assert centroids.shape == (12, 32) and info["fit_rows"] == 1000
    from sklearn.cluster import KMeans

    km = KMeans(n_clusters=12, n_init=1, random_state=0).fit(x[:500])
    np.testing.assert_array_equal(assign(x, km.cluster_centers_, block=700), km.predict(x))
    km.cluster_centers_ = centroids  # our fitted centroids through sklearn's own predict
    np.testing.assert_array_equal(assign(x, centroids), km.predict(x))


def test_k_larger_than_rows_is_reduced():
    centroids, info = fit_centroids(_blobs(7, 2, 8), k=100)
    assert centroids.shape == (7, 8) and info["k"] == 7 and "reduced" in info["note"]


def test_balanced_sample_spreads_over_clusters():
    df = pd.DataFrame({"cluster_id": [10] * 50 + [11] * 5 + [42] * 20 + [None] * 5, "v": range(80)})
    s = balanced_sample(df, 21, seed=1)
    assert s["cluster_id"].value_counts().to_dict() == {10.0: 8, 11.0: 5, 42.0: 8}
    assert len(balanced_sample(df, 1000)) == 75  # nulls are never drawn
    pd.testing.assert_frame_equal(balanced_sample(df, 21, seed=1), s)


@pytest.fixture(scope="module")
def ray_local():
    import ray

    ray.init(num_cpus=2, include_dashboard=False, ignore_reinit_error=True, log_to_driver=False)
    yield ray
    ray.shutdown()


def test_ray_assignment_equals_predict(ray_local):
    import ray
    from sklearn.cluster import MiniBatchKMeans

    x = _blobs(1000, 5, 16, seed=3)
    km = MiniBatchKMeans(n_clusters=5, random_state=0, n_init=1).fit(x)
    items = [{"i": i, "embedding": x[i].tolist()} for i in range(len(x))]
    items[10]["embedding"] = None  # a row without an embedding gets a null cluster
    ds = ray.data.from_items(items).map_batches(ClusterAssigner(km.cluster_centers_), batch_size=128,
                                                batch_format="pyarrow")
    got = ds.to_pandas().sort_values("i")
    want = km.predict(x)
    assert pd.isna(got["cluster_id"].iloc[10])
    mask = np.arange(len(x)) != 10
    np.testing.assert_array_equal(got["cluster_id"].to_numpy()[mask].astype(int), want[mask])


def _write_manifest(out, x, dup_of: dict[int, int]):
    """Two part files in the manifest schema; rows in `dup_of` copy another row's embedding (slightly perturbed)."""
    rng = np.random.default_rng(1)
    x = x.copy()
    for i, j in dup_of.items():
        x[i] = x[j] + 0.001 * rng.normal(size=x.shape[1])
    schema = manifest_schema({"phash": pa.int64()})
    rows = []
    for i in range(len(x)):
        r = {f.name: None for f in schema}
        r.update(sample_id=make_sample_id(f"/v/{i}.mp4", 0, 10), source_uri=f"/v/{i}.mp4", status="kept",
                 reject_reasons=[], embedding=x[i].tolist(), quality_score=float(i % 5),
                 phash=int(rng.integers(-2**63, 2**63 - 1)))  # unrelated random hashes
        rows.append(r)
    rows[3].update(status="failed", embedding=None, error="decode: broken")
    rows[4].update(status="rejected", reject_reasons=["aesthetic_score<4.5"])
    (out / "samples").mkdir(parents=True)
    half = len(rows) // 2
    for n, chunk in enumerate((rows[:half], rows[half:])):
        pq.write_table(pa.Table.from_pylist(chunk, schema=schema), out / "samples" / f"part-{n:05d}.parquet",
                       compression="zstd")
    return [r["sample_id"] for r in rows]


def test_cluster_manifest_fills_columns_and_is_idempotent(ray_local, tmp_path):
    x = _blobs(120, 4, 16, seed=5)
    ids = _write_manifest(tmp_path, x, dup_of={50: 10, 90: 70})
    per_cluster = DedupConfig(cos_threshold=0.99, max_group=50)  # 120 rows > 50: compare within clusters
    summary = cluster_manifest(tmp_path, k=4, sample_size=1000, seed=0, dedup=per_cluster)
    assert summary["k"] == 4 and summary["rows"] == 120 and summary["duplicates"] == 2
    df = pd.read_parquet(tmp_path / "samples").set_index("sample_id")
    centroids = load_centroids(tmp_path)
    emb_rows = df["embedding"].notna()
    want = assign(np.stack(df.loc[emb_rows, "embedding"].map(np.asarray)), centroids)
    np.testing.assert_array_equal(df.loc[emb_rows, "cluster_id"].to_numpy().astype(int), want)
    assert pd.isna(df.loc[ids[3], "cluster_id"]) and df.loc[ids[3], "status"] == "failed"
    # quality 0 (row 50) vs 0 (row 10): tie → smallest id represents; row 90 (q 0) vs 70 (q 0) likewise
    for dup, orig in ((50, 10), (90, 70)):
        pair = sorted([ids[dup], ids[orig]])
        assert df.loc[pair[1], "duplicate_of"] == pair[0]
        assert df.loc[pair[1], "status"] == "rejected" and list(df.loc[pair[1], "reject_reasons"]) == ["duplicate_of"]
        assert pd.isna(df.loc[pair[0], "duplicate_of"]) and df.loc[pair[0], "status"] == "kept"
    assert df["duplicate_of"].notna().sum() == 2
    assert list(df.loc[ids[4], "reject_reasons"]) == ["aesthetic_score<4.5"]

    before = {p.name: pq.read_table(p) for p in (tmp_path / "samples").glob("part-*.parquet")}
    again = cluster_manifest(tmp_path, k=4, sample_size=1000, seed=0, dedup=per_cluster)
    assert again["reused"] and again["duplicates"] == 2
    for p in (tmp_path / "samples").glob("part-*.parquet"):
        assert pq.read_table(p).equals(before[p.name]), p.name
    assert not list((tmp_path / "samples").glob(".*"))  # no temp files left behind

    # a manifest that fits one comparison group is compared whole: same verdicts
    assert cluster_manifest(tmp_path, k=4, dedup=DedupConfig(cos_threshold=0.99))["duplicates"] == 2


def test_rewrite_withdraws_earlier_duplicate_verdicts(tmp_path):
    from curation.clustering import _rewrite_part

    schema = manifest_schema()
    rows = []
    for i, (status, reasons) in enumerate([("rejected", ["duplicate_of"]), ("rejected", ["duplicate_of", "x<1"]),
                                           ("kept", []), ("failed", [])]):
        r = {f.name: None for f in schema}
        r.update(sample_id=f"s{i}", source_uri=f"/v/{i}", status=status, reject_reasons=reasons,
                 duplicate_of="s9" if "duplicate_of" in reasons else None)
        rows.append(r)
    path = tmp_path / "part-00000.parquet"
    pq.write_table(pa.Table.from_pylist(rows, schema=schema), path)
    batch = pd.DataFrame({"path": str(path), "sample_id": ["s0", "s1", "s2", "s3"], "cluster_id": [0, 0, 1, -1],
                          "duplicate_of": [None, None, "s0", None]})
    _rewrite_part(batch, reject_duplicates=True)
    df = pd.read_parquet(path).set_index("sample_id")
    assert df.loc["s0", "status"] == "kept" and list(df.loc["s0", "reject_reasons"]) == []
    assert df.loc["s1", "status"] == "rejected" and list(df.loc["s1", "reject_reasons"]) == ["x<1"]
    assert df.loc["s2", "status"] == "rejected" and list(df.loc["s2", "reject_reasons"]) == ["duplicate_of"]
    assert df.loc["s3", "status"] == "failed" and pd.isna(df.loc["s3", "cluster_id"])
    assert df["cluster_id"].tolist()[:3] == [0, 0, 1]
