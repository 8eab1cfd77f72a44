"""Prompt rewriting (the Wan paper's section 4.5): an instruct LLM turns a short user prompt into one paragraph in the
style of the training captions, so that the DiT sees at inference the kind of text it was trained on.

    curation rewrite --prompts prompts.txt --out rewrites.jsonl          # Qwen2.5-7B-Instruct, greedy, batched
    python -m trainer.sample ... --prompt 'a neon sign reading "OPEN"' --rewrite

The model is a registry key (`qwen2.5-7b-instruct`, pinned in curation/models.py) or a local folder with a chat
template. The instruction and the few-shot examples below are written for this project from the paper's description
of its captions (subjects with attributes, natural motion, setting, lighting, shot type and camera movement, style);
they are not Wan2.1's published system prompts.

Rules checked on every answer, with `retries` further attempts (the user turn then repeats the rule that failed):
- quoted on-screen text: every span of the prompt in double quotes ("...", “...”, 「...」, 『...』) must appear in the
  answer character for character; an answer that drops or changes it is retried, then rejected (`ok: false`, the
  error names the missing text).
- language: the answer is in the prompt's language (`language: auto`, Chinese when a third or more of its letters
  are Han characters) or the configured one (`en`, `zh`); an answer in another language is retried, then rejected.
- length: one paragraph of 80-120 words is asked for; the count (English words, or Han characters / 1.6 plus Latin
  words for Chinese) is recorded as `words` and `length_ok`, not enforced: a good caption of 75 words is still used.

Generation is greedy by default (the same prompt gives the same rewrite), batched with left padding.
"""

from __future__ import annotations

import json
import logging
import os
import re
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Sequence

from curation.config import ConfigError

log = logging.getLogger(__name__)

LANGUAGE_NAMES = {"en": "English", "zh": "Simplified Chinese"}

INSTRUCTION = (
    "You turn a short request for a video into the caption a text-to-video model was trained on. Answer with one "
    "paragraph of 80 to 120 words in {language} and nothing else: no title, no list, no note about the request. "
    "Cover, where they apply and roughly in this order: the main subjects and their visible attributes (age, build, "
    "clothing, colours, materials); what they do, as continuous natural motion; the setting and time of day; the "
    "light; the shot type (close-up, medium, wide, aerial) and how the camera moves (static, slow pan, tracking, "
    "push-in, handheld); the visual style (photographic, film grain, animation, painting, 3D render). Keep every "
    "detail of the request and add only what a viewer would plausibly see. Words meant to appear on screen are given "
    "in double quotes: copy them exactly, character for character, inside double quotes, and say where they appear. "
    "Write in the present tense."
)
REMINDER = {
    "quote": "Your answer must contain, exactly and in double quotes: {spans}.",
    "language": "Your answer must be written in {language}.",
    "empty": "Answer with the paragraph itself.",
}
# Few-shot turns written for this project (request -> caption in the training style).
FEW_SHOT: tuple[tuple[str, str], ...] = (
    ("an old fisherman mending a net",
     "An elderly fisherman with a white beard and deeply tanned, weathered skin sits on an upturned wooden crate on a "
     "harbour pier, wearing a faded blue cotton shirt with rolled sleeves and a knitted grey cap. His thick fingers "
     "pull a wooden shuttle through a torn green nylon net draped over his knees, tightening each knot with a short "
     "tug. Small boats rock gently on the water behind him and gulls drift across a pale sky. Soft early-morning "
     "light comes from the left and leaves warm highlights on his hands. Medium close-up, the camera slowly pushes "
     "in at eye level. Photographic, natural colours, shallow depth of field."),
    ('a neon sign that says "OPEN 24 HOURS" on a rainy night',
     'A rectangular neon sign reading "OPEN 24 HOURS" in glowing red capital letters hangs in the window of a small '
     "corner diner on a rainy city street at night. Raindrops run down the glass and the letters flicker faintly, "
     "their red light spilling across the wet pavement, where puddles ripple as heavy drops land. A figure under a "
     "black umbrella walks past from right to left, briefly blocking part of the sign. Cool blue street lamps "
     "contrast with the warm red glow. Medium shot from across the street, the camera tracks slowly to the right. "
     "Cinematic, high contrast, moody, with soft bokeh from distant headlights."),
    ("一个小女孩在草地上放风筝",
     "一个大约七岁的小女孩扎着两条短马尾，穿着黄色连衣裙和白色运动鞋，在开阔的绿色草地上向前奔跑，右手高高举着风筝线轴。"
     "一只红蓝相间的菱形风筝在她身后升起，长长的彩色尾巴在风中摆动。她边跑边回头看风筝，脸上带着开心的笑容，裙摆和头发被风吹起。"
     "远处是一排低矮的树和几朵白云，午后的阳光明亮柔和，在草地上投下清晰的影子。中景镜头，摄像机从侧面平稳跟拍她奔跑。"
     "写实摄影风格，色彩鲜艳，画面清新自然。"),
)
_QUOTES = re.compile(r'"([^"]+)"|“([^”]+)”|「([^」]+)」|『([^』]+)』')


