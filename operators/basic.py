"""Geometry columns for the duration, resolution and aspect-ratio filters (the thresholds live in `decide:`)."""

from __future__ import annotations

from typing import Any

import pyarrow as pa

from curation.operator import Operator, Resources


class BasicShape(Operator):
    """Writes `short_side`, `long_side` and `aspect_ratio` (width / height of the displayed picture)."""

    name = "basic"
    needs = ("width", "height")
    produces = {"short_side": pa.int64(), "long_side": pa.int64(), "aspect_ratio": pa.float64()}
    default_resources = Resources(num_cpus=0.25)
    default_batch_size = 256

    def score_row(self, row: dict[str, Any]) -> dict[str, Any]:
        """Geometry of one row; null when the probe gave no size."""
        w, h = row.get("width"), row.get("height")
        if w is None or h is None or not w or not h:
            return {}
        w, h = int(w), int(h)
        return {"short_side": min(w, h), "long_side": max(w, h), "aspect_ratio": w / h}
