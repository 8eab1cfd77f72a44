"""The one place scores become decisions: config thresholds → `status` and `reject_reasons`.

A rule on a column whose value is null (not computed: the operator was off, or the row failed before it) does not
fire: a missing score is not evidence. Failed rows stay failed. Reasons read like `aesthetic_score<4.5`,
`text_area_ratio>0.05`, `motion_tier=static` (and `duplicate_of`, which clustering adds with `reject_duplicates`).
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from curation.config import Rule


def _fmt(x: float) -> str:
    return str(x)  # as written in the config: 1.0 stays "1.0", 128 stays "128"


def rule_reasons(v: Any, rule: Rule) -> list[str]:
    """The reasons one rule gives for one value (empty: it does not fire). A null value never fires. The one
    evaluation of a rule: `decide:` (here), re-deciding (`curation.resume`) and stage `where:` rules use it."""
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return []
    if rule.reject_if_true:
        # For flag-like columns (duplicate_of, or a boolean): any non-empty value rejects.
        if isinstance(v, (bool, np.bool_)) and not v:
            return []
        if isinstance(v, str) and not v:
            return []
        return [rule.column]
    if rule.exclude:
        return [f"{rule.column}={v}"] if str(v) in rule.exclude else []
    out = []
    if rule.min is not None and float(v) < rule.min:
        out.append(f"{rule.column}<{_fmt(rule.min)}")
    if rule.max is not None and float(v) > rule.max:
        out.append(f"{rule.column}>{_fmt(rule.max)}")
    return out


def reasons_for(row: dict[str, Any], rules: tuple[Rule, ...]) -> list[str]:
    """The reject reasons the rules give for one row (empty: keep)."""
    return [r for rule in rules for r in rule_reasons(row.get(rule.column), rule)]


def rule_passes(values: Any, rule: Rule) -> np.ndarray:
    """Per value of a column (a pandas Series): present and the rule does not fire on it. Stage `where:` rules
    select with this, so unlike `decide:` a null value does not pass."""
    out = np.zeros(len(values), dtype=bool)
    for i, (v, present) in enumerate(zip(values, values.notna().to_numpy())):
        if not present:
            continue
        try:
            out[i] = not rule_reasons(_scalar(v), rule)
        except (TypeError, ValueError):  # a value that is not a number under a min/max rule: not selected
            out[i] = False
    return out


def decide_batch(batch: dict[str, np.ndarray], rules: tuple[Rule, ...]) -> dict[str, np.ndarray]:
    """Set `status` and `reject_reasons` for every row of a batch."""
    n = len(batch["sample_id"])
    cols = [r.column for r in rules if r.column in batch]
    status = list(batch["status"])
    reasons_out = np.empty(n, dtype=object)
    for i in range(n):
        if status[i] == "failed":
            reasons_out[i] = []
            continue
        row = {c: _scalar(batch[c][i]) for c in cols}
        reasons = reasons_for(row, rules)
        reasons_out[i] = reasons
        status[i] = "rejected" if reasons else "kept"
    out = dict(batch)
    out["status"] = np.asarray(status, dtype=object)
    out["reject_reasons"] = reasons_out
    return out


def _scalar(v: Any) -> Any:
    if isinstance(v, np.generic):
        return v.item()
    return v