def language_of(text: str) -> str:
    """'zh' when a third or more of the letters are Han characters, else 'en'."""
    from captioner.visual_text.text import language_of as lang

    return lang(text)


def quoted_spans(prompt: str) -> list[str]:
    """The on-screen text a prompt asks for: its spans inside double quotes (ASCII, curly or corner brackets)."""
    return [next(g for g in m.groups() if g is not None) for m in _QUOTES.finditer(prompt)]


def count_words(text: str, lang: str) -> int:
    """Words of an answer: whitespace words for English; Han characters / 1.6 plus Latin words for Chinese."""
    if lang == "zh":
        han = sum(1 for c in text if "\u4e00" <= c <= "\u9fff")
        latin = len(re.findall(r"[A-Za-z0-9]+", text))
        return int(round(han / 1.6)) + latin
    return len(text.split())


@dataclass(frozen=True)
class RewriteConfig:
    """How prompts are rewritten."""

    model: str = "qwen2.5-7b-instruct"  # registry key or local folder
    language: str = "auto"  # auto (the prompt's), en or zh
    batch_size: int = 16
    max_new_tokens: int = 256
    retries: int = 1  # further attempts for an answer that fails a rule
    do_sample: bool = False  # greedy by default: the same prompt gives the same rewrite
    temperature: float = 0.7  # only with do_sample
    min_words: int = 80
    max_words: int = 120
    device: str | None = None  # None: cuda when available
    dtype: str = "bfloat16"

    def __post_init__(self) -> None:
        if self.language not in ("auto", *LANGUAGE_NAMES):
            raise ConfigError(f"rewrite.language: expected auto, en or zh, got {self.language!r}")
        for k in ("batch_size", "max_new_tokens"):
            if not isinstance(getattr(self, k), int) or getattr(self, k) < 1:
                raise ConfigError(f"rewrite.{k}: expected a positive integer, got {getattr(self, k)!r}")
        if not isinstance(self.retries, int) or self.retries < 0:
            raise ConfigError(f"rewrite.retries: expected an integer >= 0, got {self.retries!r}")
        if not 0 < self.min_words <= self.max_words:
            raise ConfigError(f"rewrite: need 0 < min_words <= max_words, got {self.min_words}, {self.max_words}")
        if self.dtype not in ("bfloat16", "float16", "float32"):
            raise ConfigError(f"rewrite.dtype: expected bfloat16, float16 or float32, got {self.dtype!r}")


@dataclass
class Rewrite:
    """One prompt's outcome: the rewrite when every rule passed, else `ok` False and the reason."""

    prompt: str
    rewrite: str | None
    language: str
    ok: bool
    attempts: int
    words: int | None = None
    length_ok: bool | None = None
    error: str | None = None
    last_output: str | None = None


def target_language(prompt: str, language: str) -> str:
    """The language the rewrite must be in: the configured one, or the prompt's with `auto`."""
    return language_of(prompt) if language == "auto" else language


def check_rewrite(prompt: str, answer: str, lang: str) -> tuple[str | None, str | None]:
    """(failed rule, message) of an answer, (None, None) when it passes: empty, quoted text, language."""
    if not answer.strip():
        return "empty", "the model's answer was empty"
    missing = [s for s in quoted_spans(prompt) if s not in answer]
    if missing:
        return "quote", "the rewrite dropped or changed the quoted text " + ", ".join(f'"{s}"' for s in missing)
    if any(c.isalpha() for c in answer) and language_of(answer) != lang:
        return "language", f"the rewrite is in {LANGUAGE_NAMES[language_of(answer)]}, expected {LANGUAGE_NAMES[lang]}"
    return None, None


