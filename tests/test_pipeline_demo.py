"""The demo run over the labeled sample set: every input accounted for, with the right status and reasons."""

from __future__ import annotations

import json

import pandas as pd
import pytest

pytestmark = pytest.mark.slow


def test_demo_prints_counts_and_manifest_loads(demo_output):
    out, proc = demo_output
    assert "rows:" in proc.stdout and "kept=" in proc.stdout and "failed=" in proc.stdout
    df = pd.read_parquet(out / "samples")
    assert len(df) > 0
    run = json.loads((out / "run.json").read_text())
    assert run["counts"]["rows"] == len(df)
    assert set(run["counts"]["status"]) <= {"kept", "rejected", "failed"}
    assert run["versions"]["ray"] and run["config"]["name"] == "demo"
    # No temporary file is left behind.
    assert not list((out / "samples").glob(".*"))


def test_every_input_accounted_for_once(demo_output, labels):
    out, _ = demo_output
    df = pd.read_parquet(out / "samples")
    assert df["sample_id"].is_unique
    assert set(df["source_uri"]) == set(labels["source_uri"])
    # Every source's clips form one contiguous, non-overlapping row set.
    for src, g in df[df["media_type"] == "video"].groupby("source_uri"):
        g = g.sort_values("start_frame")
        assert (g["clips_in_source"] == len(g)).all(), src
        assert list(g["start_frame"].iloc[1:]) == list(g["end_frame"].iloc[:-1]), src


def test_statuses_and_reasons_match_labels(demo_output, labels):
    out, _ = demo_output
    df = pd.read_parquet(out / "samples")
    for lab in labels.itertuples():
        rows = df[df["source_uri"] == lab.source_uri]
        if lab.expected_status == "failed":
            assert (rows["status"] == "failed").all(), lab.file
            assert rows["error"].str.len().gt(10).all(), lab.file
        elif lab.expected_status == "rejected":
            assert (rows["status"] == "rejected").all(), (lab.file, rows["status"].tolist())
            for rr in rows["reject_reasons"]:
                assert set(lab.expected_reasons) <= set(rr), (lab.file, list(rr))
        else:
            structural = {"duration_s", "short_side", "aspect_ratio"}
            for rr in rows["reject_reasons"]:
                assert not {r.split("<")[0].split(">")[0] for r in rr} & structural, (lab.file, list(rr))
            assert (rows["status"] != "failed").all(), (lab.file, rows["error"].tolist())


def test_broken_files_have_clear_errors(demo_output, labels):
    out, _ = demo_output
    df = pd.read_parquet(out / "samples").set_index("source_uri")
    by_kind = {k: df.loc[u] for k, u in zip(labels["kind"], labels["source_uri"]) if k in
               ("zero_byte", "empty", "random_bytes", "truncated")}
    assert by_kind, "sample set has no broken files"
    for kind, row in by_kind.items():
        msg = str(row["error"]).lower()
        assert any(w in msg for w in ("empty", "not a", "invalid", "no decodable", "truncat", "moov")), (kind, msg)


def test_hard_cut_split_within_two_frames(demo_output, labels):
    out, _ = demo_output
    df = pd.read_parquet(out / "samples")
    cuts = labels[labels["cut_frame"].notna()]
    assert len(cuts) >= 1
    for lab in cuts.itertuples():
        g = df[df["source_uri"] == lab.source_uri].sort_values("start_frame")
        assert len(g) == 2, (lab.file, g[["start_frame", "end_frame"]].values.tolist())
        assert abs(int(g["start_frame"].iloc[1]) - int(lab.cut_frame)) <= 2
        assert int(g["end_frame"].iloc[1]) == int(lab.num_frames)


def test_probe_columns_match_truth(demo_output, labels):
    out, _ = demo_output
    df = pd.read_parquet(out / "samples")
    vids = labels[(labels["media_type"] == "video") & labels["cut_frame"].isna()]
    for lab in vids.itertuples():
        g = df[df["source_uri"] == lab.source_uri]
        assert g["width"].iloc[0] == lab.width and g["height"].iloc[0] == lab.height, lab.file
        assert abs(g["fps"].iloc[0] - lab.fps) < 0.01
        assert g["num_frames"].sum() == lab.num_frames, lab.file
        assert g["codec"].iloc[0] == "h264"
