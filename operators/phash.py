"""The 64-bit DCT perceptual hash of a row's middle frame (`phash`), for near-duplicate detection."""

from __future__ import annotations

from typing import Any, ClassVar

import numpy as np
import pyarrow as pa

from curation.operator import Operator, Resources


class PerceptualHash(Operator):
    """64-bit DCT perceptual hash of the middle frame, as `phash` (uint64 bits stored in an int64)."""

    name: ClassVar[str] = "phash"
    needs: ClassVar[tuple[str, ...]] = ("frames",)
    produces: ClassVar[dict[str, pa.DataType]] = {"phash": pa.int64()}
    default_resources: ClassVar[Resources] = Resources(num_cpus=1)
    default_batch_size: ClassVar[int] = 64

    def score_row(self, row: dict[str, Any]) -> dict[str, Any]:
        """pHash of the middle frame."""
        from curation.dedup import phash64

        frames = np.asarray(row["frames"])
        if frames.ndim != 4 or len(frames) == 0:
            raise ValueError(f"frames must be (K,H,W,3) with K ≥ 1, got {frames.shape}")
        return {"phash": phash64(frames[len(frames) // 2])}
