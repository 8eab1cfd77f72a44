"""trainer.prepare: curated stages -> latent + text shards (real local Ray, real Parquet, real decoders), the
LatentIndex reader, bucket assignment, caption fallback, and the two text encoders."""

from __future__ import annotations

import json
import os
import pathlib

import av
import numpy as np
import pandas as pd
import pytest
import torch

from trainer import prepare as prep
from trainer.components.config import ConfigError
from trainer.data.buckets import Bucket, StageBuckets, assign, stage_buckets, stage_sizes
from trainer.data.clips import read_row_frames, resize_crop
from trainer.data.latents import LatentIndex, LatentIndexError, ShardError, read_index

ROOT = pathlib.Path(__file__).resolve().parents[1]


# ----- inputs ----------------------------------------------------------------------------------------------------


def _write_video(path: pathlib.Path, frames: np.ndarray, fps: int = 8) -> None:
    with av.open(str(path), "w") as c:
        s = c.add_stream("libx264", rate=fps, options={"crf": "10"})
        s.width, s.height, s.pix_fmt = frames.shape[2], frames.shape[1], "yuv420p"
        for f in frames:
            for p in s.encode(av.VideoFrame.from_ndarray(np.ascontiguousarray(f), format="rgb24")):
                c.mux(p)
        for p in s.encode():
            c.mux(p)


