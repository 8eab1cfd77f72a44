"""Agreement between annotators, and the rule that turns several people's labels of a row into one training label.

Agreement is reported per pair of annotators over the rows both labelled: exact agreement (same score), agreement
within one point, and Cohen's kappa with quadratic weights (`sklearn.metrics.cohen_kappa_score`), the usual choice
for an ordinal 1-5 scale: 1 is perfect agreement, 0 what chance gives with each annotator's own score frequencies.

Combining (`combine`): a row labelled by one person keeps that label. A row labelled by several is
- excluded from training when its labels spread over more than one point (max - min > 1): people do not agree on
  what the clip is, so it teaches the scorer noise;
- otherwise given the mean of the labels, rounded to the nearest whole score with halves going down (3 and 4 give
  3): a quality filter should not promote a clip that one of its judges scored lower.
"""

from __future__ import annotations

import itertools
import math
import warnings
from typing import Any

import numpy as np
import pandas as pd

MAX_SPREAD = 1  # rows whose labels differ by more than this are left out of training
RULE = ("one label per row: a single annotator's label; several: the mean rounded to the nearest score (halves "
        f"down), rows whose labels spread over more than {MAX_SPREAD} point excluded")


def pairwise(labels: pd.DataFrame) -> list[dict[str, Any]]:
    """Per annotator pair with common rows: n, exact agreement, agreement within 1, quadratic-weighted kappa."""
    from sklearn.exceptions import UndefinedMetricWarning
    from sklearn.metrics import cohen_kappa_score

    wide = labels.pivot_table(index="sample_id", columns="annotator", values="score", aggfunc="last")
    out = []
    for a, b in itertools.combinations(sorted(wide.columns), 2):
        both = wide[[a, b]].dropna()
        if not len(both):
            continue
        x, y = both[a].to_numpy(int), both[b].to_numpy(int)
        with warnings.catch_warnings():  # undefined (one score in common): reported as None, not as a warning
            warnings.simplefilter("ignore", UndefinedMetricWarning)
            warnings.simplefilter("ignore", RuntimeWarning)
            k = float(cohen_kappa_score(x, y, labels=[1, 2, 3, 4, 5], weights="quadratic"))
        out.append({"a": a, "b": b, "n": int(len(both)), "exact": float(np.mean(x == y)),
                    "within_1": float(np.mean(np.abs(x - y) <= 1)),
                    "kappa": None if math.isnan(k) else k})
    return out


def summary(labels: pd.DataFrame) -> dict[str, Any]:
    """Per-annotator counts, pairwise agreement, and how many rows have 1, 2, ... annotators."""
    if not len(labels):
        return {"annotators": {}, "pairs": [], "rows_by_annotators": {}, "rows_labelled": 0}
    per_row = labels.groupby("sample_id")["annotator"].nunique()
    return {"annotators": {str(k): int(v) for k, v in labels["annotator"].value_counts().sort_index().items()},
            "pairs": pairwise(labels),
            "rows_by_annotators": {int(k): int(v) for k, v in per_row.value_counts().sort_index().items()},
            "rows_labelled": int(len(per_row))}


def _round_half_down(x: float) -> int:
    return int(math.ceil(x - 0.5))


def combine(labels: pd.DataFrame) -> tuple[pd.DataFrame, dict[str, Any]]:
    """One training label per row from long-form labels (`sample_id`, `annotator`, `score`), by `RULE`; plus
    counts: rows kept, rows excluded for disagreement, rows with several annotators."""
    g = labels.groupby("sample_id")["score"]
    agg = pd.DataFrame({"n": g.count(), "mean": g.mean(), "spread": g.max() - g.min()})
    keep = agg["spread"] <= MAX_SPREAD
    out = pd.DataFrame({"sample_id": agg.index[keep],
                        "score": [_round_half_down(m) for m in agg["mean"][keep]]})
    stats = {"rule": RULE, "rows": int(len(agg)), "rows_multi_annotator": int((agg["n"] > 1).sum()),
             "rows_excluded_disagreement": int((~keep).sum()), "rows_used": int(keep.sum())}
    return out.reset_index(drop=True), stats
