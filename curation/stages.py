"""Data mixes per training stage: `<output>/stages/<stage>/part-*.parquet`, what the bundled trainer reads in order.

The Wan paper trains in a curriculum: low-resolution images first, then images and video together at rising
resolutions, then a high-quality set. Each entry of the config's `stages:` list selects, from the **kept** rows of
`samples/` (after clustering and near-duplicate marking), the rows one stage trains on, and gives each a sampling
`weight`:

1. selection: `media_types`, `min_short_side` (min of width and height), `min_duration_s` / `max_duration_s` (videos),
   and `where` rules written like `decide` rules (`min`, `max`, `exclude`, `reject_if_true`) with one difference: a
   null value does **not** pass, since a stage that asks for `quality_score >= 3.5` wants clips known to reach it.
   Rows marked `duplicate_of` another are left out unless `include_duplicates`.
2. `max_rows`: above it, a cluster-balanced sample (`clustering.balanced_sample` over the `balance` column), so a cap
   trims the big clusters, not the rare ones.
3. weights: the product of the `weights` multipliers (column -> value -> factor, e.g. favour `motion_tier: optimal`)
   and, with `balance` (default `cluster_id`), the balancing factor mean-group-size / group-size clipped to
   [1/`max_balance`, `max_balance`], so that in expectation every cluster is drawn about equally often without letting
   a three-row cluster dominate. Weights are scaled to mean 1 within the stage.

Stage files hold every manifest column except `embedding` (large, and the trainer does not need it) plus `stage` and
`weight`. All stages are rebuilt from `samples/` at the end of every run (a re-run that adds sources re-mixes
everything): written into a temporary folder, then swapped in, so `stages/` is always one complete mix (on an object
store: new objects written in place, then the old tree's leftovers deleted). The selection
runs on the driver with pandas over the scalar columns only (about 1 GB per 10 M rows).
"""

from __future__ import annotations

import logging
import os
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa

from curation import outfs
from curation.config import StageSpec
from curation.decide import rule_passes
from curation.manifest import STAGES, write_table_atomic

log = logging.getLogger(__name__)

DROPPED_COLUMNS = ("embedding",)


def select(df: pd.DataFrame, st: StageSpec) -> pd.DataFrame:
    """The rows of one stage (before `max_rows` and weights), from a frame of kept rows."""
    ok = np.array(df["media_type"].isin(st.media_types), dtype=bool)  # a writable copy
    short = np.minimum(df["width"].to_numpy(dtype=float), df["height"].to_numpy(dtype=float))
    with np.errstate(invalid="ignore"):
        ok &= short >= st.min_short_side  # NaN (unprobed size) fails
    video = (df["media_type"] == "video").to_numpy()
    dur = df["duration_s"].to_numpy(dtype=float)
    with np.errstate(invalid="ignore"):
        if st.min_duration_s > 0:
            ok &= ~video | (dur >= st.min_duration_s)
        if st.max_duration_s is not None:
            ok &= ~video | (dur <= st.max_duration_s)
    for rule in st.where:
        ok &= rule_passes(df[rule.column], rule)
    if not st.include_duplicates and "duplicate_of" in df:
        ok &= df["duplicate_of"].isna().to_numpy()
    return df[ok]


def weights(sel: pd.DataFrame, st: StageSpec) -> np.ndarray:
    """Sampling weight per selected row (mean 1)."""
    w = np.ones(len(sel))
    if not len(sel):
        return w
    for col, mapping in st.weights.items():
        w *= sel[col].astype(str).map(mapping).fillna(1.0).to_numpy(dtype=float)
    if st.balance:
        groups = sel[st.balance]
        sizes = groups.map(groups.value_counts())
        mean = float(groups.value_counts().mean()) if groups.notna().any() else 1.0
        factor = (mean / sizes.to_numpy(dtype=float))
        factor = np.where(np.isnan(factor), 1.0, factor)  # rows without a group: neutral
        w *= np.clip(factor, 1.0 / st.max_balance, st.max_balance)
    total = w.sum()
    return w * (len(w) / total) if total > 0 else np.ones(len(sel))


def mix(df: pd.DataFrame, st: StageSpec) -> pd.DataFrame:
    """Selected rows of one stage with `stage` and `weight` columns, in a deterministic order."""
    from curation.clustering import balanced_sample

    sel = select(df, st)
    if st.max_rows is not None and len(sel) > st.max_rows:
        if st.balance:
            sel = balanced_sample(sel, st.max_rows, by=st.balance, seed=st.seed)
        else:
            sel = sel.sample(n=st.max_rows, random_state=st.seed)
    sel = sel.sort_values("sample_id").copy()
    sel["weight"] = weights(sel, st)
    sel["stage"] = st.name
    return sel.reset_index(drop=True)


def _kept_rows(output: str) -> tuple[pd.DataFrame, pa.Schema]:
    import pyarrow.dataset as pads

    from curation.manifest import SAMPLES, read_manifest

    t = read_manifest(outfs.join(output, SAMPLES), exclude=DROPPED_COLUMNS, filter=pads.field("status") == "kept")
    if not t.num_columns:
        return pd.DataFrame(), pa.schema([])
    # Integer columns with nulls as Python ints, not float64: a 64-bit `phash` would lose its low bits, and the stage
    # file's column would turn into a double.
    return t.to_pandas(integer_object_nulls=True), t.schema


def write_stages(output: str | os.PathLike, stages: tuple[StageSpec, ...]) -> dict[str, Any]:
    """Build every stage's mix from `<output>/samples/` and swap it in as `<output>/stages/`; return a summary."""
    output = os.fspath(output)
    if not stages:
        return {}
    kept, kept_schema = _kept_rows(output)
    # Stage files keep the manifest's column types (an all-null column of a stage stays typed).
    schema = pa.schema(list(kept_schema) + [pa.field("weight", pa.float64()), pa.field("stage", pa.string())])
    # A new tree replaces the old one whole (outfs.DirReplacement: folder swap locally, object by object on a store).
    tree = outfs.DirReplacement(outfs.join(output, STAGES))
    try:
        summary: dict[str, Any] = {}
        for order, st in enumerate(stages):
            rows = mix(kept, st) if len(kept) else pd.DataFrame()
            tree.folder(st.name)
            if len(rows):
                write_table_atomic(pa.Table.from_pandas(rows, schema=schema, preserve_index=False),
                                   tree.file(st.name, "part-00000.parquet"))
            dur = rows["duration_s"].where(rows["media_type"] == "video").sum() if len(rows) else 0.0
            summary[st.name] = {
                "order": order,
                "rows": int(len(rows)),
                "videos": int((rows["media_type"] == "video").sum()) if len(rows) else 0,
                "images": int((rows["media_type"] == "image").sum()) if len(rows) else 0,
                "video_hours": round(float(dur) / 3600.0, 4),
                "clusters": int(rows["cluster_id"].nunique()) if len(rows) and "cluster_id" in rows else 0,
                "weight_max": round(float(rows["weight"].max()), 4) if len(rows) else None,
            }
            if not len(rows):
                log.warning("stage %s selected no rows", st.name)
    except BaseException:
        tree.abort()
        raise
    tree.commit()
    return summary