def _pan(name: str, h: int, w: int, n: int) -> np.ndarray:
    from skimage import data, transform

    img = getattr(data, name)()
    img = (transform.resize(img, (h * 2, w * 2), anti_aliasing=True) * 255).astype(np.uint8)
    return np.stack([img[h // 2 : h // 2 + h, 3 * t : 3 * t + w] for t in range(n)])


def _row(sid, path, media, n, w, h, caption=None, source=None, **kw) -> dict:
    return dict(sample_id=sid, source_uri=str(path), media_type=media, start_frame=0 if media == "video" else None,
                end_frame=n if media == "video" else None, fps=8.0 if media == "video" else None,
                num_frames=n, duration_s=n / 8 if media == "video" else None, width=w, height=h, rotation=0,
                status="kept", weight=1.0, cluster_id=kw.pop("cluster_id", 0), caption=caption,
                caption_source=source, motion_tier=kw.pop("motion_tier", None), camera_motion=None,
                object_motion=None, ocr_text=None, **kw)


def _stages(tmp: pathlib.Path) -> pathlib.Path:
    """Two stages over real media: good clips, an image, a broken file, an empty caption, a clip too short."""
    from PIL import Image

    media = tmp / "media"
    media.mkdir(parents=True)
    _write_video(media / "astronaut.mp4", _pan("astronaut", 32, 48, 12))
    _write_video(media / "coffee.mp4", _pan("coffee", 48, 32, 10))  # portrait
    _write_video(media / "short.mp4", _pan("chelsea", 32, 32, 3))
    (media / "broken.mp4").write_bytes(b"\x00\x00\x00\x18ftypisom" + os.urandom(3000))
    Image.fromarray(_pan("chelsea", 40, 40, 1)[0]).save(media / "cat.png")
    a = [
        _row("astro", media / "astronaut.mp4", "video", 12, 48, 32, "An astronaut in a white suit.", "tiny-cap"),
        _row("coffee", media / "coffee.mp4", "video", 10, 32, 48, "A cup of coffee, seen from above.", "tiny-cap"),
        _row("cat", media / "cat.png", "image", 1, 40, 40, "A cat looks at the camera.", "tiny-cap"),
        _row("broken", media / "broken.mp4", "video", 12, 48, 32, "A clip that will not decode.", "tiny-cap"),
        _row("nocap", media / "astronaut.mp4", "video", 12, 48, 32, "   ", None),
        _row("short", media / "short.mp4", "video", 3, 32, 32, "Too short for a bucket.", "tiny-cap"),
    ]
    b = [dict(a[0], weight=2.0), dict(a[1], weight=0.5), dict(a[5])]
    out = tmp / "curated" / "stages"
    for name, rows in (("s1_mixed", a), ("s2_video", b)):
        d = out / name
        d.mkdir(parents=True)
        pd.DataFrame(rows).to_parquet(d / "part-00000.parquet")
    return out


@pytest.fixture(scope="module")
def tiny_text(tmp_path_factory) -> pathlib.Path:
    from tiny_umt5 import build_tiny_umt5

    return build_tiny_umt5(tmp_path_factory.mktemp("umt5"))


def _config(tmp: pathlib.Path, text_model: pathlib.Path, **top) -> prep.PrepareConfig:
    data = {
        "stages": [
            {"name": "s1_mixed", "resolution": 32, "aspect_ratios": [1.0, 1.75], "frames": [1, 5, 9]},
            {"name": "s2_video", "resolution": 32, "aspect_ratios": [1.0, 1.75], "frames": [5, 9], "fps": 4},
        ],
        "vae": {"preset": "tiny", "seed": 3},
        "text_encoder": {"kind": "umt5", "model": str(text_model), "max_tokens": 64},
        "caption_fallback": False,
        "compute": {"batch_size": 4, "vae_batch": 2, "decode_batch_size": 2, "num_cpus": 1, "concurrency": 1},
    }
    data.update(top)
    path = tmp / "prepare.yaml"
    import yaml

    path.write_text(yaml.safe_dump(data))
    return prep.load_config(str(path))


@pytest.fixture(scope="module")
def ray_local():
    import ray

    ray.init(num_cpus=2, include_dashboard=False, ignore_reinit_error=True, log_to_driver=False)
    yield ray
    ray.shutdown()


@pytest.fixture(scope="module")
def prepared(tmp_path_factory, tiny_text, ray_local):
    """One prepare run over the stages above: (stages dir, latents dir, config, prepare.json)."""
    tmp = tmp_path_factory.mktemp("prep")
    stages = _stages(tmp)
    cfg = _config(tmp, tiny_text)
    out = tmp / "latents"
    meta = prep.prepare(stages, out, cfg)
    return stages, out, cfg, meta


# ----- the pass ---------------------------------------------------------------------------------------------------


@pytest.mark.slow  # one real prepare pass on a local Ray (module fixture), about a minute
def test_index_accounts_for_every_stage_row(prepared):
    stages, out, cfg, meta = prepared
    idx = read_index(out)
    stage_rows = sum(len(pd.read_parquet(p)) for p in stages.glob("*/part-*.parquet"))
    assert len(idx) == stage_rows == 9 and meta["counts"]["stage_rows"] == 9
    assert meta["counts"]["ok"] + meta["counts"]["failed"] == stage_rows
    st = idx.set_index(["stage", "sample_id"])
    ok = {k for k, s in st["status"].items() if s == "ok"}
    assert ok == {("s1_mixed", "astro"), ("s1_mixed", "coffee"), ("s1_mixed", "cat"), ("s1_mixed", "short"),
                  ("s2_video", "astro"), ("s2_video", "coffee")}
    assert st.loc[("s1_mixed", "broken"), "error"].startswith("decode: ")
    assert st.loc[("s1_mixed", "nocap"), "error"].startswith("empty caption")
    assert st.loc[("s2_video", "short"), "error"].startswith("no bucket: clip has 3 frames")
    assert st["shard"].isna().tolist() == (st["status"] != "ok").tolist()
    # Buckets: nearest aspect ratio, largest frame count the clip fills (stride 2 at fps 4 in s2).
    assert st.loc[("s1_mixed", "astro"), "bucket"] == "9x32x48"
    assert st.loc[("s1_mixed", "coffee"), "bucket"] == "9x48x32"
    assert st.loc[("s1_mixed", "cat"), "bucket"] == "1x32x32"
    assert st.loc[("s1_mixed", "short"), "bucket"] == "1x32x32"  # a 3-frame clip still makes a 1-frame sample
    assert st.loc[("s2_video", "astro"), "bucket"] == "5x32x48"
    assert st.loc[("s2_video", "astro"), "weight"] == 2.0 and st.loc[("s2_video", "coffee"), "weight"] == 0.5
    assert st.loc[("s1_mixed", "astro"), "caption_source"] == "tiny-cap"
    c = meta["counts"]["stages"]
    assert c["s1_mixed"] == {"rows": 6, "ok": 4, "failed": 2, "buckets": {
        "9x32x48": {"ok": 1, "failed": 2}, "9x48x32": {"ok": 1, "failed": 0}, "1x32x32": {"ok": 2, "failed": 0}}}
    assert c["s2_video"]["ok"] == 2 and c["s2_video"]["failed"] == 1
    assert meta["vae"]["random_init"] and "RANDOM-INIT" in meta["vae"]["note"]
    assert meta["counts"]["max_text_tokens"] == idx["text_tokens"].max() <= meta["text_len"] == 64
    assert json.loads((out / "prepare.json").read_text())["status"] == "complete"
    # Decode runs in CPU tasks of its own, next to the encoder actor (fused, the actor would decode serially).
    assert "MapBatches(_decode)" in meta["ray_data_stats"]
    assert "_decode)->MapBatches(_Encode" not in meta["ray_data_stats"]


@pytest.mark.slow  # one real prepare pass on a local Ray (module fixture), about a minute
def test_latents_match_a_direct_encode_and_decode_to_the_bucket(prepared):
    stages, out, cfg, meta = prepared
    index = LatentIndex.open(out)
    assert index.text_dim == meta["text_dim"] == 32 and len(index.rows) == 6 and len(index.failed) == 3
    vae = prep.build_vae(cfg.vae, out / "vae.safetensors")
    rows = pd.read_parquet(stages / "s1_mixed").set_index("sample_id")
    s1 = index.rows[index.rows["stage"] == "s1_mixed"].set_index("sample_id")
    for sid in ("astro", "cat"):
        lat, txt = index.load([sid])[0] if sid == "cat" else index.load([sid], stage="s1_mixed")[0]
        b = Bucket.parse(s1.loc[sid, "bucket"])
        assert list(lat.shape) == list(s1.loc[sid, "latent_shape"]) == [4, 1 + (b.frames - 1) // 4, b.height // 8,
                                                                        b.width // 8]
        assert txt.shape == (s1.loc[sid, "text_tokens"], 32) and txt.dtype == torch.float32
        # The stored latent is the normalised posterior mean of the bucket's centred crop, decoded by curation.
        row = dict(rows.loc[sid], sample_id=sid)
        a = assign(row, cfg.stages[0])
        pix = resize_crop(read_row_frames(row, list(a.indices), b.height, b.width), b.height, b.width, None)
        x = torch.from_numpy(np.ascontiguousarray(pix)).permute(3, 0, 1, 2)[None].float() / 127.5 - 1
        torch.testing.assert_close(vae.encode(x)[0], lat, rtol=1e-4, atol=1e-4)
        video = vae.decode(lat[None])
        assert video.shape == (1, 3, b.frames, b.height, b.width)
    # A row in two stages has one sample per stage, each in its own bucket: ask by stage or (stage, sample_id).
    with pytest.raises(KeyError, match="several stages"):
        index.load(["astro"])
    (a1, _), (a2, _) = index.load([("s1_mixed", "astro"), ("s2_video", "astro")])
    assert a1.shape[1] == 3 and a2.shape[1] == 2


@pytest.mark.slow  # one real prepare pass on a local Ray (module fixture), about a minute
def test_resume_writes_nothing_new(prepared):
    stages, out, cfg, meta = prepared
    before = sorted(str(p.relative_to(out)) for p in out.rglob("*") if p.is_file() and p.name != "prepare.json")
    again = prep.prepare(stages, out, cfg)
    after = sorted(str(p.relative_to(out)) for p in out.rglob("*") if p.is_file() and p.name != "prepare.json")
    assert after == before
    assert again["this_run"]["rows_processed"] == 0 and again["this_run"]["rows_skipped_as_done"] == 9
    assert again["counts"] == meta["counts"] and len(again["runs"]) == 2


@pytest.mark.slow  # one real prepare pass on a local Ray (module fixture), about a minute
def test_other_tensor_settings_refuse_the_folder(prepared, tiny_text, tmp_path):
    stages, out, cfg, _ = prepared
    other = _config(tmp_path, tiny_text, storage_dtype="bfloat16")
    with pytest.raises(RuntimeError, match="different VAE, text encoder, buckets"):
        prep.prepare(stages, out, other)


@pytest.mark.slow  # one real prepare pass on a local Ray (module fixture), about a minute
def test_missing_or_corrupt_shard_names_it(prepared, tmp_path):
    import shutil

    _, out, _, _ = prepared
    copy = tmp_path / "latents"
    shutil.copytree(out, copy)
    index = LatentIndex.open(copy)
    row = index.rows[index.rows["sample_id"] == "cat"].iloc[0]
    path = copy / row["shard"]
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])  # truncated
    with pytest.raises(ShardError, match=f"{path}.*sample cat"):
        index.load(["cat"])
    path.write_bytes(b"\xff" * 64)  # garbage header
    with pytest.raises(ShardError, match=str(path)):
        index.load(["cat"])
    path.unlink()
    with pytest.raises(ShardError, match=f"shard {path} is missing \\(sample cat\\)"):
        index.load(["cat"])
    with pytest.raises(LatentIndexError, match="no prepare.json"):
        LatentIndex.open(tmp_path)


@pytest.mark.slow  # one real prepare pass on a local Ray (module fixture), about a minute
def test_cli_summary_and_config_errors(prepared, tmp_path, capsys):
    stages, out, cfg, _ = prepared
    bad = tmp_path / "bad.yaml"
    bad.write_text("stages: [{name: s, resolution: 32, frames: [4]}]\n")
    assert prep.main(["--stages", str(stages), "--out", str(tmp_path / "x"), "--config", str(bad)]) == 2
    assert "frames must be 1 + 4k" in capsys.readouterr().err
    good = ROOT / "trainer" / "configs" / "prepare_demo.yaml"
    assert prep.main(["--stages", str(stages), "--out", str(tmp_path / "x"), "--config", str(good),
                      "--set", "compute.batch_sizee=3"]) == 2
    assert "unknown config key compute.batch_sizee" in capsys.readouterr().err
    assert prep.main(["--stages", str(stages), "--out", str(tmp_path / "x"), "--config", str(good)]) == 1
    assert "stage 's1_image_256': no folder" in capsys.readouterr().err


@pytest.mark.slow  # a second prepare pass, as a user runs it: its own process and its own local Ray
def test_command_line_run_with_caption_fallback(prepared, tiny_text, tmp_path):
    import subprocess
    import sys

    import yaml

    stages, _, cfg, _ = prepared
    config = tmp_path / "fallback.yaml"
    data = {"stages": [{"name": "s1_mixed", "resolution": 32, "aspect_ratios": [1.0, 1.75], "frames": [1, 5, 9]}],
            "vae": {"preset": "tiny"}, "caption_fallback": True,
            "text_encoder": {"kind": "umt5", "model": str(tiny_text), "max_tokens": 64}}
    config.write_text(yaml.safe_dump(data))
    out = tmp_path / "latents"
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT), env.get("PYTHONPATH", "")])
    proc = subprocess.run([sys.executable, "-m", "trainer.prepare", "--stages", str(stages), "--out", str(out),
                           "--config", str(config)], capture_output=True, text=True, timeout=600, cwd=ROOT, env=env)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-4000:]
    assert "s1_mixed: 6 rows, 5 ok, 1 failed" in proc.stdout and "RANDOM-INIT VAE" in proc.stdout
    # Logged to a file (stderr is not a terminal): Ray's known noise line and colour codes are filtered out, as in
    # curation runs (curation/logfilter.py).
    assert "has constructor arguments in the object store" not in proc.stderr and "\x1b[" not in proc.stderr
    idx = read_index(out).set_index("sample_id")
    # The row without a caption now trains on one built from its fields; real captions are kept.
    assert idx.loc["nocap", "status"] == "ok" and idx.loc["nocap", "caption_source"] == "fallback:fields"
    assert idx.loc["nocap", "caption"].startswith("A landscape video clip of 2 seconds")
    assert idx.loc["astro", "caption_source"] == "tiny-cap" and idx.loc["broken", "status"] == "failed"


