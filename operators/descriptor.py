"""A classical image descriptor as `embedding` (offline profile): colour, gradient and layout statistics, so clustering
and near-duplicate detection run without model weights."""

from __future__ import annotations

from typing import Any, ClassVar

import numpy as np
import pyarrow as pa

from curation.operator import Operator, Resources
from operators.models.clip import mean_embedding


# Block layout of the descriptor (dimension 260). Each block is L2-normalised and weighted so that no block dominates
# by its size; histograms are square-rooted first (Hellinger) so a few dominant bins do not swamp the rest.
DESCRIPTOR_BLOCKS = {
    "hsv_hist": 8 * 4 * 4,  # joint hue × saturation × value histogram: global colour
    "grad_orient": 9 * 2 * 2,  # magnitude-weighted unsigned gradient orientations in 2×2 cells: texture/edges
    "gray_layout": 8 * 8,  # zero-mean, unit-variance 8×8 grey thumbnail: spatial layout
    "chroma_layout": 4 * 4 * 2,  # Lab a/b on a 4×4 grid, centred on grey: where the colours are
}
DESCRIPTOR_DIM = sum(DESCRIPTOR_BLOCKS.values())
_BLOCK_WEIGHTS = {"hsv_hist": 1.0, "grad_orient": 1.0, "gray_layout": 1.0, "chroma_layout": 0.7}


def _unit(v: np.ndarray) -> np.ndarray:
    return v / max(float(np.linalg.norm(v)), 1e-12)


def describe_frame(rgb: np.ndarray) -> np.ndarray:
    """Classical descriptor of one RGB uint8 frame (DESCRIPTOR_DIM,), unit length."""
    import cv2

    h, w = rgb.shape[:2]
    scale = 128.0 / min(h, w)
    small = cv2.resize(rgb, (max(1, round(w * scale)), max(1, round(h * scale))), interpolation=cv2.INTER_AREA)
    hsv = cv2.cvtColor(small, cv2.COLOR_RGB2HSV)
    hist = cv2.calcHist([hsv], [0, 1, 2], None, [8, 4, 4], [0, 180, 0, 256, 0, 256]).ravel()
    hsv_block = _unit(np.sqrt(hist / max(hist.sum(), 1.0)))

    gray = cv2.cvtColor(small, cv2.COLOR_RGB2GRAY).astype(np.float32)
    gx = cv2.Sobel(gray, cv2.CV_32F, 1, 0, ksize=3)
    gy = cv2.Sobel(gray, cv2.CV_32F, 0, 1, ksize=3)
    mag, ang = cv2.cartToPolar(gx, gy, angleInDegrees=True)
    bins = (np.mod(ang, 180.0) / 20.0).astype(np.int32).clip(0, 8)
    gh, gw = gray.shape
    cells = []
    for cy in range(2):
        for cx in range(2):
            sl = (slice(cy * gh // 2, (cy + 1) * gh // 2), slice(cx * gw // 2, (cx + 1) * gw // 2))
            cells.append(np.bincount(bins[sl].ravel(), weights=mag[sl].ravel(), minlength=9))
    grad = np.concatenate(cells)
    grad_block = _unit(np.sqrt(grad / max(grad.sum(), 1e-6)))

    thumb = cv2.resize(gray, (8, 8), interpolation=cv2.INTER_AREA).ravel()
    layout_block = _unit(thumb - thumb.mean()) if thumb.std() > 1e-3 else np.zeros(64, np.float32)

    lab = cv2.cvtColor(small, cv2.COLOR_RGB2LAB)
    ab = cv2.resize(lab, (4, 4), interpolation=cv2.INTER_AREA)[:, :, 1:].astype(np.float32) - 128.0
    chroma_block = ab.ravel() / 64.0  # not normalised per frame: a grey frame should stay near zero here

    parts = [_BLOCK_WEIGHTS["hsv_hist"] * hsv_block, _BLOCK_WEIGHTS["grad_orient"] * grad_block,
             _BLOCK_WEIGHTS["gray_layout"] * layout_block, _BLOCK_WEIGHTS["chroma_layout"] * chroma_block]
    return _unit(np.concatenate(parts).astype(np.float32))


def describe_frames(frames: np.ndarray) -> np.ndarray:
    """Clip descriptor: mean of per-frame descriptors, unit length (same reduction as the CLIP embedding)."""
    return mean_embedding(np.stack([describe_frame(f) for f in frames]))


class ClassicalDescriptor(Operator):
    """Colour, gradient and layout statistics as `embedding`, so clustering and dedup run without model weights."""

    name: ClassVar[str] = "descriptor"
    needs: ClassVar[tuple[str, ...]] = ("frames",)
    produces: ClassVar[dict[str, pa.DataType]] = {"embedding": pa.list_(pa.float32())}
    stateful: ClassVar[bool] = False
    default_resources: ClassVar[Resources] = Resources(num_cpus=1)
    default_batch_size: ClassVar[int] = 16

    def score_row(self, row: dict[str, Any]) -> dict[str, Any]:
        """Descriptor of the row's frames as `embedding`."""
        frames = np.asarray(row["frames"])
        if frames.ndim != 4 or frames.shape[-1] != 3 or len(frames) == 0:
            raise ValueError(f"frames must be (K,H,W,3) with K ≥ 1, got {frames.shape}")
        return {"embedding": describe_frames(frames)}
