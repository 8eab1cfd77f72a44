"""Expert quality scorer: learns labels derived from known features and beats the trivial baselines; safe
save/load; the operator fills `quality_score` or leaves it null; `scorer sample` and `scorer train` end to end."""

from __future__ import annotations

import argparse
import json

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from operators.scorer import QualityScorer, fit_scorer, load_scorer, save_scorer


def _rows(n: int, seed: int = 0, dim: int = 24):
    """Rows whose label is a known function of sharpness, motion and one embedding direction, plus noise."""
    rng = np.random.default_rng(seed)
    emb = rng.normal(size=(n, dim))
    emb /= np.linalg.norm(emb, axis=1, keepdims=True)
    sharp = rng.uniform(0, 1, n)
    motion = rng.uniform(0, 1, n)
    latent = 2.0 * sharp + 1.5 * motion + 4.0 * emb[:, 0] + 0.15 * rng.normal(size=n)
    labels = np.digitize(latent, np.quantile(latent, [0.2, 0.4, 0.6, 0.8])) + 1
    rows = [{"embedding": emb[i].astype(np.float32), "sharpness": float(sharp[i]), "motion_score": float(motion[i]),
             "exposure": None if i % 7 == 0 else 0.5, "aesthetic_score": None} for i in range(n)]
    return rows, labels


def test_scorer_learns_known_labels_and_beats_baseline(tmp_path):
    rows, labels = _rows(400)
    model, m = fit_scorer(rows, labels, seed=0)
    assert m["heldout_accuracy"] > m["baseline_accuracy"] + 0.3
    assert m["heldout_mae"] < 0.5 * m["baseline_mae"]
    assert "aesthetic_score" not in model.feature_names  # all-null features are left out
    path = save_scorer(tmp_path / "quality_scorer.safetensors", model)
    back = load_scorer(path)
    x = back.features(rows[:20])
    np.testing.assert_allclose(back.predict_score(x), model.predict_score(model.features(rows[:20])))
    scores = back.predict_score(x)
    assert ((scores >= 1) & (scores <= 5)).all()
    assert json.loads((tmp_path / "quality_scorer.json").read_text())["metrics"]["n_labelled"] == 400


def test_operator_fills_or_leaves_null(tmp_path):
    rows, labels = _rows(120)
    model, _ = fit_scorer(rows, labels, pca_dim=4)
    path = save_scorer(tmp_path / "m" / "quality_scorer.safetensors", model)
    batch = {"sample_id": np.array(["a", "b", "c"], dtype=object),
             "status": np.array(["kept", "kept", "failed"], dtype=object),
             "embedding": np.array([rows[0]["embedding"], None, rows[2]["embedding"]], dtype=object),
             "sharpness": np.array([0.5, 0.5, 0.5]), "motion_score": np.array([0.1, np.nan, 0.2])}
    out = QualityScorer(model_path=str(path))(batch)
    assert 1 <= out["quality_score"][0] <= 5 and out["quality_score"][1] is None and out["quality_score"][2] is None
    # no scorer configured and none in the model dir: null scores and a note saying so
    op = QualityScorer(model_dir=str(tmp_path / "empty"))
    assert op.models == () and "quality_score stays null" in op.note
    assert list(op(batch)["quality_score"]) == [None, None, None]
    # the registry location is found without a path
    op = QualityScorer(model_dir=str(tmp_path / "reg"))
    assert op.note is not None
    (tmp_path / "reg" / "quality-scorer").mkdir(parents=True)
    save_scorer(tmp_path / "reg" / "quality-scorer" / "quality_scorer.safetensors", model)
    op = QualityScorer(model_dir=str(tmp_path / "reg"))
    assert op.note is None and op(batch)["quality_score"][0] == pytest.approx(out["quality_score"][0])
    op = QualityScorer(model_path=str(path))
    op.setup()
    with pytest.raises(ValueError, match="trained on"):  # an embedding of the other profile is an error
        op.score_rows([{"embedding": np.zeros(5)}])


def test_scorer_sample_and_train_cli(tmp_path, capsys):
    from PIL import Image

    from curation.cli.scorer import add_scorer_parser
    from curation.schema import manifest_schema

    rows, labels = _rows(60, seed=1)
    img = tmp_path / "img.png"
    Image.fromarray(np.full((64, 96, 3), 128, np.uint8)).save(img)
    schema = manifest_schema()
    recs = []
    for i, r in enumerate(rows):
        rec = {f.name: None for f in schema}
        rec.update(sample_id=f"s{i:03d}", source_uri=str(img), media_type="image", status="kept", reject_reasons=[],
                   embedding=r["embedding"].tolist(), sharpness=r["sharpness"], motion_score=r["motion_score"],
                   cluster_id=i % 3)
        recs.append(rec)
    (tmp_path / "out" / "samples").mkdir(parents=True)
    pq.write_table(pa.Table.from_pylist(recs, schema=schema), tmp_path / "out" / "samples" / "part-00000.parquet")
    (tmp_path / "out" / "run.json").write_text("{}")  # a pipeline output: run.json next to samples/
    parser = argparse.ArgumentParser()
    add_scorer_parser(parser.add_subparsers())
    args = parser.parse_args(["scorer", "sample", "--manifest", str(tmp_path / "out"), "--n", "30"])
    assert args.func(args) == 0
    ann_path = tmp_path / "out" / "annotation" / "annotations.parquet"
    ann = pd.read_parquet(ann_path)
    assert len(ann) == 30 and ann["score"].isna().all()
    assert ann["cluster_id"].value_counts().to_dict() == {0: 10, 1: 10, 2: 10}
    assert all(p and p.endswith(".jpg") for p in ann["thumbnail"])
    # a person fills the scores
    by_id = {f"s{i:03d}": int(labels[i]) for i in range(len(labels))}
    ann["score"] = ann["sample_id"].map(by_id).astype("Int64")
    ann.to_parquet(ann_path)
    capsys.readouterr()
    out = tmp_path / "scorer.safetensors"
    args = parser.parse_args(["scorer", "train", "--annotations", str(ann_path), "--out", str(out),
                              "--pca-dim", "4"])
    assert args.func(args) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["n_labelled"] == 30 and {"heldout_accuracy", "baseline_mae"} <= set(report)
    assert load_scorer(out).feature_names == ["sharpness", "motion_score"]
