"""Checked one-time conversion of published pickled checkpoints into safetensors (run by `curation models pull`).

A `.pth`/`.pt` file is a pickle, which can run code when loaded. It is read once, with
`torch.load(weights_only=True)` (tensors and plain containers only; anything else is refused), its keys and shapes
are checked against the architecture that will load it, and it is written as safetensors next to it. Runs load only
the safetensors file. Converters, by registry key:

- `univfd-probe`: UnivFD's `fc_weights.pth` (`weight` (1, 768), `bias` (1,)) -> a linear head file
  (`operators.heads.save_linear_head`, on the unnormalised CLIP ViT-L/14 embedding);
- `laion-watermark`: LAION's `watermark_model_v1.pt` (the EfficientNet-B3 state dict) -> the same tensors as
  safetensors, checked key by key against `operators.models.watermark_net.laion_watermark_model()`.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, Callable

import torch


class ConversionError(ValueError):
    """A checkpoint that is not what its registry entry says; the message names what differs."""


def load_tensor_pickle(src: str | os.PathLike) -> dict[str, torch.Tensor]:
    """A state dict from a pickled checkpoint, read with `weights_only=True`; wrappers (`state_dict`, `module.`)
    removed. ConversionError when the file holds anything but tensors."""
    try:
        state = torch.load(str(src), map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - weights_only refuses code and foreign objects with various types
        raise ConversionError(f"{src}: not a plain tensor checkpoint; torch.load(weights_only=True) refused it "
                              f"({type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''})") from None
    if isinstance(state, dict) and isinstance(state.get("state_dict"), dict):
        state = state["state_dict"]
    if not isinstance(state, dict) or not state or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise ConversionError(f"{src}: expected a dict of tensors (a state dict), got {type(state).__name__}")
    if all(k.startswith("module.") for k in state):  # saved from DataParallel
        state = {k[len("module."):]: v for k, v in state.items()}
    return dict(state)


def check_shapes(src: Any, state: dict[str, torch.Tensor], expected: dict[str, tuple[int, ...]]) -> None:
    """ConversionError unless `state` has exactly the expected keys with the expected shapes."""
    missing = sorted(set(expected) - set(state))
    extra = sorted(set(state) - set(expected))
    wrong = {k: (tuple(state[k].shape), expected[k]) for k in expected if k in state
             and tuple(state[k].shape) != expected[k]}
    if missing or extra or wrong:
        parts = [f"missing {missing[:5]}" if missing else "", f"unexpected {extra[:5]}" if extra else "",
                 f"shape (got, expected) {dict(list(wrong.items())[:5])}" if wrong else ""]
        raise ConversionError(f"{src}: not the expected checkpoint: {'; '.join(p for p in parts if p)}")


def _sha256(path: Path) -> str:
    from curation.models import sha256_file

    return sha256_file(path)


def convert_univfd(src: str | os.PathLike, dst: str | os.PathLike) -> dict[str, Any]:
    """UnivFD `fc_weights.pth` -> linear head safetensors."""
    from operators.models.heads import EMBED_DIM, LinearHead, save_linear_head

    state = load_tensor_pickle(src)
    if set(state) == {"fc.weight", "fc.bias"}:
        state = {k[len("fc."):]: v for k, v in state.items()}
    check_shapes(src, state, {"weight": (1, EMBED_DIM), "bias": (1,)})
    w, b = state["weight"].float().numpy()[0], float(state["bias"].float()[0])
    meta = {"head": "synthetic", "source": "UnivFD fc_weights.pth (CLIP:ViT-L/14, ProGAN)",
            "input": "unnormalised image embedding", "converted_from_sha256": _sha256(Path(src)),
            "converted_with": "torch.load(weights_only=True)"}
    save_linear_head(dst, LinearHead(weight=w, bias=b, normalize=False, meta=meta))
    return {"from": Path(src).name, "to": Path(dst).name, "sha256": _sha256(Path(dst)), "tensors": 2}


def convert_laion_watermark(src: str | os.PathLike, dst: str | os.PathLike) -> dict[str, Any]:
    """LAION `watermark_model_v1.pt` -> safetensors state dict, checked against the architecture."""
    from safetensors.torch import save_file

    from operators.models.watermark_net import expected_shapes

    state = load_tensor_pickle(src)
    check_shapes(src, state, expected_shapes())
    dst = Path(dst)
    tmp = dst.with_name(f".{dst.name}.tmp")
    meta = {"source": "LAION-5B-WatermarkDetection watermark_model_v1.pt", "converted_with":
            "torch.load(weights_only=True)", "converted_from_sha256": _sha256(Path(src))}
    save_file({k: v.contiguous() for k, v in state.items()}, str(tmp), metadata={"curation": json.dumps(meta)})
    os.replace(tmp, dst)
    return {"from": Path(src).name, "to": dst.name, "sha256": _sha256(dst), "tensors": len(state)}


CONVERTERS: dict[str, Callable[[str | os.PathLike, str | os.PathLike], dict[str, Any]]] = {
    "univfd-probe": convert_univfd,
    "laion-watermark": convert_laion_watermark,
}


def convert(key: str, src: str | os.PathLike, dst: str | os.PathLike) -> dict[str, Any]:
    """Convert the downloaded file of registry entry `key`; returns what was written (for `.pulled.json`)."""
    if key not in CONVERTERS:
        raise ConversionError(f"no converter for model {key!r}; known: {sorted(CONVERTERS)}")
    return CONVERTERS[key](src, dst)
