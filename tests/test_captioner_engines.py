"""The captioning engine seam: engines chosen by name, prompts shared by every engine."""

from __future__ import annotations

import dataclasses

import pytest

from captioner import engines, prompts, qwen2vl
from curation.config import CaptionConfig


def test_default_engine_is_the_one_the_pass_always_ran():
    assert engines.engine_name(CaptionConfig()) == "qwen2vl"
    assert engines.ENGINES["qwen2vl"] is engines._load_qwen2vl


def test_unknown_engine_is_a_clear_error():
    @dataclasses.dataclass
    class WithEngine:
        engine: str

    with pytest.raises(ValueError, match="unknown engine 'vllm'.*qwen2vl"):
        engines.engine_name(WithEngine("vllm"))


def test_prompt_building_is_shared():
    # The Qwen2-VL engine uses the shared prompt module (re-exported for older imports).
    assert qwen2vl.build_prompt is prompts.build_prompt and qwen2vl.clean_caption is prompts.clean_caption
    text, ocr = prompts.build_prompt("video", "OPEN\n24 HOURS")
    assert ocr and '"OPEN / 24 HOURS"' in text and text.startswith(prompts.VIDEO_PROMPT)
