"""Prompt rewriting plumbing on a tiny random Qwen2 built offline (its answers are noise; the rules, batching and
errors around them are what is tested)."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))

from captioner.rewrite import (LANGUAGE_NAMES, PromptRewriter, RewriteConfig, build_messages,  # noqa: E402
                               check_rewrite, count_words, quoted_spans, read_prompts, rewrite_file,
                               target_language)
from curation.config import ConfigError  # noqa: E402

PROMPTS = ["a dog on a beach", 'a shop sign that says "BAKERY"', "一只猫在窗台上睡觉", "a car", "rain on a window"]


@pytest.fixture(scope="module")
def tiny(tmp_path_factory) -> Path:
    """The tiny random Qwen2 checkpoint folder."""
    from tiny_qwen2 import build_tiny_qwen2

    return build_tiny_qwen2(tmp_path_factory.mktemp("tiny_qwen2"))


@pytest.fixture(scope="module")
def loaded(tiny):
    """The tiny model and tokenizer loaded once (loading costs more than the tests' generation)."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    return AutoModelForCausalLM.from_pretrained(tiny), AutoTokenizer.from_pretrained(tiny)


def _rewriter(loaded, **kw) -> PromptRewriter:
    return PromptRewriter.from_loaded(*loaded, RewriteConfig(**kw))


def test_rules_on_answers():
    assert quoted_spans('a sign "OPEN 24" and 「营业中」 and “SALE”') == ["OPEN 24", "营业中", "SALE"]
    assert target_language("一只猫在窗台上睡觉", "auto") == "zh"
    assert target_language("一只猫在窗台上睡觉", "en") == "en"
    assert target_language("a cat", "auto") == "en"
    p = 'a neon sign reading "OPEN 24 HOURS"'
    assert check_rewrite(p, 'A red sign reading "OPEN 24 HOURS" glows.', "en") == (None, None)
    assert check_rewrite(p, 'A red sign reading "OPEN 24 HRS" glows.', "en")[0] == "quote"
    assert check_rewrite("a cat", "一只猫躺在窗台上晒太阳。", "en")[0] == "language"
    assert check_rewrite("a cat", "   ", "en")[0] == "empty"
    assert count_words("one two three", "en") == 3
    assert count_words("一只猫躺在窗台上", "zh") == 5  # 8 Han characters / 1.6


def test_instruction_names_the_target_language():
    for lang, name in LANGUAGE_NAMES.items():
        msgs = build_messages("a cat", lang)
        assert name in msgs[0]["content"] and msgs[-1] == {"role": "user", "content": "a cat"}
        assert [m["role"] for m in msgs[1:-1]] == ["user", "assistant"] * (len(msgs[1:-1]) // 2)


def test_config_errors(tmp_path):
    with pytest.raises(ConfigError, match="language"):
        RewriteConfig(language="fr")
    with pytest.raises(ConfigError, match="batch_size"):
        RewriteConfig(batch_size=0)
    with pytest.raises(ConfigError, match="retries"):
        RewriteConfig(retries=-1)
    with pytest.raises(ConfigError, match="min_words"):
        RewriteConfig(min_words=130, max_words=120)
    with pytest.raises(ConfigError, match="neither a folder nor a registry key"):
        PromptRewriter(RewriteConfig(model=str(tmp_path / "no-such-model")))
    (tmp_path / "p.jsonl").write_text('{"prompt": "a cat"}\n{"text": "x"}\n')
    with pytest.raises(ValueError, match=r"p.jsonl:2"):
        read_prompts(tmp_path / "p.jsonl")


def test_batching_quoted_text_and_language_rules(loaded, tmp_path):
    one = _rewriter(loaded, max_new_tokens=8, batch_size=5, retries=1)
    two = _rewriter(loaded, max_new_tokens=8, batch_size=2, retries=1)
    a, b = one.rewrite(PROMPTS), two.rewrite(PROMPTS)
    # Same answers whatever the batch (left padding), in prompt order.
    assert [r.last_output for r in a] == [r.last_output for r in b]
    assert [r.prompt for r in a] == PROMPTS
    by = {r.prompt: r for r in a}
    # The random model never writes "BAKERY": retried once (a second attempt), then rejected with the reason.
    bad = by['a shop sign that says "BAKERY"']
    assert not bad.ok and bad.rewrite is None and bad.attempts == 2 and '"BAKERY"' in bad.error
    # Language: the Chinese prompt wants Chinese; the noise is not, so it is rejected, naming the languages.
    zh = by["一只猫在窗台上睡觉"]
    assert zh.language == "zh" and not zh.ok and "expected Simplified Chinese" in zh.error
    # Calls: 5 prompts in batches of 2 (3 calls) + the 2 retries in one call.
    assert two.generate_calls == 4 and one.generate_calls == 2
    # With English configured, the Chinese prompt is asked (and checked) for English.
    en = _rewriter(loaded, max_new_tokens=8, language="en")
    r = en.rewrite(["一只猫在窗台上睡觉"])[0]
    assert r.language == "en" and r.ok and r.rewrite == r.last_output and r.words and r.length_ok is False
    # The JSONL output carries every prompt with its flag.
    out = tmp_path / "rw.jsonl"
    rewrite_file(PROMPTS, out, two.cfg, rewriter=two)
    rows = [json.loads(ln) for ln in out.read_text().splitlines()]
    assert [x["prompt"] for x in rows] == PROMPTS and rows[1]["ok"] is False and rows[1]["rewrite"] is None


def test_sampler_rewrite_flag_stops_on_a_rejected_prompt(tiny):
    import torch

    from trainer.sample import _parse, rewrite_if_asked

    args = _parse(["--checkpoint", "x", "--vae", "y", "--out", "o.mp4", "--prompt", 'a sign "BAKERY"',
                   "--rewrite", "--rewrite-model", str(tiny), "--rewrite-max-new-tokens", "8", "--precision", "fp32"])
    with pytest.raises(SystemExit, match='BAKERY'):
        rewrite_if_asked(args, torch.device("cpu"))
    plain = _parse(["--checkpoint", "x", "--vae", "y", "--out", "o.mp4", "--prompt", "a cat"])
    assert rewrite_if_asked(plain, torch.device("cpu")) == ["a cat"]


def test_cli_rewrite_writes_every_prompt_and_strict_fails_on_a_rejection(tiny, tmp_path, capsys):
    from curation.cli import main

    prompts = tmp_path / "prompts.txt"
    prompts.write_text("a car\n\na sign saying \"BAKERY\"\n")
    out = tmp_path / "out.jsonl"
    args = ["rewrite", "--prompts", str(prompts), "--out", str(out), "--model", str(tiny), "--device", "cpu",
            "--max-new-tokens", "8", "--retries", "0"]
    assert main(args) == 0
    rows = [json.loads(ln) for ln in out.read_text().splitlines()]
    assert [r["prompt"] for r in rows] == ["a car", 'a sign saying "BAKERY"']
    assert rows[1]["ok"] is False and rows[1]["attempts"] == 1 and "BAKERY" in rows[1]["error"]
    assert "1 rejected" in capsys.readouterr().out
    assert main(args + ["--strict"]) == 1
    assert main(["rewrite", "--prompts", str(prompts), "--out", str(out), "--language", "fr"]) == 2
    assert "rewrite.language" in capsys.readouterr().err
    # A prompts file that is not there, or not JSONL: one line, no traceback (a FileNotFoundError before).
    assert main(["rewrite", "--prompts", str(tmp_path / "none.txt"), "--out", str(out)]) == 2
    assert "error: --prompts: no file" in capsys.readouterr().err
    (tmp_path / "bad.jsonl").write_text("{not json\n")
    assert main(["rewrite", "--prompts", str(tmp_path / "bad.jsonl"), "--out", str(out)]) == 2
    assert "bad.jsonl:1: not JSON" in capsys.readouterr().err
