"""Stage mixes: selection semantics, weights, caps, config validation, and the demo run's `stages/` as the trainer
reads it."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest

from curation.config import ConfigError, Rule, StageSpec, parse_config
from curation.stages import mix, select, weights, write_stages


def _rows(n_per_cluster=(30, 10, 2), seed=0) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    rows = []
    for c, n in enumerate(n_per_cluster):
        for i in range(n):
            video = i % 3 != 0
            rows.append(dict(sample_id=f"c{c}-{i:03d}", source_uri=f"/d/c{c}_{i}.mp4", status="kept",
                             media_type="video" if video else "image", start_frame=0, end_frame=60, fps=30.0,
                             duration_s=float(rng.uniform(0.5, 8.0)) if video else None,
                             width=int(rng.choice([320, 640, 1280])), height=int(rng.choice([240, 480, 720])),
                             quality_score=float(rng.uniform(1, 5)) if i % 4 else None,
                             motion_tier=("optimal" if i % 2 else "camera_driven") if video else None,
                             cluster_id=c, duplicate_of=f"c{c}-000" if i == 5 else None))
    return pd.DataFrame(rows)


def test_selection_filters_and_null_does_not_pass():
    df = _rows()
    st = StageSpec(name="s", media_types=("video",), min_short_side=480, min_duration_s=2.0,
                   where=(Rule(column="quality_score", min=3.0), Rule(column="motion_tier", exclude=("static",))))
    sel = select(df, st)
    assert len(sel) > 0
    assert (sel["media_type"] == "video").all()
    assert (np.minimum(sel["width"], sel["height"]) >= 480).all()
    assert (sel["duration_s"] >= 2.0).all()
    assert sel["quality_score"].notna().all() and (sel["quality_score"] >= 3.0).all()
    assert sel["duplicate_of"].isna().all()
    # Exactly the rows a direct pandas filter gives.
    want = df[(df.media_type == "video") & (np.minimum(df.width, df.height) >= 480) & (df.duration_s >= 2.0)
              & (df.quality_score >= 3.0) & df.motion_tier.notna() & df.duplicate_of.isna()]
    assert set(sel["sample_id"]) == set(want["sample_id"])
    # Durations bind videos only; duplicates come back on request.
    img = select(df, StageSpec(name="i", media_types=("image",), min_duration_s=5.0, include_duplicates=True))
    assert len(img) == (df.media_type == "image").sum()


def test_weights_balance_clusters_with_a_cap_and_multipliers():
    df = _rows((30, 10, 2))
    st = StageSpec(name="s", include_duplicates=True, max_balance=3.0)
    w = weights(df, st)
    assert np.isclose(w.mean(), 1.0)
    per_cluster = pd.Series(w).groupby(df["cluster_id"].to_numpy()).sum()
    # Uncapped, every cluster would get the same total; the 2-row cluster is held at 3x its rows' base weight.
    assert np.isclose(per_cluster[0], per_cluster[1])
    assert per_cluster[2] < per_cluster[1]
    ratio = w[df.cluster_id.to_numpy() == 2][0] / w[df.cluster_id.to_numpy() == 1][0]
    assert np.isclose(ratio, 3.0 / (14 / 10))  # mean group size 14: factors 14/30, 14/10 and min(14/2, 3)
    st2 = StageSpec(name="s", include_duplicates=True, balance=None,
                    weights={"motion_tier": {"optimal": 2.0, "camera_driven": 0.5}})
    w2 = pd.Series(weights(df, st2), index=df.index)
    opt, cam = w2[df.motion_tier == "optimal"], w2[df.motion_tier == "camera_driven"]
    assert np.allclose(opt / cam.iloc[0], 4.0) and np.isclose(w2.mean(), 1.0)
    assert np.allclose(w2[df.motion_tier.isna()] / cam.iloc[0], 2.0)  # no value: multiplier 1


def test_max_rows_trims_big_clusters_first_and_is_deterministic():
    df = _rows((60, 8, 3))
    st = StageSpec(name="s", include_duplicates=True, max_rows=20, seed=3)
    a, b = mix(df, st), mix(df, st)
    assert len(a) == 20 and a["sample_id"].tolist() == b["sample_id"].tolist()
    counts = a["cluster_id"].value_counts()
    assert counts[2] == 3 and counts[1] == 8 and counts[0] == 9  # small clusters whole, the big one trimmed
    assert (a["stage"] == "s").all() and np.isclose(a["weight"].mean(), 1.0)


@pytest.mark.parametrize("stages, msg", [
    ([{"name": "../escape"}], "folder name"),
    ([{"name": "a"}, {"name": "a"}], "named twice"),
    ([{"name": "a", "colour": 1}], "unknown config key stages.a.colour"),
    ([{"name": "a", "where": {"no_such_column": {"min": 1}}}], "no column 'no_such_column'"),
    ([{"name": "a", "media_types": ["audio"]}], "media_types"),
    ([{"name": "a", "weights": {"motion_tier": {"optimal": "lots"}}}], "expected a number"),
    ([{"name": "a", "min_duration_s": 5, "max_duration_s": 2}], "below min_duration_s"),
    ({"name": "a"}, "expected a list"),
])
def test_bad_stage_configs_fail_at_start_up(stages, msg):
    with pytest.raises(ConfigError, match=msg):
        parse_config({"operators": ["basic", "quality", "motion", "descriptor"], "clustering": {"enabled": True},
                      "stages": stages})


def test_cluster_balance_needs_clustering():
    with pytest.raises(ConfigError, match="clustering.enabled"):
        parse_config({"operators": ["basic"], "stages": [{"name": "a"}]})
    cfg = parse_config({"operators": ["basic"], "stages": [{"name": "a", "balance": None}]})
    assert cfg.stages[0].balance is None


def test_rewrite_replaces_the_whole_mix(tmp_path):
    (tmp_path / "samples").mkdir()
    _rows().to_parquet(tmp_path / "samples" / "part-00000.parquet")
    write_stages(tmp_path, (StageSpec(name="old"),))
    assert (tmp_path / "stages" / "old" / "part-00000.parquet").exists()
    summary = write_stages(tmp_path, (StageSpec(name="new", media_types=("image",)),))
    assert sorted(p.name for p in (tmp_path / "stages").iterdir()) == ["new"]
    assert summary["new"]["images"] == summary["new"]["rows"] > 0
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]


@pytest.mark.slow
def test_demo_writes_stage_mixes_the_trainer_reads(demo_output):
    from trainer.data.clips import ClipDataset, read_stage_rows

    out, proc = demo_output
    run = json.loads((out / "run.json").read_text())
    names = [s["name"] for s in run["config"]["stages"]]
    assert names == sorted(names) == sorted(p.name for p in (out / "stages").iterdir())
    samples = pd.read_parquet(out / "samples")
    kept = samples[(samples["status"] == "kept") & samples["duplicate_of"].isna()]
    rows = read_stage_rows(str(out / "stages"))
    for name in names:
        st = rows[rows["stage"] == name]
        assert len(st) == run["stages"][name]["rows"] > 0, name
        assert set(st["sample_id"]) <= set(kept["sample_id"]), name
        assert np.isclose(st["weight"].mean(), 1.0) and (st["weight"] > 0).all()
        assert f"stage {name}: {len(st)} rows" in proc.stdout
    assert (rows.loc[rows["stage"] == "s1_image_256", "media_type"] == "image").all()
    hq = rows[rows["stage"] == "s3_high_quality"]
    assert (hq["quality_score"] >= 3.0).all() and not (hq["motion_tier"] == "camera_driven").any()
    assert "embedding" not in rows.columns
    # The trainer decodes stage rows: one video clip and one image through its dataset.
    for media, frames in (("video", 5), ("image", 1)):
        sub = rows[(rows["stage"] == "s2_joint_256") & (rows["media_type"] == media)]
        x = ClipDataset(sub, frames=frames, height=64, width=64, seed=0)[0]
        assert tuple(x.shape) == (3, frames, 64, 64) and float(x.abs().max()) <= 1.0
