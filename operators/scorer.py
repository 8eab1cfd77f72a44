"""Expert quality scorer (1–5): a model fitted on people's labels over embedding + technical + motion features.

The fitted model is plain arrays — PCA of the embedding, a standardiser, and a multinomial logistic regression over
the labels 1..5 — stored as safetensors plus a JSON of feature names and metrics, so loading it at run time
unpickles nothing. `quality_score` is the expected label under the predicted distribution (a float in [1, 5]),
which ranks clips more finely than the arg-max class.
"""

from __future__ import annotations

import json
import logging
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar, Mapping, Sequence

import numpy as np
import pyarrow as pa

from curation.operator import Operator, Resources

log = logging.getLogger(__name__)

SCALAR_FEATURES = (
    # technical
    "sharpness", "exposure", "aesthetic_score", "synthetic_score", "text_area_ratio", "watermark_score", "nsfw_score",
    # motion
    "motion_score", "camera_motion", "object_motion", "shake_score",
    # clip geometry
    "duration_s", "fps", "width", "height",
)
LABELS = (1, 2, 3, 4, 5)
FORMAT = "curation-quality-scorer/1"


@dataclass
class ScorerModel:
    """PCA(embedding) ⊕ scalar features → standardise → softmax(W·x + b) over the label classes."""

    feature_names: list[str]
    embedding_dim: int
    pca_mean: np.ndarray  # (D,)
    pca_components: np.ndarray  # (P, D)
    impute: np.ndarray  # (S,) value used for a null scalar feature (training mean)
    scaler_mean: np.ndarray  # (P+S,)
    scaler_scale: np.ndarray  # (P+S,)
    coef: np.ndarray  # (C, P+S)
    intercept: np.ndarray  # (C,)
    classes: np.ndarray  # (C,) int labels
    meta: dict[str, Any] = field(default_factory=dict)

    def features(self, rows: Sequence[Mapping[str, Any]]) -> np.ndarray:
        """Feature matrix (N, P+S) from rows holding `embedding` and the scalar features (nulls imputed)."""
        emb = np.stack([_embedding(r, self.embedding_dim) for r in rows])
        z = (emb - self.pca_mean) @ self.pca_components.T
        s = np.array([[_scalar(r.get(f)) for f in self.feature_names] for r in rows], dtype=np.float64)
        s = s.reshape(len(rows), len(self.feature_names))
        s = np.where(np.isnan(s), self.impute[None, :], s)
        return np.concatenate([z, s], axis=1)

    def predict_proba(self, x: np.ndarray) -> np.ndarray:
        """Class probabilities (N, C) — the same softmax as scikit-learn's multinomial LogisticRegression."""
        xs = (x - self.scaler_mean) / self.scaler_scale
        logits = xs @ self.coef.T + self.intercept
        logits -= logits.max(axis=1, keepdims=True)
        p = np.exp(logits)
        return p / p.sum(axis=1, keepdims=True)

    def predict_score(self, x: np.ndarray) -> np.ndarray:
        """Expected label under the predicted distribution, in [min label, max label]."""
        return self.predict_proba(x) @ self.classes.astype(np.float64)

    def predict_class(self, x: np.ndarray) -> np.ndarray:
        """Most likely label."""
        return self.classes[np.argmax(self.predict_proba(x), axis=1)]


def _scalar(v: Any) -> float:
    if v is None:
        return np.nan
    try:
        f = float(v)
    except (TypeError, ValueError):
        return np.nan
    return f if np.isfinite(f) else np.nan


def _embedding(row: Mapping[str, Any], dim: int) -> np.ndarray:
    v = row.get("embedding")
    if v is None:
        raise ValueError("row has no embedding")
    e = np.asarray(v, dtype=np.float64).ravel()
    if e.shape != (dim,):
        raise ValueError(f"embedding has {e.size} dims, the scorer was trained on {dim} "
                         "(was it trained on the other profile's embedding?)")
    return e


