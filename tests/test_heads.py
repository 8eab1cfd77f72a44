"""Heads on CLIP embeddings: the LAION aesthetic state dict as published, linear heads save/load, the embedding
operator on real Ray (tiny random-weight tower: plumbing only, its scores mean nothing), `heads train`."""

from __future__ import annotations

import argparse
import json

import numpy as np
import pytest
import torch

from operators.heads import ClipHeads
from operators.models.heads import AESTHETIC_SHAPES, HeadSet, LinearHead, load_aesthetic, load_linear_head, \
    save_linear_head


def _published_like_state_dict(seed: int = 0) -> dict[str, torch.Tensor]:
    """A state dict with the key names and shapes of `sac+logos+ava1-l14-linearMSE.pth`."""
    g = torch.Generator().manual_seed(seed)
    return {k: torch.randn(*shape, generator=g) * 0.05 for k, shape in AESTHETIC_SHAPES.items()}


def test_aesthetic_loads_published_layout(tmp_path):
    sd = _published_like_state_dict()
    path = tmp_path / "sac+logos+ava1-l14-linearMSE.pth"
    torch.save(sd, path)
    model = load_aesthetic(path)
    x = torch.nn.functional.normalize(torch.randn(5, 768), dim=-1)
    # The published head is linear layers with no activations: compose them by hand.
    ref = x
    for i in (0, 2, 4, 6, 7):
        ref = ref @ sd[f"layers.{i}.weight"].T + sd[f"layers.{i}.bias"]
    with torch.no_grad():
        assert torch.allclose(model(x), ref, atol=1e-5)
    bad = dict(sd)
    bad["layers.1.weight"] = bad.pop("layers.2.weight")
    torch.save(bad, tmp_path / "bad.pth")
    with pytest.raises(ValueError, match="not an improved-aesthetic-predictor"):
        load_aesthetic(tmp_path / "bad.pth")


def test_linear_head_roundtrip_and_headset(tmp_path):
    rng = np.random.default_rng(0)
    head = LinearHead(weight=rng.normal(size=768).astype(np.float32), bias=0.3, meta={"head": "synthetic"})
    path = save_linear_head(tmp_path / "h.safetensors", head)
    back = load_linear_head(path)
    x = rng.normal(size=(6, 768)).astype(np.float32) * 10  # unnormalised, as UnivFD feeds it
    np.testing.assert_allclose(back.predict_proba(x), head.predict_proba(x), rtol=1e-6)
    assert back.meta["head"] == "synthetic" and back.normalize is False

    torch.save(_published_like_state_dict(), tmp_path / "aes.pth")
    hs = HeadSet(["aesthetic", "synthetic"], {"aesthetic": str(tmp_path / "aes.pth"), "synthetic": str(path)},
                 aesthetic_reduce="min")
    hs.load()
    clips = [x[:4], x[4:]]
    out = hs.score(clips)
    assert set(out[0]) == {"aesthetic_score", "synthetic_score"}
    np.testing.assert_allclose(out[1]["synthetic_score"], head.predict_proba(x[4:]).mean(), rtol=1e-6)
    per_frame = hs.score([x[i:i + 1] for i in range(4)])
    assert out[0]["aesthetic_score"] == pytest.approx(min(p["aesthetic_score"] for p in per_frame), rel=1e-5)


def test_gpu_side_preprocess_matches_open_clip_transform():
    import open_clip
    import skimage.data
    from PIL import Image

    from operators.models.clip import ClipBackbone

    img = np.ascontiguousarray(skimage.data.astronaut()[:320, :])  # 320×512, short side 320 → 224
    pre = open_clip.image_transform(224, is_train=False, mean=open_clip.OPENAI_DATASET_MEAN,
                                    std=open_clip.OPENAI_DATASET_STD)
    ref = pre(Image.fromarray(img)).numpy()
    bb = ClipBackbone(arch="tiny-test", device="cpu")
    bb.load()
    mine = bb.preprocess(img[None]).numpy()[0]
    assert np.abs(mine - ref).mean() < 0.01  # bicubic antialias in torch vs PIL: ~1 grey level at most


@pytest.fixture(scope="module")
def ray_local():
    import ray

    ray.init(num_cpus=2, include_dashboard=False, ignore_reinit_error=True, log_to_driver=False)
    yield ray
    ray.shutdown()


