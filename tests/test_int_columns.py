"""64-bit integer columns stay integers end to end, with nulls (failed rows) in the same batch: a pass through
float64 loses the low bits of values above 2**53 (`phash` then differed from a recomputation by 2-14 bits)."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pytest

from curation.config import parse_config
from curation.graph import STAGE_BATCH_FORMAT, _OperatorActor, _TaskChain, conform, numpy_batch, plan

# Hashes whose low bits a float64 cannot hold (|v| > 2**53), as phash64 returns them (signed view of 64 bits).
BIG = [-0x7EDCBA9876543211, 0x7FFFFFFFFFFFFFFF, -(2**63), 0x1234567890ABCDEF, 2**53 + 1]
INT_COLUMNS = ("start_frame", "end_frame", "num_frames", "width", "height", "rotation", "source_size_bytes",
               "clip_index", "clips_in_source", "cluster_id", "phash")


def _rows_with_a_failed_one(schema: pa.Schema) -> pa.Table:
    """Good rows with big integers in every integer column, and a failed row (nulls) in the same block."""
    rows = []
    for i, v in enumerate(BIG):
        row = {f.name: None for f in schema}
        row.update(sample_id=f"s{i}", source_uri=f"/x/{i}.mp4", media_type="video", status="kept", fps=24.0,
                   duration_s=3.0)
        for c in INT_COLUMNS:
            row[c] = v
        rows.append(row)
    failed = {f.name: None for f in schema}
    failed.update(sample_id="bad", source_uri="/x/bad.mp4", status="failed", error="ProbeError: empty file",
                  clips_in_source=1, clip_index=0)
    rows.insert(2, failed)
    return pa.Table.from_pylist(rows, schema=schema)


def test_numpy_batch_keeps_nullable_int64_exact():
    t = pa.table({"p": pa.array([BIG[0], None, BIG[1]], pa.int64()), "q": pa.array([1, 2, 3], pa.int64()),
                  "f": pa.array([0.5, None, 1.5]), "s": pa.array(["a", None, "c"])})
    b = numpy_batch(t)
    assert list(b) == ["p", "q", "f", "s"]
    assert b["p"].dtype == object and b["p"].tolist() == [BIG[0], None, BIG[1]]
    assert b["q"].dtype == np.int64 and b["q"].tolist() == [1, 2, 3]
    assert b["f"].dtype == np.float64 and np.isnan(b["f"][1])
    assert b["s"].tolist() == ["a", None, "c"]


@pytest.fixture(scope="module")
def ray_local():
    import ray

    ray.init(num_cpus=2, include_dashboard=False, ignore_reinit_error=True, log_to_driver=False)
    yield ray
    ray.shutdown()


def test_graph_stages_keep_int64_exact_next_to_failed_rows(ray_local):
    """The graph's own stage classes, a task chain then an actor pool, over one block that mixes a failed row
    (nulls) with 64-bit values: every integer column comes out bit-exact, the failed row's nulls stay null."""
    import ray.data
    from ray.data import ActorPoolStrategy

    cfg = parse_config({"operators": ["basic", "phash"]})
    graph = plan(cfg)
    assert all(pa.types.is_integer(graph.schema.field(c).type) for c in INT_COLUMNS)
    table = _rows_with_a_failed_one(graph.schema)
    spec = cfg.operators[0]
    ds = ray.data.from_arrow(table)  # one block: the failed row shares every batch with the good ones
    ds = ds.map_batches(_TaskChain([], cfg, decode=False, drop=False, decide=False, schema=graph.schema),
                        batch_format=STAGE_BATCH_FORMAT, batch_size=None)
    ds = ds.map_batches(_OperatorActor, fn_constructor_kwargs={"spec": spec, "cfg": cfg, "drop": True, "decide": True,
                                                               "schema": graph.schema},
                        compute=ActorPoolStrategy(size=1), batch_format=STAGE_BATCH_FORMAT, batch_size=None)
    out = pa.concat_tables([conform(t, graph.schema) for t in ds.iter_batches(batch_format="pyarrow",
                                                                               batch_size=None)])
    by_id = {r["sample_id"]: r for r in out.to_pylist()}
    for i, v in enumerate(BIG):
        row = by_id[f"s{i}"]
        assert {c: row[c] for c in INT_COLUMNS} == {c: v for c in INT_COLUMNS}, i
        assert row["short_side"] == v and row["long_side"] == v  # an operator's int output, from those columns
    assert by_id["bad"]["status"] == "failed" and by_id["bad"]["phash"] is None and by_id["bad"]["width"] is None
    for c in INT_COLUMNS:
        assert out.schema.field(c).type == pa.int64()


def test_stage_files_keep_int64_exact(tmp_path):
    """Stage mixes are built in pandas: a kept row with a null integer must not turn the column into float64."""
    from curation.config import StageSpec
    from curation.manifest import SampleWriter
    from curation.stages import write_stages

    schema = plan(parse_config({"operators": ["basic", "phash"]})).schema
    table = _rows_with_a_failed_one(schema)
    # A kept row without a hash or cluster (e.g. an operator left it null): nulls among the kept rows.
    rows = table.to_pylist()
    for r in rows:
        if r["sample_id"] != "bad":
            r.update(width=640, height=360, clips_in_source=1, clip_index=0)  # what selection and writer need
    rows[2].update(status="kept", error=None, media_type="image", width=300, height=300, phash=None, cluster_id=None)
    w = SampleWriter(tmp_path, schema, rows_per_file=100)
    w.add_table(pa.Table.from_pylist(rows, schema=schema))
    w.close()
    write_stages(tmp_path, (StageSpec(name="all", balance=None),))
    (part,) = (tmp_path / "stages" / "all").glob("part-*.parquet")
    import pyarrow.parquet as pq

    got = pq.read_table(part)
    for c in INT_COLUMNS:
        assert got.schema.field(c).type == pa.int64(), c
    by_id = {r["sample_id"]: r for r in got.to_pylist()}
    assert by_id["bad"]["phash"] is None and by_id["bad"]["cluster_id"] is None
    for i, v in enumerate(BIG):
        free = [c for c in INT_COLUMNS if c not in ("width", "height", "clips_in_source", "clip_index")]
        assert {c: by_id[f"s{i}"][c] for c in free} == {c: v for c in free}
