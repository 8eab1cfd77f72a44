"""Learned heads on frozen CLIP ViT-L/14 image embeddings: LAION aesthetic MLP, UnivFD-style linear probes.

Heads consume per-frame embeddings and reduce them to one score per clip. They normally run inside the embedding
actor (`ClipEmbedding(heads=[...])`) so that embeddings never leave the GPU; `ClipHeads` runs the same heads as a
separate CPU operator (`operators.heads`) on the intermediate `clip_frame_embeddings` column, for pipelines that split
the two.

Per-clip reduction (documented choice): the aesthetic score is the **mean** over frames by default — the
thresholds published with the predictor (Open-Sora aes < 4, Open-Sora-Plan ≥ 4.75) were used on frame means;
NeMo Curator takes the min (`aesthetic_reduce: min` gives that). Probability heads (synthetic, watermark, nsfw)
take the mean of per-frame probabilities.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import torch
from torch import nn

from curation.operator import OperatorConfigError

# head name -> (registry key, output column). Learned watermark/NSFW heads write their own columns so that they
# never overwrite the dedicated CPU operators' `watermark_score` / `nsfw_score`.
HEADS: dict[str, tuple[str, str]] = {
    "aesthetic": ("laion-aesthetic-l14", "aesthetic_score"),
    "synthetic": ("synthetic-head", "synthetic_score"),  # a probe you train (`curation heads train synthetic`)
    "univfd": ("univfd-probe", "synthetic_score"),  # UnivFD's published probe (converted to safetensors on pull)
    "watermark_head": ("watermark-head", "watermark_head_score"),
    "nsfw_head": ("nsfw-head", "nsfw_head_score"),
}
REDUCERS = ("mean", "min", "max", "median")
EMBED_DIM = 768


class AestheticMLP(nn.Module):
    """The LAION improved-aesthetic-predictor MLP, with module names matching its published state dict."""

    def __init__(self, input_size: int = EMBED_DIM):
        super().__init__()
        # The published model has no activations (its ReLUs are commented out): a deep *linear* map. Indices of
        # the Sequential must stay as published (layers.0/2/4/6/7) so the .pth loads with strict=True as it is.
        self.layers = nn.Sequential(
            nn.Linear(input_size, 1024),
            nn.Dropout(0.2),
            nn.Linear(1024, 128),
            nn.Dropout(0.2),
            nn.Linear(128, 64),
            nn.Dropout(0.1),
            nn.Linear(64, 16),
            nn.Linear(16, 1),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Score (N, 1) from L2-normalised embeddings (N, 768)."""
        return self.layers(x)


AESTHETIC_SHAPES = {
    "layers.0.weight": (1024, 768), "layers.0.bias": (1024,),
    "layers.2.weight": (128, 1024), "layers.2.bias": (128,),
    "layers.4.weight": (64, 128), "layers.4.bias": (64,),
    "layers.6.weight": (16, 64), "layers.6.bias": (16,),
    "layers.7.weight": (1, 16), "layers.7.bias": (1,),
}


def load_aesthetic(path: str | os.PathLike):
    """Load the published `sac+logos+ava1-l14-linearMSE.pth` state dict as it is (weights_only, strict)."""
    state = torch.load(str(path), map_location="cpu", weights_only=True)
    if isinstance(state, dict) and "state_dict" in state:  # Lightning-style wrapper some mirrors use
        state = state["state_dict"]
    bad = {k: tuple(v.shape) for k, v in state.items() if AESTHETIC_SHAPES.get(k) != tuple(v.shape)}
    if bad or set(state) != set(AESTHETIC_SHAPES):
        raise ValueError(f"{path}: not an improved-aesthetic-predictor state dict (unexpected {bad or sorted(state)})")
    model = AestheticMLP()
    model.load_state_dict(state, strict=True)
    return model.eval()


@dataclass
class LinearHead:
    """A linear probe: score = sigmoid(w·x + b) on (optionally L2-normalised) embeddings."""

    weight: np.ndarray  # (D,)
    bias: float
    normalize: bool = False  # UnivFD uses the *unnormalised* CLIP image embedding
    meta: dict[str, Any] | None = None

    def logits(self, x: np.ndarray) -> np.ndarray:
        """Raw w·x + b per row of x (N, D)."""
        x = np.asarray(x, dtype=np.float32)
        if self.normalize:
            x = x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)
        return x @ self.weight.astype(np.float32) + np.float32(self.bias)

    def predict_proba(self, x: np.ndarray) -> np.ndarray:
        """Probability of the positive class per row."""
        z = self.logits(x).astype(np.float64)
        return 1.0 / (1.0 + np.exp(-z))


