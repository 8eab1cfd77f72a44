"""The captioning engine seam: engines chosen by name, prompts shared by every engine."""

from __future__ import annotations

import dataclasses

import pytest

from captioner import engines, prompts, qwen2vl
from curation.config import CaptionConfig


def test_default_engine_is_the_one_the_pass_always_ran():
    assert engines.engine_name(CaptionConfig()) == "qwen2vl"
    assert engines.ENGINES["qwen2vl"] is engines._load_qwen2vl


def test_unknown_engine_is_a_clear_error():
    @dataclasses.dataclass
    class WithEngine:
        engine: str

    with pytest.raises(ValueError, match="unknown engine 'vllm'.*qwen2vl"):
        engines.engine_name(WithEngine("vllm"))


def test_prompt_building_is_shared():
    # The Qwen2-VL engine uses the shared prompt module (re-exported for older imports).
    assert qwen2vl.build_prompt is prompts.build_prompt and qwen2vl.clean_caption is prompts.clean_caption
    text, ocr = prompts.build_prompt("video", "OPEN\n24 HOURS")
    assert ocr and '"OPEN / 24 HOURS"' in text and text.startswith(prompts.VIDEO_PROMPT)


@pytest.fixture(scope="module")
def engines_pair(tmp_path_factory):
    """The reference engine and the fast one sharing one tiny random Qwen2-VL (CPU, float32)."""
    from captioner.fast import FastQwen2VLCaptioner
    from tiny_qwen2vl import build_tiny_qwen2vl

    folder = build_tiny_qwen2vl(tmp_path_factory.mktemp("tiny") / "tiny-qwen2-vl")
    ref = qwen2vl.Qwen2VLCaptioner(str(folder), device="cpu", max_new_tokens=24, short_side=112)
    fast = FastQwen2VLCaptioner.from_loaded(ref.model, ref.processor, ref.name, max_new_tokens=24, short_side=112)
    return ref, fast.configure(prefill_rows=2, sync_every=4)


def _items():
    import cv2
    import numpy as np
    import skimage.data

    pan = np.stack([np.roll(cv2.resize(skimage.data.chelsea(), (480, 272)), 8 * i, axis=1) for i in range(8)])
    # Different prompt lengths (frame counts, an image, OCR text or none) in one batch, over two prefill chunks.
    return [{"frames": pan, "media_type": "video", "ocr_text": "NEWS24"},
            {"frames": pan[:4], "media_type": "video", "ocr_text": ""},
            {"frames": skimage.data.astronaut()[None], "media_type": "image", "ocr_text": None},
            {"frames": pan[::-1][:6], "media_type": "video", "ocr_text": "SALE 50% OFF today only"},
            {"frames": pan[:2], "media_type": "video", "ocr_text": None}]


def test_fast_engine_gives_the_reference_tokens(engines_pair):
    import torch

    ref, fast = engines_pair
    items = _items()
    want, ocr = ref.generate_ids(items)
    got, ocr_fast = fast.generate_ids(items)
    assert ocr == ocr_fast and want.shape == got.shape and torch.equal(want, got)
    assert fast.last_stats["steps"] == want.shape[1] - 1  # no end of sequence: every step ran, none more
    assert fast.caption(items[:2]) == ref.caption(items[:2])
    # Forced length (what the bench does): the same processors act in both engines.
    want, _ = ref.generate_ids(items[:2], min_new_tokens=24, max_new_tokens=24)
    got, _ = fast.generate_ids(items[:2], min_new_tokens=24, max_new_tokens=24)
    assert torch.equal(want, got)


def test_fast_engine_stops_rows_early_like_the_reference(engines_pair):
    import torch

    ref, fast = engines_pair
    items = _items()
    free, _ = ref.generate_ids(items)
    # Make a token that some rows produce mid-way (and others never) the end-of-sequence token.
    eos = next(int(t) for t in free[:, 1:12].flatten().unique()
               if 0 < int((free == t).any(1).sum()) < len(items) and int(t) != 0)
    gen = ref.model.generation_config
    old = gen.eos_token_id
    gen.eos_token_id = eos
    try:
        want, _ = ref.generate_ids(items)
        got, _ = fast.generate_ids(items)
    finally:
        gen.eos_token_id = old
    assert want.shape == got.shape and torch.equal(want, got), (want, got)
    ended = (want == eos).any(1)
    assert ended.any() and not ended.all()  # some rows stopped early, padded after their end like generate does
    assert want.shape[1] == 24


