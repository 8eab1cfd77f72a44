"""Rectified flow (Wan's convention) and the sampler built on diffusers' schedulers."""

from __future__ import annotations

import math

import pytest
import torch

from trainer.flow import FlowConfig, flow_loss, loss_weight, noisy_input, sample_sigmas, shift_sigma, timesteps
from trainer.models.dit.model import WanDiT
from trainer.sample import denoise, generate, latent_shape, write_mp4


def test_loss_of_a_fresh_model_equals_a_hand_computation():
    """Zero-initialised head → prediction 0; x0 = 2, ε = −1, σ = 0.25: x_σ = 1.25, target −3, loss 9 (× weights)."""
    model = WanDiT.from_config("tiny")
    x0 = torch.full((1, 16, 1, 4, 4), 2.0)
    eps = torch.full_like(x0, -1.0)
    sigma = torch.tensor([0.25])
    xt, target = noisy_input(x0, eps, sigma)
    assert torch.allclose(xt, torch.full_like(x0, 1.25)) and torch.allclose(target, torch.full_like(x0, -3.0))
    assert timesteps(sigma).item() == 250.0
    pred = torch.stack(model(list(xt), timesteps(sigma), [torch.randn(3, 32)]))
    assert torch.count_nonzero(pred) == 0
    assert flow_loss(pred, target, sigma).item() == pytest.approx(9.0)
    cosmap = 2 / (math.pi * (1 - 2 * 0.25 + 2 * 0.25**2))
    assert flow_loss(pred, target, sigma, "cosmap").item() == pytest.approx(9.0 * cosmap)
    # A mask that keeps half the elements, with errors 1 there and 9 elsewhere: the mean over what counts.
    mask = torch.zeros_like(x0)
    mask[..., :2] = 1
    half = torch.where(mask.bool(), target + 2, target)  # error (−1)² = 1 where it counts
    assert flow_loss(torch.zeros_like(x0), half, sigma, mask=mask).item() == pytest.approx(1.0)


def test_sigma_shift_and_densities():
    """Shift maps 0→0, 1→1 and 0.5 to s/(1+s); logit-normal draws centre on 0.5; uniform covers (0, 1)."""
    s = torch.tensor([0.0, 0.5, 1.0])
    assert torch.allclose(shift_sigma(s, 5.0), torch.tensor([0.0, 5 / 6, 1.0]))
    g = torch.Generator().manual_seed(0)
    ln = sample_sigmas(20000, FlowConfig(density="logit_normal"), g)
    un = sample_sigmas(20000, FlowConfig(density="uniform"), g)
    assert abs(ln.median().item() - 0.5) < 0.02 and ln.std().item() < un.std().item()
    assert un.min() > 0 and un.max() <= 1 and abs(un.mean().item() - 0.5) < 0.01
    shifted = sample_sigmas(20000, FlowConfig(density="uniform", shift=3.0), g)
    assert abs(shifted.median().item() - 0.75) < 0.02  # median 0.5 shifted by 3: 1.5/2
    assert loss_weight(torch.tensor([0.5]), "bell").item() == pytest.approx(1 / 0.6)
    with pytest.raises(ValueError, match="density"):
        FlowConfig(density="beta")


def _gaussian_velocity(mu: float, s: float, scheduler_sigmas):
    """Exact velocity E[ε − x0 | x_σ] for x0 ~ N(mu, s²): x_σ ~ N((1−σ)mu, (1−σ)²s² + σ²)."""
    sig_of_t = {}

    def v(x, t):
        sigma = sig_of_t.setdefault(float(t), float(t) / 1000.0)
        var = (1 - sigma) ** 2 * s * s + sigma**2
        m = (1 - sigma) * mu
        return sigma / var * (x - m) - mu - (1 - sigma) * s * s / var * (x - m)

    return v