def fit_scorer(rows: Sequence[Mapping[str, Any]], labels: Sequence[int], feature_names: Sequence[str] | None = None,
               pca_dim: int = 64, c: float | None = None, seed: int = 0, test_size: float = 0.25
               ) -> tuple[ScorerModel, dict[str, Any]]:
    """Fit the scorer; report held-out accuracy and MAE against trivial baselines, then refit on all labels."""
    from sklearn.model_selection import train_test_split

    y = np.asarray(labels, dtype=np.int64)
    if len(y) != len(rows) or len(y) < 8:
        raise ValueError(f"need ≥ 8 labelled rows with matching features, got {len(rows)} rows / {len(y)} labels")
    if not set(y.tolist()) <= set(LABELS):
        raise ValueError(f"labels must be in {LABELS}, got {sorted(set(y.tolist()))}")
    if feature_names is None:
        # Use the scalar features that the annotated rows actually have: the offline profile has no aesthetic.
        feature_names = [f for f in SCALAR_FEATURES if any(not np.isnan(_scalar(r.get(f))) for r in rows)]
    idx = np.arange(len(y))
    counts = np.bincount(y)
    strat = y if counts[counts > 0].min() >= 2 else None
    tr, te = train_test_split(idx, test_size=test_size, random_state=seed, stratify=strat)
    model = _fit(rows, y, tr, list(feature_names), pca_dim, c, seed)
    x_te = model.features([rows[i] for i in te])
    pred_cls = model.predict_class(x_te)
    pred_score = model.predict_score(x_te)
    majority = int(np.bincount(y[tr]).argmax())
    median = float(np.median(y[tr]))
    metrics = {
        "n_labelled": int(len(y)), "n_train": int(len(tr)), "n_heldout": int(len(te)),
        "label_counts": {int(k): int(v) for k, v in enumerate(counts) if v},
        "heldout_accuracy": float(np.mean(pred_cls == y[te])),
        "heldout_mae": float(np.mean(np.abs(pred_score - y[te]))),
        "baseline_accuracy": float(np.mean(y[te] == majority)),  # always predict the majority label
        "baseline_mae": float(np.mean(np.abs(median - y[te]))),  # always predict the median label
        "baseline": f"majority label {majority} / median label {median}",
        "features": ["embedding_pca"] + list(feature_names),
        "pca_dim": int(model.pca_components.shape[0]),
        "C": model.meta["C"],
    }
    final = _fit(rows, y, idx, list(feature_names), pca_dim, model.meta["C"], seed)
    final.meta.update({"metrics": metrics, "refit_on": "all labelled rows"})
    return final, metrics


def _fit(rows, y, idx, feature_names, pca_dim, c, seed) -> ScorerModel:
    from sklearn.decomposition import PCA
    from sklearn.linear_model import LogisticRegression

    sub = [rows[i] for i in idx]
    dim = len(np.asarray(sub[0]["embedding"]).ravel())
    emb = np.stack([_embedding(r, dim) for r in sub])
    p = int(max(1, min(pca_dim, len(sub) - 1, dim)))
    pca = PCA(n_components=p, random_state=seed).fit(emb)
    s = np.array([[_scalar(r.get(f)) for f in feature_names] for r in sub], dtype=np.float64).reshape(len(sub), -1)
    impute = np.nan_to_num(np.nanmean(np.where(np.isnan(s), np.nan, s), axis=0), nan=0.0) if s.size else np.zeros(0)
    model = ScorerModel(feature_names=feature_names, embedding_dim=dim, pca_mean=pca.mean_,
                        pca_components=pca.components_, impute=impute, scaler_mean=np.zeros(1), scaler_scale=np.ones(1),
                        coef=np.zeros((1, 1)), intercept=np.zeros(1), classes=np.array(LABELS))
    x = model.features(sub)
    mean, scale = x.mean(axis=0), x.std(axis=0)
    scale = np.where(scale > 1e-12, scale, 1.0)  # a constant feature carries no information; keep it harmless
    xs = (x - mean) / scale
    yy = y[idx]
    if c is None:
        c = _choose_c(xs, yy, seed)
    clf = LogisticRegression(C=c, max_iter=5000)
    clf.fit(xs, yy)
    model.scaler_mean, model.scaler_scale = mean, scale
    model.coef, model.intercept, model.classes = clf.coef_, clf.intercept_, clf.classes_.astype(np.int64)
    if len(model.classes) == 2:  # binary LogisticRegression keeps one row; expand to a two-class softmax
        model.coef = np.stack([-clf.coef_[0] / 2, clf.coef_[0] / 2])
        model.intercept = np.array([-clf.intercept_[0] / 2, clf.intercept_[0] / 2])
    model.meta = {"C": float(c)}
    return model


