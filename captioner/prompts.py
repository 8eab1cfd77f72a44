"""Prompt building and answer cleaning for captioning engines: what any engine asks the model per row, and how its
answer becomes a caption. Engines (`captioner.engines`) share these, so that two engines given the same row ask the
same question and clean the answer the same way."""

from __future__ import annotations

import re
from typing import Any

VIDEO_PROMPT = (
    "Describe this video clip in detail, as a caption for training a video generation model: the main subjects and "
    "what they do, the setting, the camera movement and shot type, the lighting, colours and visual style. Write one "
    "fluent paragraph in the present tense, without any preamble."
)
IMAGE_PROMPT = (
    "Describe this image in detail, as a caption for training an image and video generation model: the main "
    "subjects, the setting, the composition and shot type, the lighting, colours and visual style. Write one fluent "
    "paragraph in the present tense, without any preamble."
)
OCR_CLAUSE = ' Text visible on screen, read by OCR (it may contain mistakes): "{text}". Quote it where it matters.'

_BOILERPLATE = re.compile(
    r"^\s*(?:(?:in|throughout)\s+(?:this|the)\s+(?:video|clip|image|picture|footage|scene)\s*,?\s*"
    r"|(?:this|the)\s+(?:video|clip|image|picture|footage)\s+(?:shows|depicts|features|captures|presents|displays"
    r"|showcases|is\s+showing)(?:\s+|$))",
    re.IGNORECASE,
)
_SENTENCE_END = ".!?。！？\"'”’)"


def build_prompt(media_type: str, ocr_text: Any, use_ocr: bool = True, max_ocr_chars: int = 300) -> tuple[str, bool]:
    """(instruction text, whether OCR text is in it) for one row."""
    prompt = IMAGE_PROMPT if media_type == "image" else VIDEO_PROMPT
    text = ocr_text if isinstance(ocr_text, str) else ""
    text = " / ".join(line.strip() for line in text.splitlines() if line.strip())
    if not use_ocr or not text:
        return prompt, False
    if len(text) > max_ocr_chars:
        text = text[:max_ocr_chars].rstrip() + "…"
    return prompt + OCR_CLAUSE.format(text=text.replace('"', "'")), True


def clean_caption(text: str) -> str | None:
    """The model's answer as a caption: boilerplate opening cut, whitespace collapsed, an unfinished last sentence
    dropped when a finished one precedes it; None when nothing is left."""
    text = " ".join(text.split())
    text = _BOILERPLATE.sub("", text, count=1).strip()
    if not text:
        return None
    text = text[0].upper() + text[1:]
    if text[-1] not in _SENTENCE_END:
        cut = max(text.rfind(p) for p in ".!?。！？")
        if cut > 0:
            text = text[: cut + 1]
    return text
