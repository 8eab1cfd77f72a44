"""Text to render: Chinese and English words from wordfreq's frequency lists, combined into words, short phrases and
multi-line passages with numbers and punctuation.

Why wordfreq (3.1.1; code Apache-2.0, word lists CC-BY-SA 4.0, shipped in the wheel, nothing fetched at run time):
one package has both languages, ranked by frequency over many sources (for Chinese: simplified, segmented words,
so a draw is a real word, not a random run of characters). jieba's dictionary (MIT) was the other candidate; its
frequencies come from one older corpus and it carries many rare proper names. We draw uniformly over the top
`vocab_size` words (rank, not frequency, weighted: frequency-weighted draws would mostly repeat 的/是/the/to), after
keeping only words made of Han characters (Chinese) or of ASCII letters (English).

wordfreq's lists are what people write, offensive words included, and a model learns to render what it is shown.
`exclude_words` / `exclude_words_file` (a word list such as LDNOOBW's, which a user brings: none ships here) remove
terms from the vocabulary before the top `vocab_size` are taken: English words equal to a term, Chinese words equal
to or containing one.

A text is a list of lines (a passage has several); each sample is drawn from its own generator, so the same (seed,
index) gives the same text on any machine.
"""

from __future__ import annotations

import functools
import re

import numpy as np

_HAN = re.compile(r"^[\u4e00-\u9fff]+$")
_LATIN = re.compile(r"^[a-z]+$")

ZH_PUNCT = ("，", "。", "！", "？", "：", "、")
EN_PUNCT = (",", ".", "!", "?", ":", "-")
LANGUAGES = ("zh", "en")
KINDS = ("word", "phrase", "passage")


@functools.lru_cache(maxsize=8)
def vocabulary(lang: str, size: int, exclude: frozenset[str] = frozenset()) -> tuple[str, ...]:
    """The `size` most frequent clean words of `lang` ('zh' or 'en') in wordfreq's list, none of them `excluded`
    by the terms of `exclude` (the next words down the list take their places)."""
    import wordfreq

    if lang not in LANGUAGES:
        raise ValueError(f"language must be one of {LANGUAGES}, got {lang!r}")
    pattern = _HAN if lang == "zh" else _LATIN
    words = [w for w in wordfreq.top_n_list(lang, size * 3) if pattern.match(w)]
    if lang == "en":
        words = [w for w in words if len(w) > 1 or w in ("a", "i")]
        words = [w.upper() if w == "i" else w for w in words]
    if exclude:
        han = tuple(t for t in exclude if _HAN.match(t))
        words = [w for w in words if not excluded(w, exclude, han)]
    return tuple(words[:size])


def excluded(word: str, terms: frozenset[str], han_terms: tuple[str, ...] = ()) -> bool:
    """Whether a vocabulary word is excluded: an English word equal to a term (any case), a Chinese word equal to
    a term or containing one of `han_terms` (Chinese words are segmented compounds: a term inside one is in it)."""
    return word.lower() in terms or any(t in word for t in han_terms)


def read_terms(path: str) -> tuple[str, ...]:
    """The terms of a word-list file (UTF-8, one term per line; blank lines and lines starting with # skipped),
    lower-cased, de-duplicated and sorted."""
    with open(path, encoding="utf-8") as f:
        lines = (line.strip() for line in f)
        return tuple(sorted({line.lower() for line in lines if line and not line.startswith("#")}))


def _number(rng: np.random.Generator, lang: str) -> str:
    """A number as it appears on signs and screens: a count, a year, a price, a time, a percentage or a date."""
    kind = rng.integers(6)
    if kind == 0:
        return str(int(rng.integers(0, 1000)))
    if kind == 1:
        return str(int(rng.integers(1950, 2036)))
    if kind == 2:
        value = f"{rng.integers(1, 1000)}.{rng.integers(0, 100):02d}"
        return ("¥" if lang == "zh" else "$") + value
    if kind == 3:
        return f"{rng.integers(0, 24):02d}:{rng.integers(0, 60):02d}"
    if kind == 4:
        return f"{rng.integers(1, 100)}%"
    if lang == "zh":
        return f"{rng.integers(1, 13)}月{rng.integers(1, 29)}日"
    return f"{rng.integers(1, 29)}/{rng.integers(1, 13)}"


def _phrase(rng: np.random.Generator, lang: str, vocab: tuple[str, ...], n_words: int, p_number: float,
            p_punct: float) -> str:
    words = [vocab[int(rng.integers(len(vocab)))] for _ in range(n_words)]
    if rng.random() < p_number:
        words.insert(int(rng.integers(len(words) + 1)), _number(rng, lang))
    if lang == "zh":
        out = ""
        for i, w in enumerate(words):
            # A comma or enumeration mark between words now and then; Chinese sets no spaces between words.
            out += w if i == 0 or rng.random() > p_punct / 2 else ZH_PUNCT[int(rng.integers(2)) * 5] + w
        if rng.random() < p_punct:
            out += ZH_PUNCT[int(rng.integers(1, 5))]
        return out
    case = rng.integers(3)
    if case == 1:
        words[0] = words[0][:1].upper() + words[0][1:]
    elif case == 2:
        words = [w.upper() for w in words] if rng.random() < 0.5 else [w[:1].upper() + w[1:] for w in words]
    out = " ".join(words)
    if rng.random() < p_punct:
        out += EN_PUNCT[int(rng.integers(len(EN_PUNCT) - 1))]
    return out


def make_text(rng: np.random.Generator, lang: str, kind: str, vocab_size: int = 20000, p_number: float = 0.3,
              p_punct: float = 0.4, max_lines: int = 3, exclude: frozenset[str] = frozenset()) -> list[str]:
    """One text as a list of lines: a word, a phrase (2-5 words), or a passage (2..max_lines phrases), drawn from
    the vocabulary without the `exclude` terms."""
    if kind not in KINDS:
        raise ValueError(f"text kind must be one of {KINDS}, got {kind!r}")
    vocab = vocabulary(lang, vocab_size, exclude)
    if kind == "word":
        return [_number(rng, lang)] if rng.random() < p_number / 3 else [vocab[int(rng.integers(len(vocab)))]]
    if kind == "phrase":
        return [_phrase(rng, lang, vocab, int(rng.integers(2, 6)), p_number, p_punct)]
    n = int(rng.integers(2, max(2, max_lines) + 1))
    return [_phrase(rng, lang, vocab, int(rng.integers(2, 5)), p_number, p_punct) for _ in range(n)]


def language_of(text: str) -> str:
    """'zh' when a third or more of the letters are Han characters, else 'en'."""
    han = sum(1 for c in text if "\u4e00" <= c <= "\u9fff")
    letters = sum(1 for c in text if c.isalpha())
    return "zh" if letters and han / letters >= 1 / 3 else "en"
