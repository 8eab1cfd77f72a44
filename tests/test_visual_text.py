"""Synthetic visual-text data: text, rendering, captions, the OCR gate, determinism, and the Ray pass."""

from __future__ import annotations

import json
import re

import numpy as np
import pandas as pd
import pytest

from captioner.visual_text import render as R
from captioner.visual_text.make import (OcrGate, VisualTextConfig, char_accuracy, load_config, parse_config,
                                        render_sample, sample_row)
from captioner.visual_text.text import language_of, make_text
from curation.config import ConfigError

FONTS = R.available_fonts()
HAVE_BOTH = {f.lang for f in FONTS} >= {"zh", "en"}
needs_fonts = pytest.mark.skipif(not HAVE_BOTH, reason="no Chinese or no Latin font installed (make setup)")


@pytest.fixture(scope="module")
def gate() -> OcrGate:
    """One PP-OCRv4 engine for the module."""
    return OcrGate()


def _quoted_in_order(caption: str, lines: list[str]) -> bool:
    pos = 0
    for line in lines:
        at = caption.find(f'"{line}"', pos)
        if at < 0:
            return False
        pos = at + len(line) + 2
    return True


def test_text_kinds_languages_and_determinism():
    for lang in ("zh", "en"):
        for kind in ("word", "phrase", "passage"):
            a = make_text(np.random.default_rng(5), lang, kind)
            assert a == make_text(np.random.default_rng(5), lang, kind)
            assert all(line.strip() for line in a)
            if kind == "passage":
                assert len(a) >= 2
            if kind != "word" or not re.fullmatch(r"[\d$¥.:%/月日]+", a[0]):
                assert language_of(" ".join(a)) == lang, a
    # Numbers and punctuation show up across draws.
    texts = ["".join(make_text(np.random.default_rng(i), "zh", "passage")) for i in range(40)]
    assert any(re.search(r"\d", t) for t in texts) and any(re.search("[，。！？：、]", t) for t in texts)


def test_char_accuracy():
    assert char_accuracy("你好，世界", "你好,世界") == 1.0  # full-width and ASCII comma are one character
    assert char_accuracy("OPEN 24", "OPEN24") == 1.0  # spaces do not count
    assert char_accuracy("abcd", "abed") == 0.75
    assert char_accuracy("abcd", "") == 0.0


@needs_fonts
def test_captions_quote_every_line_and_describe_the_look():
    cfg = VisualTextConfig()
    for i in range(24):
        _, row = render_sample(7, i, cfg, FONTS)
        lines = row["ocr_text"].split("\n")
        assert _quoted_in_order(row["caption"], lines), (row["ocr_text"], row["caption"])
        assert "\n" not in row["caption"]
        params = json.loads(row["render_params"])
        assert sum(len(b["lines"]) for b in params) == len(lines)
        for b in params:
            assert b["colour"] in row["caption"] and R.FONTS_BY_KEY[b["font"]].style in row["caption"]


@needs_fonts
def test_rendering_is_a_function_of_seed_and_index():
    cfg = VisualTextConfig()
    a, ra = render_sample(3, 11, cfg, FONTS)
    b, rb = render_sample(3, 11, cfg, FONTS)
    c, rc = render_sample(4, 11, cfg, FONTS)
    assert np.array_equal(a, b) and ra == rb
    assert ra != rc


@needs_fonts
def test_ocr_gate_keeps_a_clean_render_and_drops_an_unreadable_one(tmp_path, gate):
    clean = VisualTextConfig(backgrounds={"white": 1}, blocks=(1,), kinds={"phrase": 1}, sizes=(48,), p_rotate=0,
                             p_perspective=0, zh_share=0.0, min_char_accuracy=0.9)
    row = sample_row(0, 0, clean, FONTS, tmp_path, gate)
    assert row["status"] == "kept" and row["ocr_char_accuracy"] >= 0.9, row
    # Deliberately unreadable: 4 px characters (min_size lets the fit go that small), then the same gate.
    tiny = VisualTextConfig(backgrounds={"white": 1}, blocks=(1,), kinds={"phrase": 1}, sizes=(4,), min_size=4,
                            p_rotate=0, p_perspective=0, zh_share=0.0, min_char_accuracy=0.9)
    bad = sample_row(0, 0, tiny, FONTS, tmp_path, gate)
    assert bad["status"] == "rejected" and bad["reject_reasons"] == ["ocr_char_accuracy"], bad
    assert bad["ocr_char_accuracy"] < 0.9
    assert (tmp_path / f"{bad['sample_id']}.png").exists()  # kept to look at