def _choose_c(xs: np.ndarray, y: np.ndarray, seed: int) -> float:
    """Regularisation strength by 3-fold CV on the training split (labels are few, features many)."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.model_selection import StratifiedKFold, cross_val_score

    counts = np.bincount(y)
    if counts[counts > 0].min() < 3:
        return 1.0
    cv = StratifiedKFold(n_splits=3, shuffle=True, random_state=seed)
    scores = {c: cross_val_score(LogisticRegression(C=c, max_iter=5000), xs, y, cv=cv,
                                 scoring="neg_mean_absolute_error").mean() for c in (0.01, 0.1, 1.0, 10.0)}
    return max(scores, key=scores.get)


def save_scorer(path: str | os.PathLike, model: ScorerModel) -> Path:
    """Write `<path>` (safetensors arrays) and `<path minus suffix>.json` (feature names, classes, metrics)."""
    from safetensors.numpy import save_file

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tensors = {k: np.ascontiguousarray(getattr(model, k), dtype=np.float64) for k in
               ("pca_mean", "pca_components", "impute", "scaler_mean", "scaler_scale", "coef", "intercept")}
    tensors["classes"] = np.ascontiguousarray(model.classes, dtype=np.int64)
    meta = {"format": FORMAT, "feature_names": model.feature_names, "embedding_dim": model.embedding_dim,
            **model.meta}
    tmp = path.with_name(f".{path.name}.tmp")
    save_file(tensors, str(tmp), metadata={"format": FORMAT})
    json_path = path.with_suffix(".json")
    tmp_json = json_path.with_name(f".{json_path.name}.tmp")
    tmp_json.write_text(json.dumps(meta, indent=1, default=float))
    os.replace(tmp_json, json_path)
    os.replace(tmp, path)
    return path


def load_scorer(path: str | os.PathLike) -> ScorerModel:
    """Read a scorer written by `save_scorer` (safetensors + JSON: nothing is unpickled)."""
    from safetensors.numpy import load_file

    path = Path(path)
    meta = json.loads(path.with_suffix(".json").read_text())
    if meta.get("format") != FORMAT:
        raise ValueError(f"{path}: not a {FORMAT} file")
    t = load_file(str(path))
    extra = {k: v for k, v in meta.items() if k not in ("format", "feature_names", "embedding_dim")}
    return ScorerModel(feature_names=list(meta["feature_names"]), embedding_dim=int(meta["embedding_dim"]),
                       pca_mean=t["pca_mean"], pca_components=t["pca_components"], impute=t["impute"],
                       scaler_mean=t["scaler_mean"], scaler_scale=t["scaler_scale"], coef=t["coef"],
                       intercept=t["intercept"], classes=t["classes"], meta=extra)


_WARNED: set[str] = set()


@dataclass(frozen=True)
class ScorerParams:
    """The quality scorer operator's parameters."""

    model_path: str | None = None  # default: the registry's quality-scorer file in the model dir
    required: bool = False  # true: a missing scorer fails the run up front like any other model
    model_dir: str | None = None


class QualityScorer(Operator):
    """`quality_score` (1–5) from a scorer trained by `curation scorer train`; null when no scorer is available."""

    name: ClassVar[str] = "quality_scorer"
    needs: ClassVar[tuple[str, ...]] = ("embedding",)
    produces: ClassVar[dict[str, pa.DataType]] = {"quality_score": pa.float64()}
    default_resources: ClassVar[Resources] = Resources(num_cpus=0.25)
    default_batch_size: ClassVar[int] = 256
    stateful: ClassVar[bool] = True  # the (small) model is loaded once per actor
    Params: ClassVar[type] = ScorerParams

    def validate(self) -> None:
        """Find the scorer file; without one (and not `required`) scores stay null and `note` says why."""
        from curation import models

        c = self.config
        self.note = None
        if c["model_path"]:
            self.path = Path(c["model_path"]).expanduser()
            if not self.path.is_file():
                if c["required"]:
                    raise FileNotFoundError(f"operator '{self.name}': model_path {self.path} not found")
                self.note = f"quality scorer {self.path} not found: quality_score stays null"
                self.path = None
            self.models = ()
            return
        if c["required"]:
            self.models = ("quality-scorer",)
            self.path = None  # resolved in setup, after the run's up-front check
            return
        self.models = ()
        self.optional_models = ("quality-scorer",)
        missing = models.check(["quality-scorer"], c["model_dir"])
        if missing:
            self.path = None
            self.note = (f"no quality scorer at {missing[0].expected}: quality_score stays null "
                         f"(get one: {missing[0].how_to_get})")
        else:
            self.path = models.resolve("quality-scorer", c["model_dir"]) / "quality_scorer.safetensors"
        if self.note and self.note not in _WARNED:
            _WARNED.add(self.note)  # the config is validated several times per process: say it once
            log.warning("operator %s: %s", self.name, self.note)

    def setup(self) -> None:
        """Load the scorer arrays (once per actor)."""
        from curation import models

        if self.path is None and self.config["required"]:
            self.path = models.resolve("quality-scorer", self.config["model_dir"]) / "quality_scorer.safetensors"
        self.model = load_scorer(self.path) if self.path is not None else None

    def score_rows(self, rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
        """Expected 1-5 label per row that has an embedding; null otherwise."""
        out: list[dict[str, Any]] = [{} for _ in rows]
        have = [i for i, r in enumerate(rows) if r.get("embedding") is not None]
        if self.model is None or not have:
            return out  # not computed → null, never a made-up default
        scores = self.model.predict_score(self.model.features([rows[i] for i in have]))
        for i, s in zip(have, scores):
            out[i] = {"quality_score": float(s)}
        return out
