"""Load the public Wan2.1 reference DiT (`wan/modules/model.py`) from a git-ignored copy, for side-by-side checks.

The copy is never committed: put it under bench/_ref/ (ignored), e.g. from a clone of Wan-Video/Wan2.1:

    mkdir -p bench/_ref/wan/modules && cp Wan2.1/wan/modules/model.py bench/_ref/wan/modules/

Its `flash_attention` (flash-attn, which is not installed) is replaced by torch's SDPA with the same key-length
masking, computed in the inputs' dtype (so an fp32 run stays fp32; under bf16 autocast SDPA runs in bf16).
"""

from __future__ import annotations

import importlib.util
import os
import sys
import types

import torch
import torch.nn.functional as F

DEFAULT_PATH = os.path.join(os.path.dirname(os.path.abspath(__file__)), "_ref", "wan", "modules", "model.py")


def sdpa_flash_attention(q, k, v, q_lens=None, k_lens=None, dropout_p=0.0, softmax_scale=None, q_scale=None,
                         causal=False, window_size=(-1, -1), deterministic=False, dtype=torch.bfloat16,
                         version=None):
    """Stand-in for the reference's flash_attention: [B, L, N, C] in, keys beyond k_lens masked, [B, Lq, N, C] out."""
    out_dtype = q.dtype
    mask = None
    # flash-attn's varlen call costs nothing for keys that are all valid; a boolean mask would push SDPA off its fast
    # kernels, so one is built only when some sample really has padding (as in trainer.models.dit).
    if k_lens is not None and bool((k_lens < k.shape[1]).any()):
        pos = torch.arange(k.shape[1], device=k.device)
        mask = (pos[None, :] < k_lens.to(k.device)[:, None])[:, None, None, :]
    if q_scale is not None:
        q = q * q_scale
    dt = torch.promote_types(torch.promote_types(q.dtype, k.dtype), v.dtype)
    o = F.scaled_dot_product_attention(q.transpose(1, 2).to(dt), k.transpose(1, 2).to(dt), v.transpose(1, 2).to(dt),
                                       attn_mask=mask, is_causal=causal, scale=softmax_scale)
    return o.transpose(1, 2).to(out_dtype)


def load_reference(path: str = DEFAULT_PATH):
    """The reference `wan/modules/model.py` as a module (its WanModel class), attention through SDPA."""
    if not os.path.exists(path):
        raise FileNotFoundError(f"no reference model file at {path} (see bench/wan_reference.py's docstring)")
    pkg = types.ModuleType("wan_reference")
    pkg.__path__ = []
    attn = types.ModuleType("wan_reference.attention")
    attn.flash_attention = sdpa_flash_attention
    attn.attention = sdpa_flash_attention
    sys.modules.setdefault("wan_reference", pkg)
    sys.modules["wan_reference.attention"] = attn
    spec = importlib.util.spec_from_file_location("wan_reference.model", path)
    mod = importlib.util.module_from_spec(spec)
    sys.modules["wan_reference.model"] = mod
    spec.loader.exec_module(mod)
    return mod