def test_config_errors(tmp_path):
    with pytest.raises(ConfigError, match="zh_share"):
        parse_config({"visual_text": {"zh_share": 1.5}})
    with pytest.raises(ConfigError, match="unknown config key visual_text.colour"):
        parse_config({"visual_text": {"colour": "red"}})
    with pytest.raises(ConfigError, match="kinds"):
        parse_config({"kinds": {"poem": 1}})
    with pytest.raises(ConfigError, match="fonts"):
        parse_config({"fonts": ["comic-sans"]})
    with pytest.raises(ConfigError, match="stage_name"):
        parse_config({"stage_name": "../x"})
    p = tmp_path / "vt.yaml"
    p.write_text("visual_text:\n  zh_share: 0.25\n  sizes: [32, 48]\n")
    cfg = load_config(p)
    assert cfg.zh_share == 0.25 and cfg.sizes == (32, 48)


@pytest.mark.slow
@needs_fonts
def test_ray_pass_writes_manifest_stage_and_counts(tmp_path):
    """A real local Ray run: rows in the manifest schema, shares of Chinese and English as configured, captions
    quoting the text, every drop counted, the same seed giving the same rows."""
    import ray

    from captioner.visual_text.make import make_visual_text
    from curation.schema import base_schema

    cfg = VisualTextConfig(zh_share=0.5, batch_size=6, concurrency=1, canvases=((384, 288),), sizes=(28, 40),
                           min_char_accuracy=0.9, exclude_words=("the", "中国"))
    ray.init(num_cpus=2, include_dashboard=False)
    try:
        s1 = make_visual_text(tmp_path / "a", 24, seed=1, cfg=cfg)
        s2 = make_visual_text(tmp_path / "b", 24, seed=1, cfg=cfg)
    finally:
        ray.shutdown()
    rows = pd.read_parquet(tmp_path / "a" / "samples")
    assert len(rows) == 24 and set(base_schema().names) <= set(rows.columns)
    assert set(rows["media_type"]) == {"image"} and set(rows["caption_source"]) == {"synthetic_text"}
    # Configured share 0.5 of 24 draws: a binomial draw, far from all-one-language.
    zh = int((rows["render_lang"] == "zh").sum())
    assert 6 <= zh <= 18, zh
    for text, cap in zip(rows["ocr_text"], rows["caption"]):
        assert _quoted_in_order(cap, text.split("\n"))
    for uri in rows["source_uri"]:
        assert uri.endswith(".png") and (tmp_path / "a" / "images" / uri.rsplit("/", 1)[1]).exists()
    # Counted, never silent: kept + dropped + failed = n, also per font.
    assert s1["kept"] + s1["dropped_ocr"] + s1["failed"] == 24 and s1["failed"] == 0
    assert s1["dropped_ocr"] == int((rows["status"] == "rejected").sum())
    assert sum(v["rendered"] for v in s1["per_font"].values()) >= s1["rendered"]
    run = json.loads((tmp_path / "a" / "run.json").read_text())
    assert run["kept"] == s1["kept"] and set(run["per_size"]) <= {">=28px", ">=40px", ">=18px"}
    # Excluded terms reach the workers, and run.json records how many and their hash, not the words.
    assert run["config"]["exclude_words"]["terms"] == 2 and len(run["config"]["exclude_words"]["sha256"]) == 64
    assert not any("中国" in t or "the" in t.lower().split() for t in rows["ocr_text"])
    for lang, acc in s1["mean_char_accuracy_kept"].items():
        assert acc >= 0.95, (lang, acc)
    stage = pd.read_parquet(tmp_path / "a" / "stages" / "s9_visual_text")
    assert len(stage) == s1["kept"] and set(stage["status"]) <= {"kept"} and "weight" in stage
    # Determinism per seed: the same rows and the same image bytes.
    rows_b = pd.read_parquet(tmp_path / "b" / "samples")
    cols = [c for c in rows.columns if c not in ("source_uri",)]
    pd.testing.assert_frame_equal(rows[cols], rows_b[cols])
    a_png = (tmp_path / "a" / "images" / f"{rows['sample_id'][0]}.png").read_bytes()
    assert a_png == (tmp_path / "b" / "images" / f"{rows['sample_id'][0]}.png").read_bytes()
    assert s2["kept"] == s1["kept"]


@needs_fonts
def test_stage_weight_gives_the_configured_share(tmp_path):
    from captioner.visual_text.make import stage_weight

    other = tmp_path / "stages" / "s1"
    other.mkdir(parents=True)
    pd.DataFrame({"weight": [1.0] * 90}).to_parquet(other / "part-0.parquet")
    cfg = VisualTextConfig(stage_share=0.1, mix_with=str(tmp_path / "stages"))
    w, total = stage_weight(cfg, 30)
    assert total == 90 and abs(30 * w / (30 * w + 90) - 0.1) < 1e-12


