"""Manifests: parts are written whole sources at a time, atomically; finished sources are found for resume."""

import pyarrow as pa

from curation.manifest import SampleWriter, counts, finished_sources, part_files, read_manifest
from curation.schema import base_schema, empty_row, make_sample_id


def _rows(src, n, status="kept"):
    rows = []
    for i in range(n):
        r = empty_row(src)
        r.update(sample_id=make_sample_id(src, i * 10, i * 10 + 10), start_frame=i * 10, end_frame=i * 10 + 10,
                 clip_index=i, clips_in_source=n, status=status)
        if status == "rejected":
            r["reject_reasons"] = ["duration_s<1.0"]
        rows.append(r)
    return rows


def test_writer_only_writes_complete_sources(tmp_path):
    schema = base_schema()
    w = SampleWriter(tmp_path, schema, rows_per_file=2)
    a, b = _rows("a.mp4", 3), _rows("b.mp4", 1, status="rejected")
    # Clips of `a` arrive in two batches with `b` in between: `a` must not be written until all 3 are in.
    w.add_table(pa.Table.from_pylist([a[0], b[0]], schema=schema))
    assert finished_sources(tmp_path) == set()  # one complete source (b) is fewer rows than rows_per_file
    w.add_table(pa.Table.from_pylist([a[1]], schema=schema))
    assert len(part_files(tmp_path / "samples")) == 0
    w.add_table(pa.Table.from_pylist([a[2]], schema=schema))
    assert finished_sources(tmp_path) == {"a.mp4", "b.mp4"}
    assert w.close() == {}
    t = read_manifest(tmp_path / "samples")
    assert t.num_rows == 4
    assert sorted(t.column("sample_id").to_pylist()) == sorted(r["sample_id"] for r in a + b)
    c = counts(tmp_path)
    assert c["status"] == {"kept": 3, "rejected": 1}
    assert c["reject_reasons"] == {"duration_s<1.0": 1}


def test_incomplete_source_is_reported_not_written(tmp_path):
    schema = base_schema()
    w = SampleWriter(tmp_path, schema, rows_per_file=1)
    w.add_table(pa.Table.from_pylist(_rows("a.mp4", 2)[:1], schema=schema))
    assert w.close() == {"a.mp4": 1}
    assert finished_sources(tmp_path) == set()


def test_temporary_files_are_invisible(tmp_path):
    d = tmp_path / "samples"
    d.mkdir()
    (d / ".part-x.parquet.1234.tmp").write_bytes(b"half a file")
    assert part_files(d) == []
    assert finished_sources(tmp_path) == set()


def test_sample_id_is_stable():
    assert make_sample_id("s3://b/x.mp4", 0, 10) == make_sample_id("s3://b/x.mp4", 0, 10)
    assert make_sample_id("s3://b/x.mp4", 0, 10) != make_sample_id("s3://b/x.mp4", 0, 11)
