"""The Wan2.1 DiT: released parameter layout, the reference's forward, checkpoint files in and out."""

from __future__ import annotations

import json
import pathlib

import pytest
import torch
from safetensors import safe_open

from trainer.models.dit.model import PRESETS, WanDiT, config_from_dict, count_parameters, rope_angles, rope_split
from trainer.models.dit.weights import checkpoint_files, load_wan_dit, save_wan_dit

ROOT = pathlib.Path(__file__).resolve().parents[1]
LAYOUT = ROOT / "trainer" / "configs" / "wan2.1_t2v_1.3B_state_dict.json"
GOLDEN = ROOT / "tests" / "data" / "wan_dit_tiny_golden.safetensors"


def test_1_3b_has_the_released_keys_shapes_and_parameter_count():
    """Every tensor name and shape of the released 1.3B checkpoint, nothing more: strict loading works."""
    table = json.loads(LAYOUT.read_text())
    with torch.device("meta"):
        model = WanDiT.from_config("1.3B")
    ours = {k: list(v.shape) for k, v in model.state_dict().items()}
    assert ours == table["tensors"]
    assert count_parameters(model) == table["parameters"] == 1_418_996_800
    meta_sd = {k: torch.empty(s, device="meta") for k, s in table["tensors"].items()}
    model.load_state_dict(meta_sd, strict=True, assign=True)
    with torch.device("meta"):
        big = WanDiT.from_config("14B")
    assert big.config.head_dim == 128 and len(big.blocks) == 40


def test_forward_equals_the_reference_computation():
    """Weights, inputs and outputs of the public reference (bench/make_dit_golden.py): same function in fp32,
    with two samples of different sizes (padding masked) and text of different lengths."""
    with safe_open(str(GOLDEN), framework="pt") as fh:
        tensors = {k: fh.get_tensor(k) for k in fh.keys()}
        seq_len = int(fh.metadata()["seq_len"])
    model = WanDiT.from_config("tiny").eval()
    model.load_state_dict({k[len("weight."):]: v for k, v in tensors.items() if k.startswith("weight.")}, strict=True)
    with torch.no_grad():
        y0, y1 = model([tensors["in.x0"], tensors["in.x1"]], tensors["in.t"], [tensors["in.ctx0"], tensors["in.ctx1"]],
                       seq_len=seq_len)
    assert y0.shape == tensors["out.y0"].shape and y1.shape == tensors["out.y1"].shape
    torch.testing.assert_close(y0, tensors["out.y0"], rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(y1, tensors["out.y1"], rtol=1e-5, atol=1e-5)
    # Padding must not leak: the second sample alone gives the same output as inside the padded batch.
    with torch.no_grad():
        (alone,) = model([tensors["in.x1"]], tensors["in.t"][1:], [tensors["in.ctx1"]])
    torch.testing.assert_close(alone, y1, rtol=1e-5, atol=1e-5)


def test_rope_splits_head_dim_as_wan_does():
    """head_dim 128 → 22/21/21 rotary pairs for time/height/width; angles grow with each axis's index."""
    assert rope_split(128) == (22, 21, 21)
    ang = rope_angles((2, 3, 4), 128)
    assert ang.shape == (24, 64)
    # token (f=1, h=2, w=3) is the last: its time angles equal 1× the time frequencies, width angles 3×.
    assert torch.allclose(ang[-1, 22:43], 2 * ang[4, 22:43])  # token 4 is (0, 1, 0): height index 1
    assert torch.all(ang[0] == 0)


def test_checkpoint_roundtrip_single_and_sharded(tmp_path):
    """Export in the released layout (one file, or shards + index) and load back strictly."""
    model = WanDiT.from_config("tiny")
    with torch.no_grad():
        for p in model.parameters():
            p.normal_()
    one = save_wan_dit(model.state_dict(), model.config, str(tmp_path / "one"))
    sharded = save_wan_dit(model.state_dict(), model.config, str(tmp_path / "sharded"), max_shard_bytes=40_000)
    assert len(checkpoint_files(sharded)) > 2
    for path in (one, sharded):
        loaded = load_wan_dit(path)
        for k, v in model.state_dict().items():
            assert torch.equal(loaded.state_dict()[k], v), k
    bf16 = load_wan_dit(one, dtype=torch.bfloat16)
    assert next(bf16.parameters()).dtype == torch.bfloat16


def test_checkpoint_errors_name_the_problem(tmp_path):
    """A missing shard, an unknown config key and a non-t2v model are refused with a clear message."""
    model = WanDiT.from_config("tiny")
    path = save_wan_dit(model.state_dict(), model.config, str(tmp_path / "ck"), max_shard_bytes=40_000)
    victim = checkpoint_files(path)[1]
    pathlib.Path(victim).unlink()
    with pytest.raises(FileNotFoundError, match="missing"):
        load_wan_dit(path)
    with pytest.raises(ValueError, match="unknown config key DiTConfig.num_head"):
        config_from_dict({"dim": 32, "num_head": 4})
    with pytest.raises(ValueError, match="ck/config.json.dim: expected an integer, got 'wide'"):
        config_from_dict({"dim": "wide"}, str(tmp_path / "ck" / "config.json"))
    with pytest.raises(ValueError, match="only the text-to-video"):
        config_from_dict({"model_type": "i2v"})
    with pytest.raises(ValueError, match="divisible"):
        WanDiT(dim=30, num_heads=4)
    partial = {k: v for k, v in model.state_dict().items() if "blocks.1." not in k}
    from safetensors.torch import save_file

    save_file(partial, str(tmp_path / "partial.safetensors"))
    with pytest.raises(RuntimeError, match="Missing key"):
        load_wan_dit(str(tmp_path / "partial.safetensors"), config="tiny")


def test_presets_match_wan_configs():
    """1.3B and 14B presets carry Wan2.1's published sizes."""
    a, b = PRESETS["1.3B"], PRESETS["14B"]
    assert (a.dim, a.ffn_dim, a.num_heads, a.num_layers) == (1536, 8960, 12, 30)
    assert (b.dim, b.ffn_dim, b.num_heads, b.num_layers) == (5120, 13824, 40, 40)
    assert a.text_len == 512 and a.text_dim == 4096 and a.patch_size == (1, 2, 2)
