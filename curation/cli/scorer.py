"""`curation scorer sample|train|proxy-labels|demo`: the expert quality scorer's annotation → training loop."""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from pathlib import Path
from typing import Any

import pandas as pd

log = logging.getLogger(__name__)


# -- curation scorer sample / train / proxy-labels ---------------------------------------------------------------


def add_scorer_parser(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    """`curation scorer sample|train|proxy-labels`."""
    p = subparsers.add_parser("scorer", help="expert quality scorer: annotation set, training")
    sub = p.add_subparsers(dest="scorer_cmd", required=True)
    s = sub.add_parser("sample", help="draw a cluster-balanced annotation set with thumbnails")
    s.add_argument("--manifest", required=True, type=Path, help="a run's output folder (holding samples/)")
    s.add_argument("--n", required=True, type=int)
    s.add_argument("--out", type=Path, default=None, help="default: <manifest>/annotation/annotations.parquet")
    s.add_argument("--seed", type=int, default=0)
    s.add_argument("--include-rejected", action="store_true", help="also sample rejected rows (default: kept only)")
    s.set_defaults(func=run_scorer)
    t = sub.add_parser("train", help="fit the scorer on labelled annotations")
    t.add_argument("--annotations", required=True, type=Path)
    t.add_argument("--manifest", type=Path, default=None, help="default: the annotation file's `manifest` column")
    t.add_argument("--out", type=Path, default=None, help="default: the registry path in the model dir")
    t.add_argument("--model-dir", default=None)
    t.add_argument("--pca-dim", type=int, default=64)
    t.add_argument("--seed", type=int, default=0)
    t.set_defaults(func=run_scorer)
    x = sub.add_parser("proxy-labels", help="DEMO ONLY: derive 1-5 labels from the sample generator's labels.parquet")
    x.add_argument("--manifest", required=True, type=Path)
    x.add_argument("--labels", required=True, type=Path, help="labels.parquet written by `curation samples make`")
    x.add_argument("--out", type=Path, default=None)
    x.set_defaults(func=run_scorer)
    d = sub.add_parser("demo", help="DEMO ONLY: build a proxy-label scorer from a second sample set (another seed)")
    d.add_argument("--model-dir", required=True, help="where the scorer goes (point CURATION_MODEL_DIR here)")
    d.add_argument("--work", required=True, type=Path, help="scratch folder: sample set, run, annotations")
    d.add_argument("--config", type=Path, default=Path(__file__).resolve().parents[2] / "pipelines" / "configs"
                   / "demo.yaml")
    d.add_argument("--seed", type=int, default=1, help="sample-set seed (use another than the demo's 0)")
    d.set_defaults(func=run_scorer)
    return p


def run_scorer(args: argparse.Namespace) -> int:
    """Dispatch `curation scorer ...`."""
    if args.scorer_cmd == "sample":
        out = sample_annotations(args.manifest, args.n, args.out, args.seed, args.include_rejected)
        print(f"wrote {out}: label it on a local page with `curation label {args.manifest}` (or fill its `score` "
              f"column with 1-5 by hand), then `curation scorer train --annotations` on the labels")
        return 0
    if args.scorer_cmd == "train":
        path, metrics = train_scorer(args.annotations, args.manifest, args.out, args.model_dir, args.pca_dim,
                                     args.seed)
        print(json.dumps({"saved": str(path), **metrics}, indent=1, default=str))
        return 0
    if args.scorer_cmd == "proxy-labels":
        out = proxy_annotations(args.manifest, args.labels, args.out)
        print(f"wrote {out} (proxy labels from the generator's ground truth, not human judgement)")
        return 0
    if args.scorer_cmd == "demo":
        path, metrics = build_demo_scorer(args.model_dir, args.work, args.config, args.seed)
        print(json.dumps({"saved": str(path), "labels": "proxy (sample generator ground truth)", **metrics},
                         indent=1, default=str))
        return 0
    raise ValueError(args.scorer_cmd)


class AnnotationError(ValueError):
    """An annotation file that cannot train a scorer; the message says what is missing."""


def _read_samples(manifest: Path, columns: list[str] | None = None, verb: str = "this command") -> pd.DataFrame:
    from curation.manifest import SAMPLES, OutputError, read_manifest, require_output, sample_parts

    require_output(manifest, verb)
    if not sample_parts(manifest):
        raise OutputError(f"{manifest}/{SAMPLES}/ holds no part files: the run wrote no rows")
    return read_manifest(Path(manifest) / SAMPLES, columns, only_existing=True).to_pandas()


def sample_annotations(manifest: Path, n: int, out: Path | None = None, seed: int = 0,
                       include_rejected: bool = False) -> Path:
    """Write a cluster-balanced annotation Parquet (`sample_id`, thumbnail path, empty `score`) plus thumbnails."""
    from curation.clustering import balanced_sample

    if n < 1:
        raise AnnotationError(f"--n must be at least 1, got {n}")
    df = _read_samples(manifest, ["sample_id", "source_uri", "media_type", "start_frame", "end_frame", "fps",
                                  "cluster_id", "status", "embedding"], "scorer sample")
    statuses = ["kept", "rejected"] if include_rejected else ["kept"]
    ok = df["status"].isin(statuses) & df["embedding"].notna()
    df = df[ok]
    if not len(df):
        raise AnnotationError(f"{manifest}: no {' or '.join(statuses)} row with an embedding to sample from "
                              "(the scorer learns from embeddings: the config needs `embedding` or `descriptor`)")
    if len(df) < n:
        log.warning("asked for %d rows but %s has only %d %s rows with an embedding: the annotation set has %d",
                    n, manifest, len(df), "/".join(statuses), len(df))
    if "cluster_id" in df and df["cluster_id"].notna().any():
        picked = balanced_sample(df, n, by="cluster_id", seed=seed)
    else:
        log.warning("no cluster_id in %s: sampling uniformly", manifest)
        picked = df.sample(n=min(n, len(df)), random_state=seed)
    out = Path(out or Path(manifest) / "annotation" / "annotations.parquet")
    thumbs = out.parent / "thumbs"
    thumbs.mkdir(parents=True, exist_ok=True)
    paths = []
    for r in picked.itertuples(index=False):
        dest = thumbs / f"{r.sample_id}.jpg"
        paths.append(str(dest) if dest.exists() or write_thumbnail(r._asdict(), dest) else None)
    ann = pd.DataFrame({
        "sample_id": picked["sample_id"].to_numpy(),
        "source_uri": picked["source_uri"].to_numpy(),
        "start_frame": picked["start_frame"].to_numpy() if "start_frame" in picked else None,
        "end_frame": picked["end_frame"].to_numpy() if "end_frame" in picked else None,
        "cluster_id": picked["cluster_id"].to_numpy() if "cluster_id" in picked else None,
        "thumbnail": paths,
        "score": pd.array([None] * len(picked), dtype="Int64"),  # people fill 1-5
        "manifest": str(Path(manifest).resolve()),
    })
    tmp = out.with_name(f".{out.name}.tmp")
    ann.to_parquet(tmp, index=False)
    os.replace(tmp, out)
    return out


def write_thumbnail(row: dict[str, Any], dest: Path, short_side: int = 256, timeout_s: float = 60.0) -> bool:
    """Save the middle frame of a clip (or the image) as a JPEG; False when it cannot be decoded. Decoded by the
    pipeline's decoder (`curation.ingest.row_clip`): same frame numbering, rotation and isolation as the scores."""
    from PIL import Image

    from curation.config import LimitsConfig
    from curation.ingest import row_clip

    try:
        middle = 0
        if row.get("media_type") != "image":
            s, e = int(row["start_frame"]), int(row["end_frame"])
            middle = (s + e) // 2
        frame = row_clip(row, [middle], short_side, LimitsConfig().max_pixels, timeout_s)[0]
        Image.fromarray(frame).save(dest, quality=90)
        return True
    except Exception as exc:  # noqa: BLE001 - a missing thumbnail must not stop the annotation set
        log.warning("thumbnail for %s failed: %s", row.get("sample_id"), exc)
        return False


def train_scorer(annotations: Path, manifest: Path | None = None, out: Path | None = None,
                 model_dir: str | None = None, pca_dim: int = 64, seed: int = 0) -> tuple[Path, dict[str, Any]]:
    """Join labels with the manifest's features, fit, report held-out metrics vs baselines, save."""
    from curation import models
    from operators.scorer import SCALAR_FEATURES, fit_scorer, save_scorer

    if not Path(annotations).is_file():
        raise AnnotationError(f"{annotations}: no such file (write one with `curation scorer sample`)")
    ann = pd.read_parquet(annotations)
    missing = [c for c in ("sample_id", "score") if c not in ann.columns]
    if missing:
        raise AnnotationError(f"{annotations}: no {' and no '.join(f'`{c}`' for c in missing)} column "
                              f"(columns: {', '.join(map(str, ann.columns))})")
    total = len(ann)
    if manifest is None:
        if "manifest" not in ann or ann["manifest"].isna().all():
            raise AnnotationError(f"{annotations}: no `manifest` column saying which run the rows come from: pass "
                                  "--manifest OUT")
        manifest = Path(ann["manifest"].dropna().iloc[0])
    ann = ann[ann["score"].notna()]
    people: dict[str, Any] = {}
    if "annotator" in ann.columns and len(ann):  # long form from `curation label`: one row per annotator and row
        from curation.label.agreement import combine, summary

        people = summary(ann)
        ann, people["combine"] = combine(ann)
        log.info("annotators %s; %s", people["annotators"], people["combine"])
    if not len(ann):
        raise AnnotationError(f"{annotations}: none of its {total} rows has a `score` yet: fill the `score` column "
                              "with 1-5 for the rows you judged, then train")
    scores = pd.to_numeric(ann["score"], errors="coerce")
    bad = ann["score"][scores.isna() | (scores != scores.round()) | (scores < 1) | (scores > 5)]
    if len(bad):
        raise AnnotationError(f"{annotations}: `score` must be a whole number 1-5; {len(bad)} row(s) hold "
                              f"{sorted(map(str, bad.unique()))[:5]}")
    feats = _read_samples(manifest, ["sample_id", "embedding", *SCALAR_FEATURES], "scorer train")
    df = ann[["sample_id", "score"]].merge(feats, on="sample_id", how="inner")
    df = df[df["embedding"].notna()]
    if not len(df):
        raise AnnotationError(f"none of the {len(ann)} labelled sample_ids of {annotations} is a row with an "
                              f"embedding in {manifest}/samples/: is it the run the annotation set was drawn from?")
    if len(df) < 8:
        raise AnnotationError(f"{annotations}: {len(df)} labelled row(s) with features in {manifest}; the scorer "
                              "needs at least 8 (a few hundred to be useful)")
    rows = df.drop(columns=["score"]).to_dict("records")
    model, metrics = fit_scorer(rows, df["score"].astype(int).to_numpy(), pca_dim=pca_dim, seed=seed)
    if people:
        metrics = {**metrics, "annotators": people["annotators"], "agreement": people["pairs"],
                   "combine": people["combine"]}
        model.meta["metrics"] = metrics
    model.meta["annotations"] = str(Path(annotations).resolve())
    path = Path(out or models.model_dir(model_dir) / "quality-scorer" / "quality_scorer.safetensors")
    save_scorer(path, model)
    return path, metrics


# Proxy 1-5 labels from the sample generator's ground truth, so the offline demo has a scorer to run. They encode
# the generator's intent (good motion, no overlays → high), not a person's judgement; never report them as such.
_TIER_SCORE = {"optimal": 5, "medium": 4, "camera_driven": 3, "static": 3, "shaky": 2, "low_quality": 1}


def proxy_annotations(manifest: Path, labels: Path, out: Path | None = None) -> Path:
    """DEMO ONLY: annotations whose `score` is derived from `labels.parquet` (see `_TIER_SCORE`)."""
    lab = pd.read_parquet(labels)
    df = _read_samples(manifest, ["sample_id", "source_uri", "status", "embedding"], "scorer proxy-labels")
    df = df[df["embedding"].notna() & (df["status"] != "failed")]
    by_name = {str(f): r for f, r in zip(lab["file"], lab.to_dict("records"))}
    scores = []
    for uri in df["source_uri"]:
        rec = next((r for f, r in by_name.items() if str(uri).endswith(f)), None)
        if rec is None or rec.get("media_type") is None:
            scores.append(None)
            continue
        s = _TIER_SCORE.get(rec.get("expected_motion_tier"), 4)
        if rec.get("expected_status") == "rejected":
            s = min(s, 2)
        # (labels.parquet holds NaN, which is truthy, where a clip has no subtitle)
        subtitle = rec.get("subtitle_text")
        if rec.get("has_watermark") is True or (isinstance(subtitle, str) and subtitle.strip()):
            s -= 1
        scores.append(int(min(max(s, 1), 5)))
    ann = pd.DataFrame({"sample_id": df["sample_id"].to_numpy(), "source_uri": df["source_uri"].to_numpy(),
                        "score": pd.array(scores, dtype="Int64"), "manifest": str(Path(manifest).resolve()),
                        "label_source": "proxy:labels.parquet"})
    out = Path(out or Path(manifest) / "annotation" / "proxy_annotations.parquet")
    out.parent.mkdir(parents=True, exist_ok=True)
    ann.to_parquet(out, index=False)
    return out


def build_demo_scorer(model_dir: str | os.PathLike, work: Path, config: Path, seed: int = 1
                      ) -> tuple[Path, dict[str, Any]]:
    """DEMO ONLY: the offline demo's quality scorer, made the way a user makes a real one but with proxy labels.

    1. `curation samples make WORK/samples --seed SEED` (a different seed from the demo's sample set, so the demo
       scores clips the scorer never saw);
    2. run CONFIG over it into WORK/run (its `quality_scorer` finds no model yet and leaves `quality_score` null);
    3. proxy labels from the generator's ground truth (`proxy_annotations`) in place of people's scores;
    4. `curation scorer train` into MODEL_DIR/quality-scorer/.
    Skips steps whose outputs exist. The labels encode the generator's intent, not a person's judgement: the scorer
    shows the plumbing and learns the generator's notion of quality; it is no model of human preference.
    """
    import subprocess

    from curation.testing.samples import make_samples

    work = Path(work)
    samples, run = work / "samples", work / "run"
    if not (samples / "labels.parquet").exists():
        make_samples(samples, seed=seed)
    if not (run / "run.json").exists():
        env = {**os.environ, "CURATION_MODEL_DIR": str(Path(model_dir).resolve())}
        cmd = [sys.executable, "-m", "curation.cli", "run", "--config", str(config), "--input", str(samples),
               "--output", str(run)]
        proc = subprocess.run(cmd, env=env)
        if proc.returncode != 0:
            raise RuntimeError(f"demo scorer: the feature run failed ({' '.join(cmd)}: exit {proc.returncode})")
    ann = proxy_annotations(run, samples / "labels.parquet", work / "proxy_annotations.parquet")
    return train_scorer(ann, run, None, str(model_dir))


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    """Add `scorer` to the `curation` command."""
    add_scorer_parser(subparsers)
