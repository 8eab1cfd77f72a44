"""Captioning engines behind one seam: the Ray pass (`captioner.caption_pass`) asks this module for an engine by name and
calls `engine.caption(items)`; prompt building and cleaning are shared (`captioner.prompts`).

An engine is a class with `caption(items) -> [(caption, caption_source)]` (items: `frames`, `media_type`,
`ocr_text`), built from a `CaptionConfig` by its loader, loaded once per GPU actor. `captioning.engine` picks one:
`qwen2vl` (transformers' `generate`, the default: what the pass always ran) or `qwen2vl_fast` (`captioner.fast`: the
same greedy tokens, prefill by `generate`, own static-cache decode loop, a CUDA graph per step on GPUs).
"""

from __future__ import annotations

from typing import Any, Callable

from curation.config import CAPTION_ENGINES

DEFAULT_ENGINE = "qwen2vl"


def _load_qwen2vl(cfg: Any) -> Any:
    from captioner.qwen2vl import Qwen2VLCaptioner

    return Qwen2VLCaptioner(cfg.model, device="cuda" if cfg.num_gpus > 0 else "cpu", dtype=cfg.dtype,
                            max_new_tokens=cfg.max_new_tokens, short_side=cfg.short_side, use_ocr=cfg.use_ocr,
                            max_ocr_chars=cfg.max_ocr_chars)


def _load_qwen2vl_fast(cfg: Any) -> Any:
    from captioner.fast import FastQwen2VLCaptioner

    return FastQwen2VLCaptioner(cfg.model, device="cuda" if cfg.num_gpus > 0 else "cpu", dtype=cfg.dtype,
                                max_new_tokens=cfg.max_new_tokens, short_side=cfg.short_side, use_ocr=cfg.use_ocr,
                                max_ocr_chars=cfg.max_ocr_chars)


ENGINES: dict[str, Callable[[Any], Any]] = {"qwen2vl": _load_qwen2vl, "qwen2vl_fast": _load_qwen2vl_fast}
# The config accepts exactly these names (curation.config.CAPTION_ENGINES): one list, checked here at import.
if tuple(ENGINES) != CAPTION_ENGINES:
    raise RuntimeError(f"captioner.engines {tuple(ENGINES)} and curation.config.CAPTION_ENGINES {CAPTION_ENGINES} differ")


def engine_name(cfg: Any) -> str:
    """The engine a captioning config asks for (`engine` when the config has it, else the default)."""
    name = getattr(cfg, "engine", None) or DEFAULT_ENGINE
    if name not in ENGINES:
        raise ValueError(f"captioning.engine: unknown engine {name!r} (known: {', '.join(sorted(ENGINES))})")
    return name


def load_engine(cfg: Any) -> Any:
    """The engine of a captioning config, loaded (model weights on the actor's device)."""
    return ENGINES[engine_name(cfg)](cfg)
