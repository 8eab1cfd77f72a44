"""VAE training losses: L1 reconstruction, KL to N(0, I), and an optional per-frame patch discriminator (hinge)."""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F


def kl_loss(mu: torch.Tensor, logvar: torch.Tensor) -> torch.Tensor:
    """Mean over latent elements of KL(N(mu, exp(logvar)) || N(0, 1))."""
    logvar = logvar.clamp(-30.0, 20.0)
    return 0.5 * (mu.pow(2) + logvar.exp() - 1.0 - logvar).mean()


def psnr(recon: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """PSNR in dB of videos in [-1, 1] (computed on [0, 1])."""
    mse = F.mse_loss((recon.float().clamp(-1, 1) + 1) / 2, (target.float() + 1) / 2)
    return 10 * torch.log10(1.0 / mse.clamp_min(1e-10))


def frames_of(video: torch.Tensor) -> torch.Tensor:
    """(N, C, T, H, W) -> (N*T, C, H, W)."""
    n, c, t, h, w = video.shape
    return video.transpose(1, 2).reshape(n * t, c, h, w)


class PatchDiscriminator(nn.Module):
    """PatchGAN over single frames (images and video frames alike); GroupNorm so tiny batches work."""

    def __init__(self, channels: int = 64, layers: int = 3):
        super().__init__()
        mods: list[nn.Module] = [nn.Conv2d(3, channels, 4, 2, 1), nn.LeakyReLU(0.2)]
        ch = channels
        for i in range(1, layers + 1):
            out = channels * min(2**i, 8)
            stride = 2 if i < layers else 1
            mods += [nn.Conv2d(ch, out, 4, stride, 1, bias=False), nn.GroupNorm(min(32, out // 4), out),
                     nn.LeakyReLU(0.2)]
            ch = out
        mods.append(nn.Conv2d(ch, 1, 4, 1, 1))
        self.net = nn.Sequential(*mods)

    def forward(self, video: torch.Tensor) -> torch.Tensor:
        """Patch logits for every frame of `video` (N, 3, T, H, W)."""
        return self.net(frames_of(video))


def hinge_d_loss(real_logits: torch.Tensor, fake_logits: torch.Tensor) -> torch.Tensor:
    """Discriminator hinge loss."""
    return 0.5 * (F.relu(1.0 - real_logits).mean() + F.relu(1.0 + fake_logits).mean())


def generator_adv_loss(fake_logits: torch.Tensor) -> torch.Tensor:
    """Generator side of the hinge GAN."""
    return -fake_logits.mean()