def test_embedding_operator_on_ray(ray_local, tmp_path):
    import ray

    from operators.clip_embedding import FRAME_EMBEDDINGS_COLUMN, ClipEmbedding

    rng = np.random.default_rng(0)
    head = LinearHead(weight=rng.normal(size=768).astype(np.float32), bias=0.0)
    save_linear_head(tmp_path / "synthetic.safetensors", head)
    torch.save(_published_like_state_dict(), tmp_path / "aes.pth")
    paths = {"aesthetic": str(tmp_path / "aes.pth"), "synthetic": str(tmp_path / "synthetic.safetensors")}
    items = []
    for i in range(5):
        k, (h, w) = (1, (300, 400)) if i == 3 else (4, (240, 320))
        frames = rng.integers(0, 255, size=(k, h, w, 3), dtype=np.uint8)
        items.append({"sample_id": f"s{i}", "status": "kept", "error": None, "frames": frames})
    items[4]["status"] = "failed"  # already failed upstream: skipped, not scored
    params = dict(arch="tiny-test", weights=None, allow_random_weights=True, heads=["aesthetic", "synthetic"],
                  head_paths=paths, keep_frame_embeddings=True, batch_images=3)
    op = ClipEmbedding(**params)
    assert set(op.produces) == {"embedding", "aesthetic_score", "synthetic_score", FRAME_EMBEDDINGS_COLUMN}
    ds = ray.data.from_items(items).map_batches(ClipEmbedding, fn_constructor_kwargs=params, batch_size=4,
                                                concurrency=1, batch_format="numpy")
    heads_params = dict(heads=["aesthetic", "synthetic"], head_paths=paths)
    ds = ds.map_batches(ClipHeads, fn_constructor_kwargs=heads_params, batch_size=4, concurrency=1,
                        batch_format="numpy")
    rows = {r["sample_id"]: r for r in ds.take_all()}
    for sid in ("s0", "s1", "s2", "s3"):
        r = rows[sid]
        assert r["status"] == "kept"
        emb = np.asarray(r["embedding"], dtype=np.float32)
        assert emb.shape == (768,) and abs(np.linalg.norm(emb) - 1) < 1e-4
        fe = np.asarray(r[FRAME_EMBEDDINGS_COLUMN])
        assert fe.shape == ((1, 768) if sid == "s3" else (4, 768))
        assert r["synthetic_score"] == pytest.approx(head.predict_proba(fe).mean(), rel=1e-4)
    # Ray's numpy batches turn a null column into NaN on its way through a later operator; the manifest writer
    # maps NaN back to null (told to the lead). Either way: no made-up value for a failed row.
    for col in ("embedding", "aesthetic_score", "synthetic_score"):
        v = rows["s4"][col]
        assert v is None or (np.isscalar(v) and np.isnan(v)), (col, v)


def test_heads_train_cli(tmp_path, capsys):
    import skimage.data
    from PIL import Image

    from curation.cli.heads import add_heads_parser

    rng = np.random.default_rng(0)
    photo = skimage.data.astronaut()
    (tmp_path / "real").mkdir()
    (tmp_path / "fake").mkdir()
    for i in range(8):
        y, x = rng.integers(0, 256, size=2)
        Image.fromarray(photo[y:y + 256, x:x + 256]).save(tmp_path / "real" / f"{i}.png")
        smooth = np.linspace(0, 255, 256)[None, :, None] * rng.uniform(0.2, 1, size=(1, 1, 3))
        Image.fromarray(np.broadcast_to(smooth, (256, 256, 3)).astype(np.uint8)).save(tmp_path / "fake" / f"{i}.jpg")
    parser = argparse.ArgumentParser()
    add_heads_parser(parser.add_subparsers())
    out = tmp_path / "head.safetensors"
    args = parser.parse_args(["heads", "train", "synthetic", "--real", str(tmp_path / "real"), "--fake",
                              str(tmp_path / "fake"), "--out", str(out), "--arch", "tiny-test", "--weights", "none",
                              "--allow-random-weights", "--device", "cpu"])
    assert args.func(args) == 0
    report = json.loads(capsys.readouterr().out)
    assert 0.0 <= report["heldout_average_precision"] <= 1.0 and report["n_heldout"] == 4
    head = load_linear_head(out)
    assert head.weight.shape == (768,) and head.meta["head"] == "synthetic"


def test_chunked_pipelined_embedding_matches_one_pass():
    from operators.models.clip import ClipBackbone

    bb = ClipBackbone(arch="tiny-test", device="cpu")
    bb.load()
    rng = np.random.default_rng(1)
    frames = [rng.integers(0, 255, size=(k, h, w, 3), dtype=np.uint8)
              for k, (h, w) in [(8, (320, 568)), (3, (568, 320)), (1, (300, 400)), (8, (320, 568))]]
    with torch.no_grad():
        ref = [bb.visual(bb.preprocess(f)).numpy() for f in frames]
    for batch_images, pad in ((5, False), (5, True), (8, False), (6, True), (256, True)):
        bb.set_batch_images(batch_images)
        bb.pad_batches = pad
        chunks = bb._chunks([len(f) for f in frames])
        assert sum(b - a for c in chunks for _, a, b in c) == 20
        if pad:  # a compiled tower only ever sees two batch shapes
            assert all(sum(b - a for _, a, b in c) <= batch_images for c in chunks)
        out = bb.embed(frames)
        for got, want in zip(out, ref):
            np.testing.assert_allclose(got, want, atol=1e-5)