# ----- pure parts -------------------------------------------------------------------------------------------------


def test_bucket_sizes_and_assignment():
    st = StageBuckets(name="s", resolution=256, aspect_ratios=[1.0, 1.29, 1.75], frames=[1, 17, 33], fps=16)
    assert stage_sizes(st) == [(256, 256), (224, 288), (288, 224), (192, 336), (336, 192)]
    assert len(stage_buckets(st)) == 15 and Bucket.parse("17x256x448") == Bucket(17, 256, 448)
    video = dict(media_type="video", width=1920, height=1080, start_frame=100, end_frame=200, fps=30.0)
    a = assign(video, st)  # stride 2 at 16 fps from 30: 33 frames need 65 source frames, 100 are there
    assert a.bucket == Bucket(33, 192, 336) and len(a.indices) == 33
    assert a.indices[0] == 100 + (100 - 65) // 2 and a.indices[1] - a.indices[0] == 2 and a.indices[-1] < 200
    assert assign(dict(video, end_frame=140), st).bucket.frames == 17
    assert assign(dict(video, width=1080, height=1920), st).bucket == Bucket(33, 336, 192)
    assert assign(dict(video, width=1000, height=1000), st).bucket.height == 256
    assert assign(dict(video, width=4000, height=1000), st).bucket == Bucket(33, 192, 336)  # nearest in log ratio
    assert assign(dict(media_type="image", width=640, height=480), st).bucket == Bucket(1, 224, 288)
    assert assign(dict(video, end_frame=110), st).bucket.frames == 1  # 10 frames: a still of a short clip
    vid_only = StageBuckets(name="v", resolution=256, frames=[17, 33], fps=16)
    assert "smallest bucket of stage v needs 33" in assign(dict(video, end_frame=110), vid_only).error
    assert "no 1-frame bucket" in assign(dict(media_type="image", width=64, height=64), vid_only).error
    assert "no usable size" in assign(dict(video, width=None), st).error
    explicit = StageBuckets(name="e", sizes=[[480, 832], [832, 480]], frames=[81])
    assert assign(dict(video, end_frame=190, fps=16.0), explicit).bucket == Bucket(81, 480, 832)
    for bad in (dict(frames=[4]), dict(aspect_ratios=[0.5]), dict(sizes=[[100, 100]], resolution=None),
                dict(sizes=[[96, 96]])):
        with pytest.raises(ValueError):
            StageBuckets(**{"name": "b", "resolution": 256, **bad})


