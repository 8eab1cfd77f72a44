"""LAION-5B's watermark detector: an EfficientNet-B3 (timm) whose classifier is a 1536-625-256-2 MLP, trained on
watermarked against clean images. Input: the RGB picture resized to 256x256 (aspect not kept) and normalised with
the ImageNet mean and std; output: softmax index 0 = P(watermark), as LAION's own inference code reads it.

Weights load only from the safetensors file that `curation models pull --keys laion-watermark` converts the published
pickle into (operators/models/convert.py); this module never unpickles anything.
"""

from __future__ import annotations

import functools
import os

import numpy as np
import torch
from torch import nn

INPUT_SIZE = 256
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def laion_watermark_model() -> nn.Module:
    """The detector's architecture with random weights (timm's `efficientnet_b3`, which `efficientnet_b3a`, the name
    LAION's code uses, maps to)."""
    import timm

    model = timm.create_model("efficientnet_b3", pretrained=False, num_classes=2)
    model.classifier = nn.Sequential(
        nn.Linear(1536, 625), nn.ReLU(), nn.Dropout(p=0.3), nn.Linear(625, 256), nn.ReLU(), nn.Linear(256, 2))
    return model


@functools.lru_cache(maxsize=1)
def expected_shapes() -> dict[str, tuple[int, ...]]:
    """Every state-dict key of the architecture and its shape (what a checkpoint must hold, no more, no less)."""
    return {k: tuple(v.shape) for k, v in laion_watermark_model().state_dict().items()}


class LaionWatermark:
    """The detector loaded from its converted safetensors file; `predict` gives P(watermark) per frame."""

    def __init__(self, path: str | os.PathLike, device: str = "cpu", batch: int = 16):
        from safetensors.torch import load_file

        self.device = torch.device(device)
        self.batch = batch
        model = laion_watermark_model()
        model.load_state_dict(load_file(str(path)), strict=True)
        self.model = model.eval().to(self.device)
        self._mean = torch.tensor(IMAGENET_MEAN, device=self.device).view(1, 3, 1, 1)
        self._std = torch.tensor(IMAGENET_STD, device=self.device).view(1, 3, 1, 1)

    @torch.no_grad()
    def predict(self, frames: np.ndarray) -> np.ndarray:
        """P(watermark) for each RGB uint8 frame of (K, H, W, 3)."""
        out = []
        frames = np.asarray(frames)
        for s in range(0, len(frames), self.batch):
            x = torch.from_numpy(np.ascontiguousarray(frames[s:s + self.batch])).to(self.device)
            x = x.permute(0, 3, 1, 2).float().div_(255.0)
            x = nn.functional.interpolate(x, size=(INPUT_SIZE, INPUT_SIZE), mode="bilinear", antialias=True,
                                          align_corners=False)
            x = (x - self._mean) / self._std
            out.append(torch.softmax(self.model(x).float(), dim=1)[:, 0].cpu().numpy())
        return np.concatenate(out) if out else np.zeros(0, np.float32)