def clean_answer(text: str) -> str:
    """The answer as one paragraph: whitespace collapsed, wrapping quotes or a 'Caption:' label removed."""
    text = " ".join(text.split())
    text = re.sub(r"^(?:caption|rewritten prompt|描述|提示词)\s*[:：]\s*", "", text, flags=re.IGNORECASE)
    if len(text) > 1 and text[0] == text[-1] == '"' and text.count('"') == 2:
        text = text[1:-1].strip()
    return text


def build_messages(prompt: str, lang: str, reminder: str | None = None) -> list[dict[str, str]]:
    """The chat: instruction (in the target language's name), the few-shot turns, then the prompt."""
    messages = [{"role": "system", "content": INSTRUCTION.format(language=LANGUAGE_NAMES[lang])}]
    for request, answer in FEW_SHOT:
        messages += [{"role": "user", "content": request}, {"role": "assistant", "content": answer}]
    user = prompt.strip()
    if reminder:
        user += "\n\n" + reminder
    messages.append({"role": "user", "content": user})
    return messages


def resolve_model(model: str) -> Path:
    """The local folder of the rewriting model: a folder, or a registry key resolved from the model cache."""
    local = Path(os.path.expanduser(model))
    if local.is_dir():
        return local
    from curation import models

    if model not in models.REGISTRY:
        raise ConfigError(f"rewrite.model: {model!r} is neither a folder nor a registry key "
                          f"(e.g. qwen2.5-7b-instruct)")
    return models.resolve(model)


class PromptRewriter:
    """A loaded instruct LLM and tokenizer that rewrite batches of prompts."""

    def __init__(self, cfg: RewriteConfig = RewriteConfig()):
        folder = resolve_model(cfg.model)  # a wrong name fails before the slow imports
        import torch
        from transformers import AutoModelForCausalLM, AutoTokenizer

        device = cfg.device or ("cuda" if torch.cuda.is_available() else "cpu")
        dtype = getattr(torch, cfg.dtype) if device != "cpu" else torch.float32
        tokenizer = AutoTokenizer.from_pretrained(folder)
        model = AutoModelForCausalLM.from_pretrained(folder, dtype=dtype).to(device)
        self._setup(model, tokenizer, cfg)

    @classmethod
    def from_loaded(cls, model: Any, tokenizer: Any, cfg: RewriteConfig = RewriteConfig()) -> PromptRewriter:
        """A rewriter around a model and tokenizer already in memory (tests, notebooks)."""
        self = cls.__new__(cls)
        self._setup(model, tokenizer, cfg)
        return self

    def _setup(self, model: Any, tokenizer: Any, cfg: RewriteConfig) -> None:
        self.model = model.eval()
        self.tokenizer = tokenizer
        self.tokenizer.padding_side = "left"  # generation continues each row right after its prompt
        if self.tokenizer.pad_token is None:
            self.tokenizer.pad_token = self.tokenizer.eos_token
        self.cfg = cfg
        self.device = next(model.parameters()).device
        self.generate_calls = 0

    def generate(self, chats: list[list[dict[str, str]]]) -> list[str]:
        """The model's answers to a list of chats, `batch_size` chats per generate() call."""
        import torch

        out: list[str] = []
        for start in range(0, len(chats), self.cfg.batch_size):
            batch = chats[start:start + self.cfg.batch_size]
            texts = [self.tokenizer.apply_chat_template(c, add_generation_prompt=True, tokenize=False) for c in batch]
            inputs = self.tokenizer(texts, padding=True, return_tensors="pt", add_special_tokens=False).to(self.device)
            kwargs: dict[str, Any] = {"max_new_tokens": self.cfg.max_new_tokens, "do_sample": self.cfg.do_sample,
                                      "pad_token_id": self.tokenizer.pad_token_id}
            if self.cfg.do_sample:
                kwargs["temperature"] = self.cfg.temperature
            with torch.inference_mode():
                ids = self.model.generate(**inputs, **kwargs)
            self.generate_calls += 1
            out += self.tokenizer.batch_decode(ids[:, inputs["input_ids"].shape[1]:], skip_special_tokens=True)
        return out

    def rewrite(self, prompts: Sequence[str]) -> list[Rewrite]:
        """One Rewrite per prompt, in order; answers failing a rule are retried `retries` times, then rejected."""
        for i, p in enumerate(prompts):
            if not isinstance(p, str) or not p.strip():
                raise ValueError(f"prompt {i}: empty or not text: {p!r}")
        langs = [target_language(p, self.cfg.language) for p in prompts]
        results: list[Rewrite | None] = [None] * len(prompts)
        reminders: dict[int, str | None] = {i: None for i in range(len(prompts))}
        last: dict[int, tuple[str, str]] = {}
        for attempt in range(1, self.cfg.retries + 2):
            todo = sorted(reminders)
            answers = self.generate([build_messages(prompts[i], langs[i], reminders[i]) for i in todo])
            reminders = {}
            for i, raw in zip(todo, answers):
                answer = clean_answer(raw)
                rule, message = check_rewrite(prompts[i], answer, langs[i])
                if rule is None:
                    words = count_words(answer, langs[i])
                    results[i] = Rewrite(prompts[i], answer, langs[i], True, attempt, words,
                                         self.cfg.min_words <= words <= self.cfg.max_words, last_output=answer)
                    continue
                last[i] = (message, answer)
                spans = ", ".join(f'"{s}"' for s in quoted_spans(prompts[i]))
                reminders[i] = REMINDER[rule].format(spans=spans, language=LANGUAGE_NAMES[langs[i]])
            if not reminders:
                break
        for i in reminders:
            message, answer = last[i]
            log.warning("rewrite rejected after %d attempts: %r: %s", self.cfg.retries + 1, prompts[i], message)
            results[i] = Rewrite(prompts[i], None, langs[i], False, self.cfg.retries + 1,
                                 error=f"rejected after {self.cfg.retries + 1} attempts: {message}",
                                 last_output=answer)
        return [r for r in results if r is not None]


