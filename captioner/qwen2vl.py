"""Dense captions with Qwen2-VL (Hugging Face transformers), the clip's OCR text in the prompt.

What the model gets per row: a video clip as `num_frames` uniform frames (an even number: Qwen2-VL merges pairs of
frames in time) at `short_side` px, or an image; and an instruction asking for one present-tense paragraph on the
subjects and their actions, the setting, camera movement and shot type, lighting and style, which is what a
text-to-video model is trained to follow. When the row has `ocr_text`, the prompt quotes it (cut to
`max_ocr_chars`) as text read from the screen, flagged as possibly wrong, so the caption can name on-screen text
without the model having to read small subtitles itself (the Wan paper's dense captions combine OCR and a VLM the
same way).

Generation is greedy (`do_sample=False`) so a re-run gives the same caption, batched with left padding. The output is
cleaned by `clean_caption`: boilerplate openings ("The video shows", "In this image, ...") are cut, whitespace is
collapsed, and a sentence left unfinished by `max_new_tokens` is dropped when a finished one precedes it.

Prompt building and answer cleaning live in `captioner.prompts` (shared by every engine; re-exported here).
`caption_source` says what made the caption: the model's name (registry key, or the folder name of a local
checkpoint), with `+ocr` when OCR text was in the prompt.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np

from captioner.prompts import IMAGE_PROMPT, OCR_CLAUSE, VIDEO_PROMPT, build_prompt, clean_caption  # noqa: F401

def model_name(model: str) -> str:
    """The name `caption_source` uses for a registry key or a local checkpoint folder."""
    return Path(os.path.expanduser(model)).name if os.path.isdir(os.path.expanduser(model)) else model


def resolve_model(model: str) -> Path:
    """The local folder of the captioning model: a registry key resolved from the model cache, or a folder."""
    local = Path(os.path.expanduser(model))
    if local.is_dir():
        return local
    from curation import models

    return models.resolve(model)


def fit_size(h: int, w: int, short_side: int, multiple: int = 28) -> tuple[int, int]:
    """The (height, width) `fit_frames` gives frames of size h x w."""
    scale = short_side / float(min(h, w))
    return (max(multiple, int(round(h * scale / multiple)) * multiple),
            max(multiple, int(round(w * scale / multiple)) * multiple))


def fit_frames(frames: np.ndarray, short_side: int, multiple: int = 28) -> np.ndarray:
    """Frames resized so the short side is about `short_side` and both sides are multiples of `multiple` (Qwen2-VL's
    patch 14 x spatial merge 2), so the processor does not resize them again."""
    h, w = frames.shape[1:3]
    scale = short_side / float(min(h, w))
    nh, nw = fit_size(h, w, short_side, multiple)
    if (nh, nw) == (h, w):
        return frames
    import cv2  # only when resizing (frames sized already need no OpenCV)

    interp = cv2.INTER_AREA if scale < 1 else cv2.INTER_CUBIC
    return np.stack([cv2.resize(np.ascontiguousarray(f), (nw, nh), interpolation=interp) for f in frames])


class Qwen2VLCaptioner:
    """A loaded Qwen2-VL model and processor that caption batches of rows."""

    def __init__(self, model: str = "qwen2-vl-7b", device: str | None = None, dtype: str = "bfloat16",
                 max_new_tokens: int = 200, short_side: int = 336, use_ocr: bool = True, max_ocr_chars: int = 300):
        import torch
        from transformers import AutoProcessor, Qwen2VLForConditionalGeneration

        folder = resolve_model(model)
        device = device or ("cuda" if torch.cuda.is_available() else "cpu")
        torch_dtype = getattr(torch, dtype) if device != "cpu" else torch.float32
        processor = AutoProcessor.from_pretrained(folder)
        net = Qwen2VLForConditionalGeneration.from_pretrained(folder, dtype=torch_dtype, attn_implementation="sdpa")
        self._setup(net.to(device), processor, model_name(model), device, max_new_tokens, short_side, use_ocr,
                    max_ocr_chars)

    @classmethod
    def from_loaded(cls, net: Any, processor: Any, name: str, max_new_tokens: int = 200, short_side: int = 336,
                    use_ocr: bool = True, max_ocr_chars: int = 300) -> Qwen2VLCaptioner:
        """A captioner around a model and processor already in memory (benchmarks, notebooks)."""
        self = cls.__new__(cls)
        self._setup(net, processor, name, str(next(net.parameters()).device), max_new_tokens, short_side, use_ocr,
                    max_ocr_chars)
        return self

    def _setup(self, net: Any, processor: Any, name: str, device: str, max_new_tokens: int, short_side: int,
               use_ocr: bool, max_ocr_chars: int) -> None:
        self.model = net
        self.model.eval()
        self.processor = processor
        self.processor.tokenizer.padding_side = "left"  # generation continues each row right after its prompt
        self.name = name
        self.device = device
        self.max_new_tokens = max_new_tokens
        self.short_side = short_side
        self.use_ocr = use_ocr
        self.max_ocr_chars = max_ocr_chars

    def caption(self, items: list[dict[str, Any]], **generate: Any) -> list[tuple[str | None, str | None]]:
        """(caption, caption_source) per item; an item has `frames` (K, H, W, 3) uint8 RGB, `media_type` and
        `ocr_text`. `generate` adds keyword arguments to the generation (e.g. `min_new_tokens`)."""
        if not items:
            return []
        new_ids, with_ocr = self.generate_ids(items, **generate)
        return self.results(new_ids, with_ocr)

    def generate_ids(self, items: list[dict[str, Any]], **generate: Any) -> tuple[Any, list[bool]]:
        """(generated token ids (rows, T) on the CPU, whether OCR text was in each prompt): one generate() call for
        all items; finished rows are padded with the pad token, as `generate` does."""
        import torch

        inputs, with_ocr = self.inputs(items)
        inputs = inputs.to(self.device)
        with torch.inference_mode():
            out = self.model.generate(**inputs, **{"max_new_tokens": self.max_new_tokens, "do_sample": False,
                                                   **generate})
        return out[:, inputs["input_ids"].shape[1]:].cpu(), with_ocr

    def inputs(self, items: list[dict[str, Any]]) -> tuple[Any, list[bool]]:
        """(processor output on the CPU: left-padded ids, mask, pixels, grids; whether OCR text is in each prompt)."""
        texts, images, videos, with_ocr = [], [], [], []
        for it in items:
            prompt, ocr = build_prompt(str(it["media_type"]), it.get("ocr_text"), self.use_ocr, self.max_ocr_chars)
            frames = fit_frames(np.asarray(it["frames"]), self.short_side)
            kind = "image" if it["media_type"] == "image" else "video"
            if kind == "image":
                images.append(frames[len(frames) // 2])
            else:
                videos.append(frames[: len(frames) - len(frames) % 2] if len(frames) > 1 else np.repeat(frames, 2, 0))
            messages = [{"role": "user", "content": [{"type": kind}, {"type": "text", "text": prompt}]}]
            texts.append(self.processor.apply_chat_template(messages, add_generation_prompt=True, tokenize=False))
            with_ocr.append(ocr)
        kwargs: dict[str, Any] = {"images": images} if images else {}
        if videos:
            # Frames are already sized by `short_side`; the reference per-frame pixel cap keeps it that way.
            kwargs.update(videos=videos, videos_kwargs={"cap_pixels_per_frame": True})
        return self.processor(text=texts, padding=True, return_tensors="pt", **kwargs), with_ocr

    def results(self, new_ids: Any, with_ocr: list[bool]) -> list[tuple[str | None, str | None]]:
        """(caption, caption_source) per row from its generated ids: decoded, special tokens dropped, cleaned."""
        answers = self.processor.batch_decode(new_ids, skip_special_tokens=True)
        result = []
        for answer, ocr in zip(answers, with_ocr):
            cap = clean_caption(answer)
            result.append((cap, None if cap is None else self.name + ("+ocr" if ocr else "")))
        return result
