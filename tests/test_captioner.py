"""The captioner: prompts carry the OCR text, answers are cleaned, and the pass after clustering fills `caption` /
`caption_source` of the kept rows only, in place, and resumes. The model here is a tiny random-weight Qwen2-VL built
offline (tests/tiny_qwen2vl.py): plumbing only, its captions are noise."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pandas as pd
import pytest
import skimage.data
import yaml

from captioner.qwen2vl import Qwen2VLCaptioner, build_prompt, clean_caption, fit_frames
from curation.config import ConfigError, parse_config
from curation.typed import load_yaml_file
from conftest import DEMO_CONFIG, ROOT, run_pipeline_cli
from tiny_qwen2vl import build_tiny_qwen2vl


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory) -> Path:
    return build_tiny_qwen2vl(tmp_path_factory.mktemp("tiny") / "tiny-qwen2-vl")


def test_prompt_quotes_the_ocr_text():
    prompt, used = build_prompt("video", "BREAKING NEWS\n  今天的天气非常好 \n")
    assert used and 'Text visible on screen, read by OCR (it may contain mistakes): "BREAKING NEWS / 今天的天气非常好"' in prompt
    assert prompt.startswith("Describe this video clip")
    assert build_prompt("image", None) == (build_prompt("image", "")[0], False)
    assert build_prompt("image", "")[0].startswith("Describe this image")
    assert build_prompt("video", "SALE", use_ocr=False)[1] is False
    long, _ = build_prompt("video", 'say "x" ' * 100, max_ocr_chars=20)
    assert "say 'x' say 'x' say…" in long  # cut to 20 characters, double quotes kept out of the quoted span


def test_clean_caption():
    assert clean_caption("The video shows a red car driving along a coastal road.") == \
        "A red car driving along a coastal road."
    assert clean_caption("  In this clip, a  man\nwalks a dog. The camera follows him. It") == \
        "A man walks a dog. The camera follows him."
    assert clean_caption("this image depicts a bowl of soup") == "A bowl of soup"  # no finished sentence: kept whole
    assert clean_caption("A cat sleeps.") == "A cat sleeps."
    assert clean_caption("The video shows ") is None and clean_caption("   ") is None


def test_fit_frames_makes_qwen_sized_frames():
    frames = np.zeros((4, 272, 480, 3), np.uint8)
    out = fit_frames(frames, 336)
    assert out.shape[0] == 4 and out.shape[1] % 28 == 0 and out.shape[2] % 28 == 0
    assert abs(out.shape[1] - 336) <= 14 and abs(out.shape[2] / out.shape[1] - 480 / 272) < 0.1


def test_a_batch_of_videos_and_an_image(tiny_model):
    cap = Qwen2VLCaptioner(str(tiny_model), device="cpu", max_new_tokens=12, short_side=112)
    seen = []
    template = cap.processor.apply_chat_template
    cap.processor.apply_chat_template = lambda messages, **kw: seen.append(messages) or template(messages, **kw)
    pan = np.stack([np.roll(cv2.resize(skimage.data.chelsea(), (480, 272)), 8 * i, axis=1) for i in range(8)])
    items = [{"frames": pan, "media_type": "video", "ocr_text": "NEWS24"},
             {"frames": skimage.data.astronaut()[None], "media_type": "image", "ocr_text": None},
             {"frames": pan[:5], "media_type": "video", "ocr_text": ""}]  # an odd count is cut to an even one
    out = cap.caption(items)
    assert len(out) == 3
    assert [m[0]["content"][0]["type"] for m in seen] == ["video", "image", "video"]
    assert '"NEWS24"' in seen[0][0]["content"][1]["text"] and "OCR" not in seen[1][0]["content"][1]["text"]
    for (text, source), ocr in zip(out, (True, False, False)):
        assert source is None if text is None else source == "tiny-qwen2-vl" + ("+ocr" if ocr else "")
    assert any(text for text, _ in out)
    assert cap.caption(items) == out  # greedy: the same captions again


def test_config_checks():
    with pytest.raises(ConfigError, match="captioning.num_frames"):
        parse_config({"captioning": {"num_frames": 3}})
    with pytest.raises(ConfigError, match="captioning.model"):
        parse_config({"captioning": {"enabled": True, "model": "/no/such/folder"}})
    with pytest.raises(ConfigError, match="unknown config key captioning.prompt"):
        parse_config({"captioning": {"prompt": "x"}})
    assert parse_config({"captioning": {"enabled": True}}).captioning.model == "qwen2-vl-7b"


def _config(tmp_path: Path, model: Path) -> Path:
    cfg = load_yaml_file(DEMO_CONFIG)
    cfg["captioning"] = {"enabled": True, "model": str(model), "num_gpus": 0, "batch_size": 4, "max_new_tokens": 8,
                         "short_side": 112, "num_frames": 4}
    path = tmp_path / "caption.yaml"
    path.write_text(yaml.safe_dump(cfg, allow_unicode=True))
    return path


def test_pipeline_captions_the_kept_rows_and_resumes(tmp_path, sample_dir, tiny_model):
    files = ["videos/camera/pan_horizontal.mp4", "videos/text/subtitle_en_1.mp4", "videos/static/static_0.mp4",
             "images/photo_0.jpg", "broken/empty.mp4"]
    inputs = [sample_dir / f for f in files]
    out = tmp_path / "out"
    config = _config(tmp_path, tiny_model)
    proc = run_pipeline_cli(inputs, out, config=config)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-5000:]
    run = json.loads((out / "run.json").read_text())
    summary = run["captioning"]
    df = pd.read_parquet(out / "samples")
    kept = df[df["status"] == "kept"]
    assert len(kept) >= 3 and (df["status"] != "kept").sum() >= 2  # a static clip rejected, the empty file failed
    assert summary["to_caption"] == len(kept) and summary["captioned"] + summary["failed"] == len(kept), summary
    assert summary["captioned"] >= 1
    captioned = kept[kept["caption"].notna()]
    assert len(captioned) == summary["captioned"]
    assert all(s.startswith("tiny-qwen2-vl") for s in captioned["caption_source"])
    # A row's OCR text went into its prompt exactly when it had some: its source says so (`+ocr`).
    sub = kept[kept["source_uri"].str.endswith("subtitle_en_1.mp4")]
    assert len(sub) == 1 and sub["ocr_text"].iloc[0]
    for text, source in zip(captioned["ocr_text"], captioned["caption_source"]):
        has_text = isinstance(text, str) and bool(text.strip())
        assert source == "tiny-qwen2-vl" + ("+ocr" if has_text else ""), (text, source)
    assert any(s.endswith("+ocr") for s in captioned["caption_source"]) or sub["caption"].isna().all()
    assert df.loc[df["status"] != "kept", "caption"].isna().all()
    assert df.loc[df["status"] != "kept", "caption_source"].isna().all()
    # Stage mixes are written after captioning and carry the captions.
    stage = pd.concat([pd.read_parquet(p) for p in sorted((out / "stages").glob("*/part-*.parquet"))])
    merged = stage.merge(df[["sample_id", "caption"]], on="sample_id", suffixes=("", "_samples"))
    assert len(merged) and (merged["caption"].fillna("") == merged["caption_samples"].fillna("")).all()
    html = (out / "report.html").read_text()
    assert f"{summary['captioned']} of {len(kept)} rows captioned this run by tiny-qwen2-vl" in html
    assert html.count("caption: ") >= 1
    # `curation caption` on the same output has nothing left to caption (rows captioned already are skipped),
    # changes no caption and records its pass in run.json.
    proc = subprocess.run([sys.executable, "-m", "curation.cli", "caption", str(out), "--config", str(config)],
                          capture_output=True, text=True, timeout=600, cwd=ROOT,
                          env={k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"})
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-5000:]
    again = json.loads((out / "run.json").read_text())["captioning"]
    assert again["to_caption"] == summary["failed"] and again["captioned"] == 0, again
    df2 = pd.read_parquet(out / "samples").set_index("sample_id")
    for sid, text in zip(captioned["sample_id"], captioned["caption"]):
        assert df2.loc[sid, "caption"] == text


def test_demo_run_says_captioning_is_off(demo_output):
    out, _ = demo_output
    run = json.loads((Path(out) / "run.json").read_text())
    assert run["captioning"]["enabled"] is False and "off" in run["captioning"]["note"]
    assert pd.read_parquet(Path(out) / "samples")["caption"].isna().all()


def test_full_profile_needs_the_captioning_model(tmp_path, monkeypatch):
    """pretrain_mix.yaml captions with the registry's pinned Qwen2-VL; a run checks for it up front."""
    from curation import models
    from curation.config import load_config
    from curation.graph import plan

    cfg = load_config(DEMO_CONFIG.parent / "pretrain_mix.yaml")
    assert cfg.captioning.enabled and cfg.captioning.model == "qwen2-vl-7b"
    assert "qwen2-vl-7b" in plan(cfg).models
    monkeypatch.setenv("CURATION_MODEL_DIR", str(tmp_path))
    with pytest.raises(models.ModelNotFoundError, match="qwen2-vl-7b"):
        models.require(plan(cfg).models)


