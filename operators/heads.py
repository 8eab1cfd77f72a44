"""`clip_heads`: the learned heads of `operators.models.heads` as their own CPU operator, on the per-frame CLIP
embeddings (`clip_frame_embeddings`) that `ClipEmbedding(keep_frame_embeddings: true)` leaves."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar

import numpy as np
import pyarrow as pa

from curation.operator import Operator, Resources
from curation.typed import setting
from operators.models.heads import EMBED_DIM, HeadSet


@dataclass(frozen=True)
class HeadParams:
    """The learned heads to run and where their weights are (checked together by `HeadSet.validate`)."""

    heads: list[str] = setting(default_factory=lambda: ["aesthetic", "synthetic"])
    head_paths: dict[str, str] = setting(default_factory=dict)
    aesthetic_reduce: str = "mean"
    model_dir: str | None = None


class ClipHeads(Operator):
    """Heads as their own CPU operator, on `clip_frame_embeddings` left by `ClipEmbedding(keep_frame_embeddings)`."""

    name: ClassVar[str] = "clip_heads"
    needs: ClassVar[tuple[str, ...]] = ("clip_frame_embeddings",)
    produces: ClassVar[dict[str, pa.DataType]] = {}  # set per instance from the configured heads
    stateful: ClassVar[bool] = True
    default_resources: ClassVar[Resources] = Resources(num_cpus=1)
    default_batch_size: ClassVar[int] = 64
    Params: ClassVar[type] = HeadParams

    def validate(self) -> None:
        """Check params; the output columns and model keys follow the configured heads."""
        c = self.config
        HeadSet.validate(c["heads"], c["head_paths"], c["aesthetic_reduce"], self.name)
        self.heads = HeadSet(c["heads"], c["head_paths"], c["aesthetic_reduce"], c["model_dir"])
        self.produces = self.heads.columns()
        self.models = self.heads.model_keys()

    def setup(self) -> None:
        """Load the heads (once per actor)."""
        self.heads.load()

    def score_rows(self, rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
        """Score each row's per-frame embeddings."""
        embs = [np.asarray(r["clip_frame_embeddings"], dtype=np.float32).reshape(-1, EMBED_DIM) for r in rows]
        return self.heads.score(embs)