@pytest.mark.parametrize("solver,steps,shift", [("unipc", 50, 5.0), ("unipc", 50, 1.0), ("euler", 200, 1.0)])
def test_exact_velocity_of_gaussian_data_lands_on_its_distribution(solver, steps, shift):
    """Driving the analytic velocity of N(2, 0.5²) data through the scheduler from N(0, 1) noise gives N(2, 0.5²)."""
    mu, s = 2.0, 0.5
    noise = torch.randn(50000, 1, 1, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    x = denoise(_gaussian_velocity(mu, s, None), noise, steps=steps, shift=shift, solver=solver)
    assert x.mean().item() == pytest.approx(mu, abs=0.01)
    assert x.std().item() == pytest.approx(s, abs=0.012)
    # A wrong field (the sign of the noise term flipped) does not: the test can fail.
    bad = denoise(lambda x, t: -_gaussian_velocity(mu, s, None)(x, t), noise, steps=steps, shift=shift, solver=solver)
    assert abs(bad.mean().item() - mu) > 0.5


@pytest.fixture
def one_thread():
    """Tiny tensors: one intra-op thread is faster than two and keeps the test's time steady on a busy machine."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def test_tiny_dit_overfits_one_clip_and_the_sampler_reproduces_it(one_thread):
    """A small DiT trained on one latent clip with the flow loss; sampling (UniPC and Euler) returns that clip."""
    from trainer.flow import timesteps as ts

    torch.manual_seed(0)
    model = WanDiT(dim=64, ffn_dim=128, freq_dim=32, text_dim=16, num_heads=4, num_layers=2, text_len=8, in_dim=4,
                   out_dim=4)
    g = torch.Generator().manual_seed(0)
    x0 = torch.randn(4, 2, 8, 8, generator=g)
    ctx = torch.randn(5, 16, generator=g)
    before = generate(model, [ctx], None, tuple(x0.shape), steps=20, shift=1.0, guidance=1.0, seed=1,
                      dtype=torch.float32)[0]
    assert ((before - x0) ** 2).mean() / x0.var() > 0.9
    opt = torch.optim.AdamW(model.parameters(), lr=2e-3, weight_decay=0.0)
    cfg = FlowConfig(density="uniform")
    for _ in range(400):
        sigma = sample_sigmas(8, cfg, g)
        xt, target = noisy_input(x0.expand(8, *x0.shape), torch.randn((8, *x0.shape), generator=g), sigma)
        loss = flow_loss(torch.stack(model(list(xt), ts(sigma), [ctx] * 8)), target, sigma)
        opt.zero_grad()
        loss.backward()
        opt.step()
    model.eval()
    for solver, steps in (("unipc", 30), ("euler", 50)):
        for seed in (1, 2):
            z = generate(model, [ctx], None, tuple(x0.shape), steps=steps, shift=1.0, guidance=1.0, solver=solver,
                         seed=seed, dtype=torch.float32)[0]
            assert ((z - x0) ** 2).mean() / x0.var() < 0.15, (solver, seed)
    a = generate(model, [ctx], [torch.zeros(1, 16)], tuple(x0.shape), steps=5, guidance=3.0, seed=7, dtype=torch.float32)
    b = generate(model, [ctx], [torch.zeros(1, 16)], tuple(x0.shape), steps=5, guidance=3.0, seed=7, dtype=torch.float32)
    assert torch.equal(a[0], b[0])  # seeded: reproducible


def test_latent_shape_and_mp4(tmp_path):
    """1+4k frames and multiples of 16 only; a written mp4 decodes back to the right size and frame count."""
    assert latent_shape(81, 480, 832) == (16, 21, 60, 104)
    with pytest.raises(ValueError, match="1 \\+ 4k"):
        latent_shape(80, 480, 832)
    with pytest.raises(ValueError, match="multiples of 16"):
        latent_shape(81, 480, 830)
    import av

    video = torch.linspace(-1, 1, 5)[None, :, None, None].expand(3, 5, 32, 48).contiguous()
    write_mp4(video, str(tmp_path / "x.mp4"), fps=8)
    with av.open(str(tmp_path / "x.mp4")) as c:
        frames = [f.to_ndarray(format="rgb24") for f in c.decode(video=0)]
    assert len(frames) == 5 and frames[0].shape == (32, 48, 3)
    assert frames[0].mean() < 20 and frames[-1].mean() > 235


def test_sample_cli_names_the_flag_of_a_missing_or_wrong_file(tmp_path):
    """A checkpoint path that does not exist said "is a file" with a traceback; a VAE file that is not a VAE (or not
    there) gave a traceback from deep in the loader. Each is now one line naming its flag."""
    from safetensors.torch import save_file

    from trainer import sample
    from trainer.models.dit.weights import save_wan_dit

    args = ["--prompt", "a cat", "--out", str(tmp_path / "x.mp4"), "--device", "cpu", "--precision", "fp32"]
    with pytest.raises(SystemExit, match="^--checkpoint: no DiT checkpoint at .*/nope$"):
        sample.main(["--checkpoint", str(tmp_path / "nope"), "--vae", str(tmp_path / "vae"), *args])
    model = WanDiT.from_config("tiny")
    save_wan_dit(model.state_dict(), model.config, str(tmp_path / "dit"))
    with pytest.raises(SystemExit, match="^--vae: "):
        sample.main(["--checkpoint", str(tmp_path / "dit"), "--vae", str(tmp_path / "missing.safetensors"), *args])
    save_file({"not_a_vae": torch.zeros(2)}, str(tmp_path / "wrong.safetensors"))
    with pytest.raises(SystemExit, match="^--vae: Error.s. in loading state_dict for WanVAE: Missing key") as info:
        sample.main(["--checkpoint", str(tmp_path / "dit"), "--vae", str(tmp_path / "wrong.safetensors"), *args])
    assert "\n" not in str(info.value) and len(str(info.value)) < 420  # one line, not 200 key names
    # A frame count that is not 1 + 4k: one line naming the flags (a ValueError traceback before), checked before
    # the text encoder would load.
    from trainer.models.vae.model import WanVAE, vae_config

    save_file(WanVAE(vae_config("tiny")).state_dict(), str(tmp_path / "vae.safetensors"))
    tiny_dit = WanDiT.from_config("tiny")
    save_wan_dit(tiny_dit.state_dict(), tiny_dit.config, str(tmp_path / "dit4"))
    with pytest.raises(SystemExit, match="^--frames/--height/--width: .*1 \\+ 4k"):
        sample.main(["--checkpoint", str(tmp_path / "dit4"), "--vae", str(tmp_path / "vae.safetensors"),
                     "--vae-preset", "tiny", "--text-encoder", str(tmp_path / "no-encoder"), "--frames", "80",
                     *args])
