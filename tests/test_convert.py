"""Published filter weights: the checked pickle -> safetensors conversion (on files of the published formats made here
with random weights: the real ones cannot be downloaded in tests), `models pull` verifying and converting, the UnivFD
head and the LAION watermark detector loading the converted files, and the full profile turning them on."""

from __future__ import annotations

import dataclasses
import subprocess
from collections import OrderedDict

import numpy as np
import pytest
import torch

from curation import models
from operators.models.convert import ConversionError, convert_laion_watermark, convert_univfd, load_tensor_pickle


def _univfd_pth(path, seed=0):
    g = torch.Generator().manual_seed(seed)
    sd = OrderedDict(weight=torch.randn(1, 768, generator=g), bias=torch.randn(1, generator=g))
    torch.save(sd, path)
    return sd


class NotATensor:
    """Stands for code or a foreign object inside a pickle."""


def test_univfd_conversion_checks_and_loads(tmp_path):
    from operators.models.heads import load_linear_head

    sd = _univfd_pth(tmp_path / "fc_weights.pth")
    info = convert_univfd(tmp_path / "fc_weights.pth", tmp_path / "univfd_fc.safetensors")
    head = load_linear_head(tmp_path / "univfd_fc.safetensors")
    assert info["tensors"] == 2 and head.normalize is False and head.meta["converted_with"].endswith("=True)")
    np.testing.assert_array_equal(head.weight, sd["weight"].numpy()[0])
    assert head.bias == pytest.approx(float(sd["bias"][0]))

    torch.save({"weight": torch.zeros(1, 512), "bias": torch.zeros(1)}, tmp_path / "small.pth")
    torch.save({"weight": torch.zeros(1, 768), "bias": torch.zeros(1), "extra": torch.zeros(2)}, tmp_path / "x.pth")
    torch.save({"weight": torch.zeros(1, 768), "bias": NotATensor()}, tmp_path / "code.pth")
    with pytest.raises(ConversionError, match=r"shape .*'weight': \(\(1, 512\), \(1, 768\)\)"):
        convert_univfd(tmp_path / "small.pth", tmp_path / "o.safetensors")
    with pytest.raises(ConversionError, match="unexpected \\['extra'\\]"):
        convert_univfd(tmp_path / "x.pth", tmp_path / "o.safetensors")
    with pytest.raises(ConversionError, match="weights_only=True"):
        load_tensor_pickle(tmp_path / "code.pth")
    assert not (tmp_path / "o.safetensors").exists()


def test_pull_verifies_converts_and_the_head_scores(tmp_path, monkeypatch):
    """`pull` of a url_file entry: download, sha256 + git blob id check, conversion; runs resolve the safetensors."""
    from operators.models.heads import HeadSet

    src = tmp_path / "published" / "fc_weights.pth"
    src.parent.mkdir()
    sd = _univfd_pth(src, seed=1)
    blob = subprocess.run(["git", "hash-object", str(src)], capture_output=True, text=True, check=True).stdout.strip()
    assert models.git_blob_sha1(src) == blob
    spec = dataclasses.replace(models.REGISTRY["univfd-probe"], source=src.as_uri(),
                               sha256={"fc_weights.pth": models.sha256_file(src)},
                               size_bytes={"fc_weights.pth": src.stat().st_size},
                               git_blob_sha1={"fc_weights.pth": blob})
    monkeypatch.setitem(models.REGISTRY, "univfd-probe", spec)
    cache = tmp_path / "cache"
    got = models.pull(["univfd-probe"], cache)["univfd-probe"]
    assert got == cache / "univfd-probe" / "univfd_fc.safetensors" and got.is_file()
    assert models.resolve("univfd-probe", cache) == got

    heads = HeadSet(["univfd"], model_root=str(cache))
    heads.load()
    x = np.random.default_rng(0).normal(size=(3, 768)).astype(np.float32)
    want = 1 / (1 + np.exp(-(x @ sd["weight"].numpy()[0] + float(sd["bias"][0]))))
    assert heads.score([x])[0]["synthetic_score"] == pytest.approx(float(want.mean()), rel=1e-5)

    bad = dataclasses.replace(spec, git_blob_sha1={"fc_weights.pth": "0" * 40})
    monkeypatch.setitem(models.REGISTRY, "univfd-probe", bad)
    with pytest.raises(RuntimeError, match="git blob id"):
        models.pull(["univfd-probe"], tmp_path / "cache2")