def save_linear_head(path: str | os.PathLike, head: LinearHead) -> Path:
    """Write a linear head as safetensors (tensors `fc.weight` (1,D), `fc.bias` (1,)) with JSON metadata."""
    from safetensors.numpy import save_file

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    meta = {"format": "curation-linear-head/1", "normalize": head.normalize, **(head.meta or {})}
    tensors = {
        "fc.weight": np.asarray(head.weight, dtype=np.float32).reshape(1, -1),
        "fc.bias": np.asarray([head.bias], dtype=np.float32),
    }
    tmp = path.with_name(f".{path.name}.tmp")
    save_file(tensors, str(tmp), metadata={"curation": json.dumps(meta)})
    os.replace(tmp, path)  # a head file appears only when complete
    return path


def load_linear_head(path: str | os.PathLike) -> LinearHead:
    """Read a head written by `save_linear_head` (safetensors: no code is unpickled)."""
    from safetensors import safe_open

    with safe_open(str(path), framework="numpy") as f:
        meta = json.loads((f.metadata() or {}).get("curation", "{}"))
        w = f.get_tensor("fc.weight")
        b = f.get_tensor("fc.bias")
    if w.ndim != 2 or w.shape[0] != 1 or b.shape != (1,):
        raise ValueError(f"{path}: expected fc.weight (1,D) and fc.bias (1,), got {w.shape} and {b.shape}")
    return LinearHead(weight=w[0], bias=float(b[0]), normalize=bool(meta.get("normalize", False)), meta=meta)


def reduce_frames(values: np.ndarray, how: str) -> float:
    """One number per clip from per-frame values."""
    return float(getattr(np, how)(values))


class HeadSet:
    """The configured heads, loaded once, scoring per-frame embeddings (K, D) → one value per clip and head."""

    def __init__(self, heads: list[str], paths: dict[str, str | None] | None = None, aesthetic_reduce: str = "mean",
                 model_root: str | None = None):
        self.names = list(heads)
        self.paths = dict(paths or {})
        self.aesthetic_reduce = aesthetic_reduce
        self.model_root = model_root
        self._aesthetic = None
        self._linear: dict[str, LinearHead] = {}

    @staticmethod
    def validate(heads: Any, paths: Any, aesthetic_reduce: Any, op: str) -> None:
        """Raise OperatorConfigError naming the bad key."""
        if not isinstance(heads, (list, tuple)) or any(h not in HEADS for h in heads):
            raise OperatorConfigError(f"operator '{op}': heads must be a list drawn from {sorted(HEADS)}, got {heads}")
        if not isinstance(paths, dict) or any(k not in HEADS for k in paths):
            raise OperatorConfigError(f"operator '{op}': head_paths keys must be in {sorted(HEADS)}, got {paths}")
        if len({HEADS[h][1] for h in heads}) != len(heads):
            raise OperatorConfigError(f"operator '{op}': heads {heads} write the same column twice (`synthetic` and "
                                      "`univfd` both write synthetic_score: pick one)")
        if aesthetic_reduce not in REDUCERS:
            raise OperatorConfigError(f"operator '{op}': aesthetic_reduce must be one of {REDUCERS}")

    def model_keys(self) -> tuple[str, ...]:
        """Registry keys of the heads whose files are not given explicitly."""
        return tuple(HEADS[h][0] for h in self.names if not self.paths.get(h))

    def columns(self) -> dict[str, pa.DataType]:
        """Output columns of the configured heads."""
        return {HEADS[h][1]: pa.float64() for h in self.names}

    def _path(self, head: str) -> str:
        from curation import models

        return self.paths.get(head) or str(models.resolve(HEADS[head][0], self.model_root))

    def load(self) -> None:
        """Load every configured head (once per actor)."""
        for h in self.names:
            if h == "aesthetic":
                self._aesthetic = load_aesthetic(self._path(h))
            else:
                self._linear[h] = load_linear_head(self._path(h))

    def score(self, frame_embeddings: list[np.ndarray]) -> list[dict[str, float]]:
        """Scores per clip, from each clip's raw (unnormalised) per-frame embeddings (K, D)."""
        if not self.names:
            return [{} for _ in frame_embeddings]
        counts = [len(e) for e in frame_embeddings]
        allx = np.concatenate(frame_embeddings, axis=0).astype(np.float32)
        per_frame: dict[str, np.ndarray] = {}
        if self._aesthetic is not None:
            x = allx / np.maximum(np.linalg.norm(allx, axis=1, keepdims=True), 1e-12)  # the MLP expects unit norm
            with torch.no_grad():
                per_frame["aesthetic"] = self._aesthetic(torch.from_numpy(x)).float().numpy()[:, 0]
        for h, head in self._linear.items():
            per_frame[h] = head.predict_proba(allx)
        out: list[dict[str, float]] = []
        start = 0
        for n in counts:
            row = {}
            for h, vals in per_frame.items():
                how = self.aesthetic_reduce if h == "aesthetic" else "mean"
                row[HEADS[h][1]] = reduce_frames(vals[start:start + n], how)
            out.append(row)
            start += n
        return out
