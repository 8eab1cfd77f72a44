"""CLIP ViT-L/14 image embeddings of each row's `frames` on GPU actors (full profile), with the heads on them. The
classical descriptor (offline profile) is `operators.descriptor`, the perceptual hash `operators.phash`; the model
itself is `operators.models.clip`.

`embedding` is the mean of the L2-normalised per-frame embeddings, re-normalised to unit length, so cosine
similarity is a dot product for clustering and dedup whichever backbone made it. The raw per-frame CLIP
embeddings (unnormalised, what UnivFD-style probes expect) are what the heads consume: by default the heads run in
the same actor, right after the backbone, so embeddings never leave it; `keep_frame_embeddings: true` also emits
them as the intermediate column `clip_frame_embeddings` (float32 (K, 768)) for a separate `clip_heads` operator.
That column is a frame view in spirit: the graph drops it before anything is written.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any, ClassVar, Literal

import numpy as np
import pyarrow as pa

from curation.operator import Operator, OperatorConfigError, Resources
from curation.typed import setting
from operators.models.clip import PRECISIONS, ClipBackbone, mean_embedding
from operators.heads import HeadParams
from operators.models.heads import HeadSet

log = logging.getLogger(__name__)

FRAME_EMBEDDINGS_COLUMN = "clip_frame_embeddings"


@dataclass(frozen=True)
class ClipParams(HeadParams):
    """The CLIP embedding operator's parameters (its heads' as in `clip_heads`)."""

    heads: list[str] = setting(default_factory=lambda: ["aesthetic"])
    arch: str = "ViT-L-14"
    weights: str | None = "clip-vit-l-14"  # registry key or a file path; null = random weights (tests/benchmarks)
    allow_random_weights: bool = False
    batch_images: int = setting(256, ge=1)
    # "bf16": open_clip's mixed precision (bf16 weights, fp32 LayerNorm) — measured 1.4× the throughput of
    # "autocast" (fp32 weights under torch.autocast) on an H100, see bench/BENCHMARKS.md; "pure_bf16"
    # also casts LayerNorm; "fp32". CPU always runs fp32.
    precision: str = setting("bf16", choices=PRECISIONS)
    channels_last: bool = True
    # torch.compile on CUDA: ≈30 s per actor and batch shape, once; +35% images/s measured
    compile: bool | Literal["auto"] = "auto"
    keep_frame_embeddings: bool = False
    device: str = "auto"


class ClipEmbedding(Operator):
    """CLIP ViT-L/14 image embeddings of `frames` plus the configured heads, in one GPU actor."""

    name: ClassVar[str] = "embedding"
    needs: ClassVar[tuple[str, ...]] = ("frames",)
    produces: ClassVar[dict[str, pa.DataType]] = {"embedding": pa.list_(pa.float32())}  # + heads, per instance
    models: ClassVar[tuple[str, ...]] = ("clip-vit-l-14",)
    stateful: ClassVar[bool] = True
    # Fractional so that other GPU operators (captioner, NSFW) can share the card. Several replicas of *this* actor
    # on one card measured slower than one (CUDA context time-slicing, bench/BENCHMARKS.md): give the pool
    # one actor per GPU (`concurrency` = number of GPUs); the pipelined chunks already overlap copies and compute.
    default_resources: ClassVar[Resources] = Resources(num_cpus=1, num_gpus=0.25)
    # 144 rows × K=8 frames = 1,152 images = one 128-image chunk (short host copy before the GPU starts) + four
    # 256-image chunks whose copies hide behind the previous forward; no padding for the compiled shapes, and the
    # GPU's idle time between two calls (results back, next batch's first copy) spread over more images.
    default_batch_size: ClassVar[int] = 144
    Params: ClassVar[type] = ClipParams

    def validate(self) -> None:
        """Check params; derive this instance's output columns and model keys from its heads."""
        c = self.config
        HeadSet.validate(c["heads"], c["head_paths"], c["aesthetic_reduce"], self.name)
        if c["weights"] is None and not c["allow_random_weights"]:
            raise OperatorConfigError(f"operator '{self.name}': weights is null; random weights need "
                                      "allow_random_weights: true (tests and benchmarks only)")
        self.heads = HeadSet(c["heads"], c["head_paths"], c["aesthetic_reduce"], c["model_dir"])
        self.produces = {"embedding": pa.list_(pa.float32()), **self.heads.columns()}
        if c["keep_frame_embeddings"]:
            self.produces[FRAME_EMBEDDINGS_COLUMN] = pa.list_(pa.list_(pa.float32()))
        backbone = (c["weights"],) if c["weights"] and "/" not in str(c["weights"]) else ()
        self.models = backbone + self.heads.model_keys()

    def setup(self) -> None:
        """Resolve weights through the registry and load backbone and heads (once per actor)."""
        from curation import models

        c = self.config
        weights = c["weights"]
        if weights and "/" not in str(weights):
            weights = str(models.resolve(weights, c["model_dir"]))
        if weights is None:
            log.warning("operator %s: RANDOM WEIGHTS — embeddings and head scores are meaningless", self.name)
        self.backbone = ClipBackbone(arch=c["arch"], weights_path=weights, device=c["device"],
                                     precision=c["precision"], batch_images=int(c["batch_images"]),
                                     channels_last=c["channels_last"], compile=c["compile"])
        self.backbone.load()
        self.heads.load()

    def score_rows(self, rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
        """Embed all rows' frames in one batched pass, then score the heads per clip."""
        frames = []
        for r in rows:
            f = np.asarray(r["frames"])
            if f.ndim != 4 or f.shape[-1] != 3 or f.dtype != np.uint8 or len(f) == 0:
                raise ValueError(f"frames must be uint8 (K,H,W,3) with K ≥ 1, got {f.dtype} {f.shape}")
            frames.append(f)
        per_frame = self.backbone.embed(frames)
        head_scores = self.heads.score(per_frame)
        out = []
        for emb, scores in zip(per_frame, head_scores):
            row = {"embedding": mean_embedding(emb), **scores}
            if self.config["keep_frame_embeddings"]:
                row[FRAME_EMBEDDINGS_COLUMN] = emb
            out.append(row)
        return out

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        out = super().__call__(batch)
        if self.config["keep_frame_embeddings"]:
            # The base class turns list columns into Python lists; keep the (K, 768) blocks as float32 arrays so
            # Ray carries them as a tensor column instead of nested lists of doubles.
            col = out[FRAME_EMBEDDINGS_COLUMN]
            fixed = np.empty(len(col), dtype=object)
            for i, v in enumerate(col):
                fixed[i] = None if v is None else np.asarray(v, dtype=np.float32)
            out[FRAME_EMBEDDINGS_COLUMN] = fixed
        return out