def read_prompts(path: str | os.PathLike) -> list[str]:
    """Prompts of a file: JSONL rows with a `prompt` key (.jsonl), else one prompt per non-empty line."""
    p = Path(path)
    if not p.is_file():
        raise FileNotFoundError(f"--prompts: no file {p}")
    lines = [ln for ln in p.read_text(encoding="utf-8").splitlines() if ln.strip()]
    if p.suffix == ".jsonl":
        out = []
        for n, ln in enumerate(lines, 1):
            try:
                row = json.loads(ln)
            except json.JSONDecodeError as exc:
                raise ValueError(f"{p}:{n}: not JSON ({exc.msg})") from None
            if not isinstance(row, dict) or not isinstance(row.get("prompt"), str):
                raise ValueError(f"{p}:{n}: expected an object with a string `prompt`")
            out.append(row["prompt"])
        lines = out
    if not lines:
        raise ValueError(f"{p}: no prompts")
    return lines


def rewrite_file(prompts: list[str], out: str | os.PathLike, cfg: RewriteConfig,
                 rewriter: PromptRewriter | None = None) -> list[Rewrite]:
    """Rewrite prompts and write one JSON line per prompt to `out` (temporary file, then rename)."""
    rewriter = rewriter or PromptRewriter(cfg)
    results = rewriter.rewrite(prompts)
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".{out.name}.tmp")
    with open(tmp, "w", encoding="utf-8") as fh:
        for r in results:
            fh.write(json.dumps(asdict(r), ensure_ascii=False) + "\n")
    os.replace(tmp, out)
    return results


def rewrite_prompts(prompts: list[str], cfg: RewriteConfig) -> list[str]:
    """The rewrites of `prompts` (for the sampler), or a ValueError naming every prompt that was rejected."""
    import gc

    rewriter = PromptRewriter(cfg)
    results = rewriter.rewrite(prompts)
    del rewriter
    gc.collect()
    try:
        import torch

        if torch.cuda.is_available():
            torch.cuda.empty_cache()  # the DiT and VAE load next on the same GPU
    except ImportError:
        pass
    bad = [r for r in results if not r.ok]
    if bad:
        raise ValueError("prompt rewriting rejected " + "; ".join(f"{r.prompt!r}: {r.error}" for r in bad))
    return [r.rewrite for r in results]  # type: ignore[misc]
