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


def _norm(text: str) -> str:
    # PP-OCR sometimes drops the spaces between English words; compare characters, not spacing.
    return "".join(str(text).split()).lower()


def test_demo_motion_tiers_match_labels(demo_output, labels):
    out, _ = demo_output
    df = pd.read_parquet(out / "samples")
    hits = total = 0
    wrong = []
    for lab in labels[labels["expected_motion_tier"].notna()].itertuples():
        for tier in df.loc[df["source_uri"] == lab.source_uri, "motion_tier"]:
            total += 1
            hits += tier == lab.expected_motion_tier
            if tier != lab.expected_motion_tier:
                wrong.append((lab.file, lab.expected_motion_tier, tier))
    assert total >= 20
    assert hits / total >= 0.9, wrong


def test_demo_ocr_reads_subtitles(demo_output, labels):
    out, _ = demo_output
    df = pd.read_parquet(out / "samples")
    subs = labels[labels["subtitle_text"].notna()]
    assert set(subs["subtitle_lang"]) == {"en", "zh"}
    for lab in subs.itertuples():
        read = _norm(" ".join(df.loc[df["source_uri"] == lab.source_uri, "ocr_text"].fillna("")))
        truth = _norm(lab.subtitle_text)
        recall = sum(1 for ch in truth if ch in read) / len(truth)
        assert recall >= 0.9, (lab.file, lab.subtitle_text, read)
        assert (df.loc[df["source_uri"] == lab.source_uri, "text_area_ratio"] > 0).all()


def test_demo_watermark_flags(demo_output, labels):
    out, _ = demo_output
    df = pd.read_parquet(out / "samples").merge(labels[["source_uri", "has_watermark"]], on="source_uri")
    vids = df[(df["media_type"] == "video") & df["watermark_score"].notna()]
    assert vids["has_watermark"].sum() >= 3
    assert (vids.loc[vids["has_watermark"], "watermark_score"] > 0.5).all()
    assert (vids.loc[~vids["has_watermark"].astype(bool), "watermark_score"] <= 0.5).all()
    assert all("watermark_score>0.5" in list(r) for r in vids.loc[vids["has_watermark"], "reject_reasons"])


def test_demo_fills_embedding_clusters_and_duplicates(demo_output):
    out, _ = demo_output
    df = pd.read_parquet(out / "samples")
    ok = df[df["status"] != "failed"]
    assert ok["embedding"].notna().all() and ok["cluster_id"].notna().all()
    assert df.loc[df["status"] == "failed", "cluster_id"].isna().all()
    assert (out / "centroids.npy").exists()
    # The sample set re-uses a handful of photos across many clips: near-duplicates must be found, and each
    # duplicate must point at a row that exists.
    dups = ok[ok["duplicate_of"].notna()]
    assert len(dups) > 0 and set(dups["duplicate_of"]) <= set(df["sample_id"])
    run = json.loads((out / "run.json").read_text())
    assert run["clustering"]["k"] <= len(ok)


def test_demo_fills_quality_score_from_the_demo_scorer(demo_output, sample_dir):
    """`quality_score` comes from the scorer that `make demo` trains on another seed's sample set (proxy labels from
    the generator's ground truth); on the demo's own clips, unseen in training, it must rank like those labels."""
    from curation.cli.scorer import proxy_annotations

    out, _ = demo_output
    df = pd.read_parquet(out / "samples")
    ok = df[df["status"] != "failed"]
    assert ok["quality_score"].notna().all()
    assert ok["quality_score"].between(1.0, 5.0).all()
    assert df.loc[df["status"] == "failed", "quality_score"].isna().all()
    truth = pd.read_parquet(proxy_annotations(out, sample_dir / "labels.parquet", out / "proxy_check.parquet"))
    m = truth.merge(ok[["sample_id", "quality_score"]], on="sample_id").dropna()
    assert len(m) >= 25
    rho = m["score"].astype(float).corr(m["quality_score"], method="spearman")
    assert rho >= 0.4, rho  # 0.63 measured on seed 0 (train: seed 1, 31 rows)
    # Higher proxy label, higher mean predicted score, from the worst group to the best ones.
    means = m.groupby("score")["quality_score"].mean()
    assert means.loc[means.index >= 4].min() > means.loc[means.index <= 2].max(), means.to_dict()