def test_captions_own_fallback_or_error():
    row = dict(media_type="video", width=480, height=272, duration_s=3.2, motion_tier="camera_driven",
               camera_motion=0.05, object_motion=0.001, ocr_text="BREAKING  NEWS\n24", caption=None)
    cap, src, err = prep.resolve_caption(row, fallback=True)
    assert src == "fallback:fields" and err is None
    assert cap == ('A landscape video clip of 3 seconds with camera driven motion; the camera moves and the scene '
                   'is still; on-screen text: "BREAKING NEWS 24".')
    assert prep.fallback_caption(dict(media_type="image", width=300, height=300)) == "A square photo."
    assert prep.resolve_caption(dict(row, caption="A dog.", caption_source="qwen2-vl-7b"), True) == \
        ("A dog.", "qwen2-vl-7b", None)
    cap, src, err = prep.resolve_caption(dict(row, caption=""), fallback=False)
    assert cap is None and err.startswith("empty caption")


def test_rows_reach_arrow_with_their_types():
    """Missing values of pandas' str columns are NaN (a float): left so, Arrow typed `motion_tier` as double and Ray
    fell back to pickling the column. The pass hands Ray None instead."""
    import pyarrow as pa

    df = pd.DataFrame({"motion_tier": pd.array(["optimal", None], dtype="str"), "fps": [8.0, None],
                       "cluster_id": pd.array([1, None], dtype="Int64"), "indices": [[0, 1], [0]]})
    t = pa.Table.from_pylist(prep._records(df))
    assert t.schema.field("motion_tier").type == pa.string() and t.column("motion_tier").null_count == 1
    assert t.schema.field("cluster_id").type == pa.int64() and t.column("fps").null_count == 1