@needs_fonts
def test_a_failed_render_is_a_failed_row_in_the_manifest(tmp_path):
    """A render that cannot fit any text is a `failed` row with the reason, written beside good rows."""
    import pyarrow as pa

    from captioner.visual_text.make import _table

    good = sample_row(0, 0, VisualTextConfig(), FONTS, tmp_path, None)
    bad = sample_row(0, 0, VisualTextConfig(canvases=((64, 64),), sizes=(60,), min_size=60), FONTS, tmp_path, None)
    assert good["status"] == "kept" and bad["status"] == "failed" and "no text fits" in bad["error"]
    table = _table(pd.DataFrame([good, bad]))
    assert table.num_rows == 2 and table.schema.field("width").type == pa.int64()
    assert table.column("status").to_pylist() == ["kept", "failed"]


def test_cli_refuses_an_out_that_is_a_file_before_ray_starts(tmp_path, capsys):
    from curation.cli import main

    f = tmp_path / "file"
    f.write_text("x")
    assert main(["visual-text", "make", str(f), "--n", "2"]) == 2
    assert "a file, not a folder" in capsys.readouterr().err
    bad = tmp_path / "bad.yaml"
    bad.write_text("visual_text:\n  zh_share: 2\n")
    assert main(["visual-text", "make", str(tmp_path / "o"), "--n", "2", "--config", str(bad)]) == 2
    assert "zh_share" in capsys.readouterr().err
    import ray

    try:
        assert main(["visual-text", "make", str(tmp_path / "o"), "--n", "0"]) == 2
        assert "--n: expected at least 1 sample, got 0" in capsys.readouterr().err
        assert not ray.is_initialized()  # refused before a local Ray was started for nothing
    finally:
        ray.shutdown()


@needs_fonts
@pytest.mark.parametrize("share", [0.3, 0.8])
def test_languages_come_in_the_configured_shares(share):
    cfg = VisualTextConfig(zh_share=share, canvases=((256, 192),), sizes=(24,))
    rows = [render_sample(2, i, cfg, FONTS)[1] for i in range(120)]
    got = sum(r["render_lang"] == "zh" for r in rows) / len(rows)
    assert abs(got - share) < 0.1, got  # binomial sd at n=120 is <= 0.046
    for r in rows:  # the rendered text is in the sample's language
        assert language_of(r["ocr_text"]) == r["render_lang"] or not re.search(r"[^\W\d_]", r["ocr_text"])


def test_excluded_terms_never_reach_the_vocabulary_or_a_render(tmp_path):
    """`exclude_words_file` + `exclude_words`: English words equal to a term (any case) and Chinese words containing
    one leave the vocabulary, the next words take their places, and no render shows them."""
    from captioner.visual_text.text import vocabulary

    words = tmp_path / "blocked.txt"
    words.write_text("# our list\nThe\n\npeople\n中国\n", encoding="utf-8")
    cfg = parse_config({"exclude_words_file": str(words), "exclude_words": ["Time"]})
    assert cfg.exclude_words == ("people", "the", "time", "中国")
    terms = frozenset(cfg.exclude_words)
    en, zh = vocabulary("en", 2000), vocabulary("zh", 2000)
    assert {"the", "people", "time"} <= set(en) and any("中国" in w for w in zh)  # there to be removed
    en_x, zh_x = vocabulary("en", 2000, terms), vocabulary("zh", 2000, terms)
    assert len(en_x) == len(en) == 2000 and len(zh_x) == len(zh) == 2000
    assert not {"the", "people", "time"} & set(en_x) and not any("中国" in w for w in zh_x)
    assert set(en) - set(en_x) == {"the", "people", "time"}  # nothing else removed
    small = VisualTextConfig(vocab_size=30, exclude_words=cfg.exclude_words, canvases=((384, 288),))
    for i in range(40):
        text = render_sample(5, i, small, FONTS)[1]["ocr_text"]
        assert "中国" not in text and not {"the", "people", "time"} & set(re.findall(r"[a-z]+", text.lower()))


def test_an_unreadable_word_list_is_a_start_up_error(tmp_path):
    with pytest.raises(ConfigError, match="visual_text.exclude_words_file: cannot read the word list"):
        parse_config({"exclude_words_file": str(tmp_path / "missing.txt")})
    (tmp_path / "latin1.txt").write_bytes("caf\xe9\n".encode("latin-1"))
    with pytest.raises(ConfigError, match="not UTF-8"):
        parse_config({"exclude_words_file": str(tmp_path / "latin1.txt")})
