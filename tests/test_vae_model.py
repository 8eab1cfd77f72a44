"""The VAE's parameter layout matches the released Wan2.1_VAE.pth, and checkpoints load strictly."""

from __future__ import annotations

import json
import pathlib

import pytest
import torch

from trainer.models.vae.model import WanVAE, count_parameters, load_state_dict_file, load_wan_vae, vae_config

LAYOUT = pathlib.Path(__file__).resolve().parents[1] / "trainer" / "configs" / "wan2.1_vae_state_dict.json"


def _layout() -> dict:
    return json.loads(LAYOUT.read_text())


def test_full_config_state_dict_matches_released_layout():
    """Every name and shape of the released checkpoint, and nothing else."""
    table = _layout()
    with torch.device("meta"):
        model = WanVAE(vae_config("wan2.1"))
    ours = {k: list(v.shape) for k, v in model.state_dict().items()}
    missing = sorted(set(table["keys"]) - set(ours))
    extra = sorted(set(ours) - set(table["keys"]))
    assert not missing and not extra, f"missing {missing[:5]}, unexpected {extra[:5]}"
    wrong = {k: (ours[k], s) for k, s in table["keys"].items() if ours[k] != s}
    assert not wrong, wrong
    assert count_parameters(model) == table["num_parameters"] == 126_892_531
    # Spot checks of names a reader of the released file would look for.
    for key in ("encoder.downsamples.5.time_conv.weight", "decoder.upsamples.3.time_conv.weight",
                "encoder.middle.1.to_qkv.weight", "decoder.middle.1.proj.bias", "conv1.weight", "conv2.weight",
                "encoder.downsamples.2.resample.1.weight", "decoder.head.0.gamma"):
        assert key in ours


def test_released_layout_loads_strict_on_meta():
    """A state dict with exactly the released names/shapes loads with strict=True (no memory needed on meta)."""
    table = _layout()
    sd = {k: torch.empty(s, device="meta") for k, s in table["keys"].items()}
    with torch.device("meta"):
        model = WanVAE()
    result = model.load_state_dict(sd, strict=True, assign=True)
    assert not result.missing_keys and not result.unexpected_keys


@pytest.mark.parametrize("suffix", [".safetensors", ".pth"])
def test_tiny_checkpoint_roundtrip(tmp_path, suffix):
    """Weights saved as safetensors or a plain .pth state dict load back strictly and give the same outputs."""
    torch.manual_seed(0)
    cfg = vae_config("tiny")
    model = WanVAE(cfg).eval()
    path = tmp_path / f"vae{suffix}"
    if suffix == ".safetensors":
        from safetensors.torch import save_file

        save_file(model.state_dict(), str(path))
    else:
        torch.save(model.state_dict(), str(path))
    assert set(load_state_dict_file(str(path))) == set(model.state_dict())
    loaded = load_wan_vae(str(path), cfg).eval()
    video = torch.rand(1, 3, 5, 16, 16) * 2 - 1
    torch.testing.assert_close(loaded.encode(video), model.encode(video), rtol=0, atol=0)


def test_latent_normalisation_constants():
    """The full preset carries Wan's per-channel latent mean/std; normalise and denormalise are inverse."""
    model = WanVAE()
    assert model.latent_mean.view(-1)[0].item() == pytest.approx(-0.7571)
    assert (1.0 / model.latent_inv_std.view(-1)[-1]).item() == pytest.approx(1.9160)
    z = torch.randn(1, 16, 2, 3, 3)
    torch.testing.assert_close(model.denormalize_latents(model.normalize_latents(z)), z)
    assert "latent_mean" not in model.state_dict()  # buffers are not part of the checkpoint


def test_config_validation_and_shapes():
    """Bad architecture and bad inputs fail with a message naming the problem."""
    with pytest.raises(ValueError, match="temporal_downsample"):
        vae_config("tiny", temporal_downsample=[True])
    with pytest.raises(ValueError, match="unknown VAE preset"):
        vae_config("huge")
    model = WanVAE(vae_config("tiny")).eval()
    with pytest.raises(ValueError, match="1 \\+ 4k frames"):
        model.encode(torch.zeros(1, 3, 4, 16, 16))
    with pytest.raises(ValueError, match="multiples of 8"):
        model.encode(torch.zeros(1, 3, 5, 12, 16))
    with pytest.raises(ValueError, match="chunk_frames"):
        model.encode(torch.zeros(1, 3, 5, 16, 16), chunk_frames=6)
    assert model.latent_frames(81) == 21 and model.latent_frames(1) == 1