@pytest.mark.skipif(not __import__("torch").cuda.is_available(), reason="needs a CUDA GPU")
def test_gpu_bf16_batch(tiny_model):
    """The GPU path (bfloat16 weights, SDPA attention, inputs moved to the device): same plumbing as on CPU."""
    import torch

    cap = Qwen2VLCaptioner(str(tiny_model), device="cuda", dtype="bfloat16", max_new_tokens=12, short_side=224)
    assert next(cap.model.parameters()).dtype == torch.bfloat16
    pan = np.stack([np.roll(cv2.resize(skimage.data.chelsea(), (480, 272)), 8 * i, axis=1) for i in range(8)])
    out = cap.caption([{"frames": pan, "media_type": "video", "ocr_text": "NEWS24"}] * 4
                      + [{"frames": skimage.data.astronaut()[None], "media_type": "image", "ocr_text": None}])
    assert len(out) == 5 and out[0] == out[3]  # the same clip in one batch gets the same greedy caption
    assert all(src in (None, "tiny-qwen2-vl+ocr") for _, src in out[:4]) and out[4][1] in (None, "tiny-qwen2-vl")


def test_caption_command_needs_an_output(tmp_path, tiny_model):
    config = _config(tmp_path, tiny_model)
    proc = subprocess.run([sys.executable, "-m", "curation.cli", "caption", str(tmp_path / "none"), "--config",
                           str(config)], capture_output=True, text=True, timeout=300, cwd=ROOT,
                          env={k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"})
    assert proc.returncode == 2 and "no such folder" in proc.stderr and "Traceback" not in proc.stderr