def test_fast_engine_is_chosen_by_config(engines_pair):
    with pytest.raises(ValueError, match="greedily"):
        engines_pair[1].generate_ids(_items()[:1], do_sample=True)
    assert tuple(engines_pair[1].generate_ids([])[0].shape) == (0, 0) and engines_pair[1].caption([]) == []
    from curation.config import ConfigError, parse_config

    assert parse_config({"captioning": {"engine": "qwen2vl_fast"}}).captioning.engine == "qwen2vl_fast"
    from captioner.fast import FastQwen2VLCaptioner

    folder = engines_pair[0].model.name_or_path
    loaded = engines.load_engine(CaptionConfig(engine="qwen2vl_fast", model=folder, num_gpus=0, max_new_tokens=5))
    assert isinstance(loaded, FastQwen2VLCaptioner) and loaded.max_new_tokens == 5 and loaded.device == "cpu"
    with pytest.raises(ConfigError, match=r"captioning.engine: 'vllm' is not one of \['qwen2vl', 'qwen2vl_fast'\]"):
        parse_config({"captioning": {"engine": "vllm"}})


def test_graph_warm_up_is_undone(engines_pair, monkeypatch):
    """Before a CUDA graph capture the decode step runs once and is undone (`prime`); on the CPU the same protocol
    before every first step must leave the tokens as they were (the capture itself needs CUDA: bench/caption.py)."""
    import torch

    from captioner.fast import _Decoder

    ref, fast = engines_pair
    primed = []
    step = _Decoder.run

    def run(self, graphs):
        if not primed:
            before = (int(self.index), self.positions.clone(), self.mask.clone())
            self.prime()
            primed.append(int(self.index) == before[0] and torch.equal(self.positions, before[1])
                          and torch.equal(self.mask, before[2]))  # a write index left advanced would overflow
        return step(self, graphs)

    monkeypatch.setattr(_Decoder, "run", run)
    items = _items()[:3]
    want, _ = ref.generate_ids(items)
    got, _ = fast.generate_ids(items)
    assert primed == [True] and torch.equal(want, got)


@pytest.mark.parametrize("lengths", [[5, 5, 5], [3, 7, 2]])
def test_grouped_vision_attention_is_attention_within_each_group(lengths):
    """The fast engine's vision attention: per group of cu_seqlens, bidirectional, (1, N, heads, dim) out; equal
    groups go through the batched path, unequal ones through the loop; both equal attention computed group by group."""
    import torch
    import torch.nn.functional as F

    from captioner.fast import grouped_sdpa

    g = torch.Generator().manual_seed(0)
    n = sum(lengths)
    q, k, v = (torch.randn(1, 4, n, 8, generator=g) for _ in range(3))
    cu = torch.tensor([0, *torch.tensor(lengths).cumsum(0).tolist()])
    out, _ = grouped_sdpa(None, q, k, v, scaling=0.3, cu_seq_lens_q=cu, max_length_q=max(lengths))
    want = torch.cat([F.scaled_dot_product_attention(q[:, :, a:b], k[:, :, a:b], v[:, :, a:b], scale=0.3)
                      for a, b in zip(cu[:-1].tolist(), cu[1:].tolist())], 2).transpose(1, 2)
    assert out.shape == (1, n, 4, 8)
    torch.testing.assert_close(out, want, rtol=1e-5, atol=1e-6)
    # Not the same as attention over all tokens at once (the groups really are kept apart).
    whole = F.scaled_dot_product_attention(q, k, v, scale=0.3).transpose(1, 2)
    assert not torch.allclose(out, whole, atol=1e-3)


def test_fast_engine_prefill_uses_grouped_vision_attention_and_puts_it_back(engines_pair, monkeypatch):
    import torch

    from captioner import fast as fast_mod

    ref, fast = engines_pair
    calls = []
    real = fast_mod.grouped_sdpa

    def spy(*args, **kwargs):
        calls.append(kwargs.get("max_length_q"))
        return real(*args, **kwargs)

    monkeypatch.setattr(fast_mod, "grouped_sdpa", spy)
    items = _items()[:2]
    got, _ = fast.generate_ids(items)
    assert calls and all(c is not None for c in calls)  # the vision layers went through it, with group lengths
    assert ref.model.model.visual.config._attn_implementation == "sdpa"  # put back: the reference is unaffected
    want, _ = ref.generate_ids(items)
    assert torch.equal(want, got)
    calls.clear()
    fast.configure(segment_attention=False)
    try:
        assert torch.equal(fast.generate_ids(items)[0], want) and not calls
    finally:
        fast.configure(segment_attention=True)