@pytest.fixture(scope="module")
def laion_files(tmp_path_factory):
    """A watermark_model_v1.pt-format file (the EfficientNet-B3 state dict, random weights) and its conversion."""
    from operators.models.watermark_net import laion_watermark_model

    d = tmp_path_factory.mktemp("laion")
    torch.manual_seed(0)
    model = laion_watermark_model().eval()
    torch.save(model.state_dict(), d / "watermark_model_v1.pt")
    info = convert_laion_watermark(d / "watermark_model_v1.pt", d / "laion_watermark.safetensors")
    return d, model, info


@pytest.fixture()
def small_input(monkeypatch):
    """The detector at 64x64 instead of 256x256: the same code, 1/16 of the compute (tests share 2 busy cores)."""
    import operators.models.watermark_net as wn

    monkeypatch.setattr(wn, "INPUT_SIZE", 64)
    return 64


def test_laion_watermark_conversion_and_detector(laion_files, tmp_path, small_input):
    from operators.models.watermark_net import LaionWatermark

    d, model, info = laion_files
    assert info["tensors"] == len(model.state_dict())
    frames = np.random.default_rng(0).integers(0, 256, (2, 120, 160, 3), dtype=np.uint8)
    got = LaionWatermark(d / "laion_watermark.safetensors").predict(frames)
    x = torch.from_numpy(frames).permute(0, 3, 1, 2).float() / 255
    x = torch.nn.functional.interpolate(x, size=(small_input, small_input), mode="bilinear", antialias=True)
    mean, std = torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1), torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1)
    x = (x - mean) / std
    with torch.no_grad():
        want = torch.softmax(model(x), 1)[:, 0].numpy()
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-6)

    sd = model.state_dict()
    sd.pop("classifier.0.weight")
    torch.save(sd, tmp_path / "partial.pt")
    with pytest.raises(ConversionError, match="missing \\['classifier.0.weight'\\]"):
        convert_laion_watermark(tmp_path / "partial.pt", tmp_path / "o.safetensors")


def test_watermark_operator_combines_detector_and_overlay_by_max(laion_files, tmp_path, monkeypatch,
                                                                 small_input):
    from operators.watermark import WatermarkDetector

    d, _, _ = laion_files
    folder = tmp_path / "models" / "laion-watermark"
    folder.mkdir(parents=True)
    for f in ("watermark_model_v1.pt", "laion_watermark.safetensors"):
        (folder / f).symlink_to(d / f)
    monkeypatch.setenv(models.ENV_VAR, str(tmp_path / "models"))
    rng = np.random.default_rng(1)
    video = rng.integers(0, 256, (8, 96, 128, 3), dtype=np.uint8)
    image = rng.integers(0, 256, (1, 96, 128, 3), dtype=np.uint8)
    batch = {"sample_id": np.array(["v", "i"], dtype=object), "status": np.array(["kept", "kept"], dtype=object),
             "media_type": np.array(["video", "image"], dtype=object), "num_frames": np.array([72, 1]),
             "frames": np.array([video, image], dtype=object)}
    op = WatermarkDetector(detector="laion-watermark")
    assert op.models == ("laion-watermark",) and "watermark_detector_score" in op.produces
    out = op(dict(batch))
    plain = WatermarkDetector()(dict(batch))
    det = out["watermark_detector_score"]
    assert all(0 <= s <= 1 for s in det)
    assert out["watermark_score"][0] == pytest.approx(max(plain["watermark_score"][0], det[0]))
    assert plain["watermark_score"][1] is None and out["watermark_score"][1] == pytest.approx(det[1])


def test_full_profile_turns_the_published_filters_on_and_the_demo_does_not():
    from pathlib import Path

    from curation.catalog import config_models
    from curation.config import load_config

    configs = Path(__file__).resolve().parent.parent / "pipelines" / "configs"
    needed, _ = config_models(load_config(configs / "pretrain_mix.yaml"))
    assert {"univfd-probe", "laion-watermark", "clip-vit-l-14"} <= set(needed)
    demo, _ = config_models(load_config(configs / "demo.yaml"))
    assert not {"univfd-probe", "laion-watermark"} & set(demo)