def test_config_validation(tmp_path):
    good = ROOT / "trainer" / "configs" / "prepare_demo.yaml"
    cfg = prep.load_config(str(good), ["compute.batch_size=3", "stages.1.fps=4", "vae.weights=x.pth"])
    assert cfg.compute.batch_size == 3 and cfg.stages[1].fps == 4.0 and cfg.vae.weights == "x.pth"
    with pytest.raises(ConfigError, match="text_encoder.kind"):
        prep.load_config(str(good), ["text_encoder.kind=clip"])
    with pytest.raises(ConfigError, match="vae.chunk_frames"):
        prep.load_config(str(good), ["vae.chunk_frames=3"])
    with pytest.raises(ConfigError, match="stages.9 is not an index of a list of"):
        prep.load_config(str(good), ["stages.9.fps=4"])
    with pytest.raises(ConfigError, match="vae.overrides.z_dim: expected an integer, got 'big'"):
        prep.load_config(str(good), ["vae.overrides.z_dim=big"])
    full = prep.load_config(str(ROOT / "trainer" / "configs" / "prepare_wan.yaml"))
    assert full.text_encoder.kind == "umt5" and not full.caption_fallback and full.compute.num_gpus == 1
    assert full.vae.weights == "wan2.1-t2v-1.3b"


# ----- text encoders ----------------------------------------------------------------------------------------------


def test_umt5_plumbing_cuts_padding(tiny_text):
    from transformers import UMT5EncoderModel

    from trainer.models.text.encoder import TextEncoderConfig, build_text_encoder

    enc = build_text_encoder(TextEncoderConfig(kind="umt5", model=str(tiny_text), max_tokens=12))
    short, long = "A photo.", "A video clip of a city street at night; the camera pans slowly over it."
    out = enc.encode([short, long])
    ids = enc.tokenizer([short])["input_ids"][0]
    assert ids[-1] == enc.tokenizer.eos_token_id  # the end token counts as a valid token, as in Wan
    assert len(ids) < 12 and out[0].shape == (len(ids), 32) and out[1].shape == (12, 32)  # cut to max_tokens
    # Padding never changes the valid tokens' states: same as encoding the short caption alone.
    torch.testing.assert_close(out[0], enc.encode([short])[0], rtol=1e-5, atol=1e-5)
    model = UMT5EncoderModel.from_pretrained(str(tiny_text / "text_encoder")).eval()
    with torch.no_grad():
        ref = model(input_ids=torch.tensor([ids])).last_hidden_state[0]
    torch.testing.assert_close(out[0], ref, rtol=1e-5, atol=1e-5)
    with pytest.raises(ValueError, match="caption 1 is empty"):
        enc.encode(["ok", " "])
    # trainer.sample's entry point: the kind is read from the folder.
    from trainer.models.text import load_text_encoder

    again = load_text_encoder(str(tiny_text))
    assert again.cfg.kind == "umt5" and again.max_tokens == 512
    torch.testing.assert_close(again.encode([short])[0], out[0], rtol=1e-5, atol=1e-5)


def test_minilm_ships_real_embeddings():
    from curation import models
    from trainer.models.text.encoder import TextEncoderConfig, build_text_encoder

    assert models.check(["minilm-l6-v2"]) == []
    enc = build_text_encoder(TextEncoderConfig(kind="minilm", model="minilm-l6-v2"))
    from trainer.models.text.encoder import infer_kind

    assert infer_kind("minilm-l6-v2") == "minilm"
    assert enc.dim == 384
    texts = ["A dog runs across a grassy field.", "A puppy is running on the grass.",
             "Quarterly revenue rose by four percent.", "The stock market closed higher today."]
    out = enc.encode(texts)
    assert [o.shape[1] for o in out] == [384] * 4 and out[0].shape[0] == len(enc.tokenizer(texts[0])["input_ids"])
    pooled = torch.nn.functional.normalize(torch.stack([o.mean(0) for o in out]), dim=1)
    sim = pooled @ pooled.T
    # Real weights: paraphrases are much closer than unrelated sentences (random weights would not order these).
    assert sim[0, 1] > sim[0, 2] + 0.3 and sim[0, 1] > sim[0, 3] + 0.3 and sim[2, 3] > sim[0, 3]
