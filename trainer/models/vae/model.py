"""Wan2.1-compatible causal video VAE with chunked feature-cache inference.

Module and parameter names and shapes follow the released ``Wan2.1_VAE.pth`` so it loads with ``strict=True``.
Every temporal operation is causal, which makes two execution modes give the same numbers:

* full sequence (``cache=None``): each causal conv pads the past with zeros; a temporal downsample passes frame 0
  through and convolves the rest with stride 2; a temporal upsample passes frame 0 through and doubles the rest.
  This is the differentiable training path.
* chunked (``cache=FeatureCache()``): the video is fed in pieces (frame 0, then 4 frames at a time by default, or
  one latent frame at a time when decoding) and each causal layer keeps just the past frames it still needs, so
  working memory does not grow with video length. Any chunk size gives the same result; the stride-2 temporal
  convs only need frame counts that are multiples of 4 (encode) after frame 0.

On CUDA the chunked path also runs channels-last (cuDNN's fast NDHWC kernels), fuses RMS norm + SiLU into one pass
that writes straight into each conv's input buffer (past frames + new frames), leaves the residual convs' biases to
the next fused kernel, pads the RGB convs to 8 channels, and preallocates outputs instead of concatenating chunk
after chunk (bench/BENCHMARKS.md has the measurements).
"""

from __future__ import annotations

import dataclasses

import torch
import torch.nn as nn
import torch.nn.functional as F
import torch.utils.checkpoint

from trainer.models.vae import ops as vae_ops

# Per-channel statistics of the released Wan2.1 VAE's latents (the `WanVAE` wrapper's constants).
WAN21_LATENT_MEAN = (
    -0.7571, -0.7089, -0.9113, 0.1075, -0.1745, 0.9653, -0.1517, 1.5508,
    0.4134, -0.0715, 0.5517, -0.3632, -0.1922, -0.9497, 0.2503, -0.2921,
)
WAN21_LATENT_STD = (
    2.8184, 1.4541, 2.3275, 2.6558, 1.2196, 1.7708, 2.6052, 2.0743,
    3.2687, 2.1526, 2.8652, 1.5579, 1.6382, 1.1253, 2.8251, 1.9160,
)


@dataclasses.dataclass(frozen=True)
class VAEConfig:
    """Architecture of the causal video VAE; the defaults are the released Wan2.1 VAE."""

    dim: int = 96
    z_dim: int = 16
    dim_mult: tuple[int, ...] = (1, 2, 4, 4)
    num_res_blocks: int = 2
    attn_scales: tuple[float, ...] = ()
    temporal_downsample: tuple[bool, ...] = (False, True, True)
    dropout: float = 0.0
    latent_mean: tuple[float, ...] | None = WAN21_LATENT_MEAN
    latent_std: tuple[float, ...] | None = WAN21_LATENT_STD

    def __post_init__(self):
        if len(self.temporal_downsample) != len(self.dim_mult) - 1:
            raise ValueError("temporal_downsample needs one entry per downsampling stage (len(dim_mult) - 1)")
        for name in ("latent_mean", "latent_std"):
            v = getattr(self, name)
            if v is not None and len(v) != self.z_dim:
                raise ValueError(f"{name} has {len(v)} values, z_dim is {self.z_dim}")

    @property
    def temporal_factor(self) -> int:
        """Frames per latent frame (after the first): 2 ** number of temporal downsamples."""
        return 2 ** sum(bool(t) for t in self.temporal_downsample)

    @property
    def spatial_factor(self) -> int:
        """Pixels per latent pixel along each side."""
        return 2 ** (len(self.dim_mult) - 1)


PRESETS: dict[str, VAEConfig] = {
    "wan2.1": VAEConfig(),
    # Small enough for CPU tests, same topology (4 stages, temporal stride in the last two, middle attention).
    "tiny": VAEConfig(dim=8, z_dim=4, num_res_blocks=1, latent_mean=None, latent_std=None),
}


def vae_config(preset: str = "wan2.1", **overrides) -> VAEConfig:
    """A named preset with keyword overrides (lists are turned into tuples)."""
    return read_vae_config(preset, overrides)


def read_vae_config(preset: str, overrides: dict | None, section: str | None = None) -> VAEConfig:
    """A named preset with overrides read by the project's one typed config reader: an unknown preset or key, a
    mistyped value or a failed architecture check is a ConfigError naming the key (`<section>.overrides.z_dim`)."""
    from curation.errors import ConfigError
    from curation.typed import read

    if preset not in PRESETS:
        raise ConfigError(f"{section + '.' if section else ''}preset: unknown VAE preset {preset!r}; "
                          f"known: {sorted(PRESETS)}")
    where = f"{section}.overrides" if section else "VAEConfig"
    return read(VAEConfig, {**dataclasses.asdict(PRESETS[preset]), **(overrides or {})}, where)


class FeatureCache:
    """Per-layer causal context carried from one chunk of a video to the next, plus execution options.

    One cache serves one pass over one video (encode or decode); start a new one for the next video.
    """

    def __init__(self, channels_last: bool = False, fused: bool = False, fold_bias: bool | None = None,
                 pad_channels: bool | None = None):
        # channels_last: NDHWC buffers; fused: run the Triton kernels (CUDA); fold_bias: residual convs skip their
        # bias and the next fused kernel (norm or residual add) adds it, saving a memory pass per conv;
        # pad_channels: RGB/latent convs padded to 8 channels for cuDNN's aligned kernels.
        self.channels_last = channels_last
        self.fused = fused
        self.fold_bias = fused if fold_bias is None else fold_bias
        self.pad_channels = fused if pad_channels is None else pad_channels
        self._state: dict[nn.Module, torch.Tensor] = {}
        self._started: set[nn.Module] = set()

    @property
    def memory_format(self) -> torch.memory_format:
        """Memory format of the buffers this cache allocates."""
        return torch.channels_last_3d if self.channels_last else torch.contiguous_format

    def get(self, module: nn.Module) -> torch.Tensor | None:
        """The frames `module` kept from earlier chunks, or None at the start of the video."""
        return self._state.get(module)

    def put(self, module: nn.Module, frames: torch.Tensor) -> None:
        """Keep `frames` for `module`'s next chunk (cloned so the chunk's big buffers can be freed)."""
        self._state[module] = frames.clone(memory_format=torch.preserve_format)

    def start(self, module: nn.Module) -> bool:
        """Mark that `module` has seen frame 0; returns True the first time only."""
        if module in self._started:
            return False
        self._started.add(module)
        return True

    def nbytes(self) -> int:
        """Bytes held by the cached frames (constant across chunks: it never grows with video length)."""
        return sum(t.numel() * t.element_size() for t in self._state.values())


def _empty5d(shape, like: torch.Tensor, fmt: torch.memory_format) -> torch.Tensor:
    return torch.empty(shape, dtype=like.dtype, device=like.device, memory_format=fmt)


def _frames_as_batch(x: torch.Tensor) -> torch.Tensor:
    """(N, C, T, H, W) -> (N*T, C, H, W); a free view when x is channels-last, a copy otherwise."""
    n, c, t, h, w = x.shape
    return x.permute(0, 2, 1, 3, 4).reshape(n * t, c, h, w)


def _batch_as_frames(y: torch.Tensor, n: int) -> torch.Tensor:
    """Inverse of `_frames_as_batch`."""
    nt, c, h, w = y.shape
    return y.reshape(n, nt // n, c, h, w).permute(0, 2, 1, 3, 4)


class CausalConv3d(nn.Conv3d):
    """Conv3d whose temporal window lies in the past: `padding=p` in time means 2p past frames, none future.

    Past frames are zeros at the start of a video and the cached last frames of the previous chunk afterwards;
    spatial padding is the conv's own zero padding.
    """

    def __init__(self, in_channels, out_channels, kernel_size, stride=1, padding=0):
        pad = (padding,) * 3 if isinstance(padding, int) else tuple(padding)
        super().__init__(in_channels, out_channels, kernel_size, stride=stride, padding=(0, pad[1], pad[2]))
        self.time_pad = 2 * pad[0]

    def forward(self, x: torch.Tensor, cache: FeatureCache | None = None) -> torch.Tensor:
        """Convolve `x` (N, C, T, H, W) given the past held in `cache` (zeros when None)."""
        if self.time_pad == 0:
            return super().forward(x)
        if cache is None:
            zeros = x.new_zeros(x.shape[:2] + (self.time_pad,) + x.shape[3:])
            return super().forward(torch.cat([zeros, x], dim=2))
        buf = self.input_buffer(x, cache)
        buf[:, : x.shape[1], self.time_pad :].copy_(x)
        return self.run_buffer(buf, cache)

    def _padded_channels(self, cache: FeatureCache) -> tuple[int, int]:
        # cuDNN's channels-last kernels want channel counts that are multiples of 8; the RGB convs (3 in or 3
        # out) otherwise fall back to slow "indexed" kernels. Zero channels and zero weights change nothing.
        if not cache.pad_channels:
            return self.in_channels, self.out_channels
        return -(-self.in_channels // 8) * 8, -(-self.out_channels // 8) * 8

    def input_buffer(self, x: torch.Tensor, cache: FeatureCache) -> torch.Tensor:
        """A (past + T)-frame buffer with the past filled in; the caller writes the new frames after it."""
        n, c, t, h, w = x.shape
        c_in = self._padded_channels(cache)[0]
        buf = _empty5d((n, c_in, self.time_pad + t, h, w), x, cache.memory_format)
        past = cache.get(self)
        if c_in != c:
            buf.zero_()  # only for the few-channel input conv, where the buffer is small
        elif past is None:
            buf[:, :, : self.time_pad].zero_()
        if past is not None:
            buf[:, :, : self.time_pad].copy_(past)
        return buf

    def run_buffer(self, buf: torch.Tensor, cache: FeatureCache, bias: bool = True) -> torch.Tensor:
        """Convolve a filled buffer (with or without the bias) and keep its last frames as the next past."""
        cache.put(self, buf[:, :, -self.time_pad :])
        weight, b = self.weight, (self.bias if bias else None)
        c_in, c_out = self._padded_channels(cache)
        if (c_in, c_out) != (self.in_channels, self.out_channels):
            weight = F.pad(weight, (0, 0, 0, 0, 0, 0, 0, c_in - self.in_channels, 0, c_out - self.out_channels))
            b = None if b is None else F.pad(b, (0, c_out - self.out_channels))
        y = F.conv3d(buf, weight, b, self.stride, self.padding)
        return y if c_out == self.out_channels else y[:, : self.out_channels]


class RMS_norm(nn.Module):  # noqa: N801 - the released checkpoint's module names are kept
    """Wan's RMS norm over channels: L2-normalise, times sqrt(C), times a learned per-channel gamma."""

    def __init__(self, dim: int, images: bool = True):
        super().__init__()
        # gamma is (C,1,1) for per-frame (image) use and (C,1,1,1) for video, as in the checkpoint.
        self.gamma = nn.Parameter(torch.ones((dim, 1, 1) if images else (dim, 1, 1, 1)))
        self.scale = dim**0.5

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Normalise `x` over dim 1."""
        return F.normalize(x, dim=1) * self.scale * self.gamma


def _norm_silu_conv(norm: RMS_norm, conv: CausalConv3d, x: torch.Tensor, cache: FeatureCache | None,
                    dropout: nn.Module | None = None, in_bias: torch.Tensor | None = None,
                    out_bias: bool = True) -> torch.Tensor:
    """conv(dropout(silu(norm(x + in_bias)))), the pre-activation pattern of every residual branch and head.

    `in_bias` is the bias the producer of `x` skipped; `out_bias=False` leaves `conv`'s own bias to the consumer.
    """
    active_dropout = dropout is not None and dropout.training and dropout.p > 0
    if cache is None or active_dropout:
        if in_bias is not None or not out_bias:
            raise ValueError("bias folding is only for the chunked inference path")
        y = F.silu(norm(x))
        if dropout is not None:
            y = dropout(y)
        return conv(y, cache)
    # Normalise straight into the conv's input buffer, after the cached past frames: no cat, no extra pass.
    buf = conv.input_buffer(x, cache)
    vae_ops.rms_norm_act(x, norm.gamma, silu=True, out=buf[:, : x.shape[1], conv.time_pad :],
                         use_triton=cache.fused, bias=in_bias)
    return conv.run_buffer(buf, cache, bias=out_bias)


class ResidualBlock(nn.Module):
    """Two pre-activation causal 3x3x3 convs with a (1x1x1 when widening) shortcut."""

    def __init__(self, in_dim: int, out_dim: int, dropout: float = 0.0):
        super().__init__()
        self.residual = nn.Sequential(
            RMS_norm(in_dim, images=False), nn.SiLU(), CausalConv3d(in_dim, out_dim, 3, padding=1),
            RMS_norm(out_dim, images=False), nn.SiLU(), nn.Dropout(dropout),
            CausalConv3d(out_dim, out_dim, 3, padding=1),
        )
        self.shortcut = CausalConv3d(in_dim, out_dim, 1) if in_dim != out_dim else nn.Identity()

    def forward(self, x: torch.Tensor, cache: FeatureCache | None = None) -> torch.Tensor:
        """x + F(x), causally."""
        norm1, _, conv1, norm2, _, dropout, conv2 = self.residual
        if cache is not None and cache.fold_bias and not (dropout.training and dropout.p > 0):
            # Both convs skip their bias: conv1's is added inside norm2, conv2's (and the shortcut's) in the
            # residual add, each of which reads the tensor anyway.
            bias = conv2.bias
            if isinstance(self.shortcut, CausalConv3d):
                h = F.conv3d(x, self.shortcut.weight, None)
                bias = bias + self.shortcut.bias
            else:
                h = x
            y = _norm_silu_conv(norm1, conv1, x, cache, out_bias=False)
            y = _norm_silu_conv(norm2, conv2, y, cache, in_bias=conv1.bias, out_bias=False)
            return vae_ops.add_bias_residual(y, bias, h, use_triton=cache.fused)
        h = self.shortcut(x)
        y = _norm_silu_conv(norm1, conv1, x, cache)
        y = _norm_silu_conv(norm2, conv2, y, cache, dropout)
        if cache is None:
            return y + h
        return y.add_(h)  # inference only: the conv output is not needed afterwards


class AttentionBlock(nn.Module):
    """Single-head self-attention within each frame (no attention across time, so it stays causal)."""

    def __init__(self, dim: int):
        super().__init__()
        self.norm = RMS_norm(dim)
        self.to_qkv = nn.Conv2d(dim, dim * 3, 1)
        self.proj = nn.Conv2d(dim, dim, 1)
        nn.init.zeros_(self.proj.weight)  # the block starts as the identity

    def forward(self, x: torch.Tensor, cache: FeatureCache | None = None) -> torch.Tensor:
        """x + attention over the H*W positions of each frame."""
        n, c, t, h, w = x.shape
        if cache is not None and cache.channels_last and x.is_contiguous(memory_format=torch.channels_last_3d):
            return self._forward_rows(x, cache)
        y = self.norm(_frames_as_batch(x))
        q, k, v = self.to_qkv(y).reshape(n * t, 1, c * 3, h * w).permute(0, 1, 3, 2).chunk(3, dim=-1)
        o = F.scaled_dot_product_attention(q, k, v)
        o = self.proj(o.squeeze(1).permute(0, 2, 1).reshape(n * t, c, h, w))
        return _batch_as_frames(o, n) + x

    def _forward_rows(self, x: torch.Tensor, cache: FeatureCache) -> torch.Tensor:
        # Channels-last: every voxel's channels are a contiguous row, so the 1x1 convs are plain matmuls.
        n, c, t, h, w = x.shape
        normed = vae_ops.rms_norm_act(x, self.norm.gamma, silu=False, out=torch.empty_like(x),
                                      use_triton=cache.fused)
        y = normed.permute(0, 2, 3, 4, 1).reshape(n * t, h * w, c)
        qkv = F.linear(y, self.to_qkv.weight.view(3 * c, c), self.to_qkv.bias)
        q, k, v = (qkv[..., i * c : (i + 1) * c].unsqueeze(1) for i in range(3))
        o = F.scaled_dot_product_attention(q, k, v).squeeze(1)
        o = F.linear(o, self.proj.weight.view(c, c), self.proj.bias)
        out = torch.empty_like(x)
        rows = x.permute(0, 2, 3, 4, 1).reshape(n * t, h * w, c)
        torch.add(rows, o, out=out.permute(0, 2, 3, 4, 1).view(n * t, h * w, c))
        return out


class Resample(nn.Module):
    """Spatial x2 down/up-sampling per frame, with a causal temporal x2 conv in the '3d' modes."""

    MODES = ("none", "upsample2d", "upsample3d", "downsample2d", "downsample3d")

    def __init__(self, dim: int, mode: str):
        super().__init__()
        if mode not in self.MODES:
            raise ValueError(f"unknown resample mode {mode!r}")
        self.mode = mode
        if mode.startswith("upsample"):
            self.resample = nn.Sequential(nn.Upsample(scale_factor=(2.0, 2.0), mode="nearest-exact"),
                                          nn.Conv2d(dim, dim // 2, 3, padding=1))
        elif mode.startswith("downsample"):
            # Pad right/bottom only, so a stride-2 3x3 window starts on even pixels (as the checkpoint expects).
            self.resample = nn.Sequential(nn.ZeroPad2d((0, 1, 0, 1)), nn.Conv2d(dim, dim, 3, stride=(2, 2)))
        else:
            self.resample = nn.Identity()
        if mode == "upsample3d":
            # Produces two frames per input frame, stacked along channels.
            self.time_conv = CausalConv3d(dim, dim * 2, (3, 1, 1), padding=(1, 0, 0))
        elif mode == "downsample3d":
            self.time_conv = CausalConv3d(dim, dim, (3, 1, 1), stride=(2, 1, 1), padding=(0, 0, 0))

    def forward(self, x: torch.Tensor, cache: FeatureCache | None = None) -> torch.Tensor:
        """Resample `x` (N, C, T, H, W) in space and, for the 3d modes, time."""
        if self.mode == "upsample3d":
            x = self._time_upsample(x, cache)
        n = x.shape[0]
        x = _batch_as_frames(self.resample(_frames_as_batch(x)), n)
        if self.mode == "downsample3d":
            x = self._time_downsample(x, cache)
        return x

    def _time_upsample(self, x: torch.Tensor, cache: FeatureCache | None) -> torch.Tensor:
        # Frame 0 of the video passes through alone; every later frame becomes two (causal conv, 2C channels:
        # the first C channels are the earlier of the two frames).
        if cache is None:
            first, rest = x[:, :, :1], x[:, :, 1:]
            if rest.shape[2] == 0:
                return first
            n, c, t, h, w = rest.shape
            y = self.time_conv(rest)
            pairs = torch.stack((y[:, :c], y[:, c:]), dim=3).reshape(n, c, 2 * t, h, w)
            return torch.cat([first, pairs], dim=2)
        first = x[:, :, :1] if cache.start(self) else None
        rest = x if first is None else x[:, :, 1:]
        n, c, t, h, w = rest.shape
        n_first = 0 if first is None else 1
        # Write frame 0 and the interleaved pairs straight into one buffer instead of stack + cat.
        out = _empty5d((n, c, n_first + 2 * t, h, w), x, cache.memory_format)
        if first is not None:
            out[:, :, :1].copy_(first)
        if t > 0:
            y = self.time_conv(rest, cache)
            pairs = out[:, :, n_first:].view(n, c, t, 2, h, w)
            pairs[:, :, :, 0].copy_(y[:, :c])
            pairs[:, :, :, 1].copy_(y[:, c:])
        return out

    def _time_downsample(self, x: torch.Tensor, cache: FeatureCache | None) -> torch.Tensor:
        # Frame 0 passes through; later outputs see frames (2j-2, 2j-1, 2j) - stride 2 anchored on frame 0.
        if cache is None:
            if x.shape[2] < 3:
                return x[:, :, :1]
            return torch.cat([x[:, :, :1], self.time_conv(x)], dim=2)
        pending = cache.get(self)
        outs = []
        if pending is None:
            outs.append(x[:, :, :1])
            pending, x = x[:, :, :1], x[:, :, 1:]
        buf = torch.cat([pending, x], dim=2)
        n_out = (buf.shape[2] - 1) // 2
        if n_out > 0:
            outs.append(self.time_conv(buf[:, :, : 1 + 2 * n_out]))
        cache.put(self, buf[:, :, 2 * n_out :])
        return outs[0] if len(outs) == 1 else torch.cat(outs, dim=2)


def _run_block(owner: nn.Module, layer: nn.Module, x: torch.Tensor, cache: FeatureCache | None) -> torch.Tensor:
    """layer(x, cache), under activation checkpointing when the owner asks for it in a training pass."""
    if cache is None and getattr(owner, "checkpointing", False) and torch.is_grad_enabled():
        return torch.utils.checkpoint.checkpoint(layer, x, use_reentrant=False)
    return layer(x, cache)


class Encoder3d(nn.Module):
    """Video -> 2*z_dim channels (mean and log-variance) at 1/8 the size and 1/4 the frames (after frame 0)."""

    def __init__(self, dim=96, z_dim=32, dim_mult=(1, 2, 4, 4), num_res_blocks=2, attn_scales=(),
                 temporal_downsample=(False, True, True), dropout=0.0):
        super().__init__()
        dims = [dim * u for u in (1,) + tuple(dim_mult)]
        scale = 1.0
        self.conv1 = CausalConv3d(3, dims[0], 3, padding=1)
        blocks: list[nn.Module] = []
        for i, (in_dim, out_dim) in enumerate(zip(dims[:-1], dims[1:])):
            for _ in range(num_res_blocks):
                blocks.append(ResidualBlock(in_dim, out_dim, dropout))
                if scale in attn_scales:
                    blocks.append(AttentionBlock(out_dim))
                in_dim = out_dim
            if i != len(dim_mult) - 1:
                blocks.append(Resample(out_dim, "downsample3d" if temporal_downsample[i] else "downsample2d"))
                scale /= 2.0
        self.downsamples = nn.Sequential(*blocks)
        self.middle = nn.Sequential(ResidualBlock(out_dim, out_dim, dropout), AttentionBlock(out_dim),
                                    ResidualBlock(out_dim, out_dim, dropout))
        self.head = nn.Sequential(RMS_norm(out_dim, images=False), nn.SiLU(),
                                  CausalConv3d(out_dim, z_dim, 3, padding=1))
        self.checkpointing = False  # recompute each block in backward (training memory)

    def forward(self, x: torch.Tensor, cache: FeatureCache | None = None) -> torch.Tensor:
        """Encode a chunk (or the whole video when `cache` is None)."""
        x = self.conv1(x, cache)
        for layer in self.downsamples:
            x = _run_block(self, layer, x, cache)
        for layer in self.middle:
            x = _run_block(self, layer, x, cache)
        return _norm_silu_conv(self.head[0], self.head[2], x, cache)


class Decoder3d(nn.Module):
    """Latents -> video: mirror of the encoder, three residual blocks per stage, temporal x2 in the first two."""

    def __init__(self, dim=96, z_dim=16, dim_mult=(1, 2, 4, 4), num_res_blocks=2, attn_scales=(),
                 temporal_upsample=(True, True, False), dropout=0.0):
        super().__init__()
        dim_mult = tuple(dim_mult)
        dims = [dim * u for u in (dim_mult[-1],) + dim_mult[::-1]]
        scale = 1.0 / 2 ** (len(dim_mult) - 2)
        self.conv1 = CausalConv3d(z_dim, dims[0], 3, padding=1)
        self.middle = nn.Sequential(ResidualBlock(dims[0], dims[0], dropout), AttentionBlock(dims[0]),
                                    ResidualBlock(dims[0], dims[0], dropout))
        blocks: list[nn.Module] = []
        for i, (in_dim, out_dim) in enumerate(zip(dims[:-1], dims[1:])):
            if i > 0:
                in_dim = in_dim // 2  # every upsample halves the channels
            for _ in range(num_res_blocks + 1):
                blocks.append(ResidualBlock(in_dim, out_dim, dropout))
                if scale in attn_scales:
                    blocks.append(AttentionBlock(out_dim))
                in_dim = out_dim
            if i != len(dim_mult) - 1:
                blocks.append(Resample(out_dim, "upsample3d" if temporal_upsample[i] else "upsample2d"))
                scale *= 2.0
        self.upsamples = nn.Sequential(*blocks)
        self.head = nn.Sequential(RMS_norm(out_dim, images=False), nn.SiLU(),
                                  CausalConv3d(out_dim, 3, 3, padding=1))
        self.checkpointing = False  # recompute each block in backward (training memory)

    def forward(self, x: torch.Tensor, cache: FeatureCache | None = None) -> torch.Tensor:
        """Decode a chunk of latents (or all of them when `cache` is None)."""
        x = self.conv1(x, cache)
        for layer in self.middle:
            x = _run_block(self, layer, x, cache)
        for layer in self.upsamples:
            x = _run_block(self, layer, x, cache)
        return _norm_silu_conv(self.head[0], self.head[2], x, cache)


def _default_fast(device: torch.device) -> bool:
    return device.type == "cuda"


class WanVAE(nn.Module):
    """The Wan2.1 causal video VAE: `encoder`, `conv1` (moments), `conv2` (post-quant), `decoder`.

    Images are 1-frame videos. Videos have 1 + 4k frames and sides divisible by 8; they encode to 1 + k latent
    frames. Pixel values are in [-1, 1].
    """

    def __init__(self, config: VAEConfig | None = None):
        super().__init__()
        cfg = config or VAEConfig()
        self.config = cfg
        self.z_dim = cfg.z_dim
        self.encoder = Encoder3d(cfg.dim, cfg.z_dim * 2, cfg.dim_mult, cfg.num_res_blocks, cfg.attn_scales,
                                 cfg.temporal_downsample, cfg.dropout)
        self.conv1 = CausalConv3d(cfg.z_dim * 2, cfg.z_dim * 2, 1)
        self.conv2 = CausalConv3d(cfg.z_dim, cfg.z_dim, 1)
        self.decoder = Decoder3d(cfg.dim, cfg.z_dim, cfg.dim_mult, cfg.num_res_blocks, cfg.attn_scales,
                                 tuple(cfg.temporal_downsample[::-1]), cfg.dropout)
        mean = torch.tensor(cfg.latent_mean if cfg.latent_mean is not None else [0.0] * cfg.z_dim)
        std = torch.tensor(cfg.latent_std if cfg.latent_std is not None else [1.0] * cfg.z_dim)
        # Not persistent: the released checkpoint holds only weights, and strict loading must accept it as is.
        self.register_buffer("latent_mean", mean.view(1, -1, 1, 1, 1), persistent=False)
        self.register_buffer("latent_inv_std", (1.0 / std).view(1, -1, 1, 1, 1), persistent=False)

    # ----- shapes -------------------------------------------------------------------------------------------
    def latent_frames(self, frames: int) -> int:
        """Latent frames for a video of `frames` frames (1 + (frames - 1) / temporal factor)."""
        tf = self.config.temporal_factor
        if frames < 1 or (frames - 1) % tf:
            raise ValueError(f"videos need 1 + {tf}k frames, got {frames}")
        return 1 + (frames - 1) // tf

    def _check_video(self, video: torch.Tensor) -> None:
        if video.dim() != 5 or video.shape[1] != 3:
            raise ValueError(f"expected a video (N, 3, T, H, W), got shape {tuple(video.shape)}")
        sf = self.config.spatial_factor
        if video.shape[3] % sf or video.shape[4] % sf:
            raise ValueError(f"height and width must be multiples of {sf}, got {tuple(video.shape[3:])}")
        self.latent_frames(video.shape[2])

    # ----- latent normalisation ----------------------------------------------------------------------------
    def normalize_latents(self, mu: torch.Tensor) -> torch.Tensor:
        """Raw posterior mean -> the normalised latents the DiT sees ((mu - mean) / std, per channel)."""
        return (mu - self.latent_mean) * self.latent_inv_std

    def denormalize_latents(self, z: torch.Tensor) -> torch.Tensor:
        """Inverse of `normalize_latents`."""
        return z / self.latent_inv_std + self.latent_mean

    # ----- training path ------------------------------------------------------------------------------------
    def forward(self, video: torch.Tensor, sample_posterior: bool = True):
        """Full-sequence causal pass for training: returns (reconstruction, mu, logvar)."""
        self._check_video(video)
        mu, logvar = self.conv1(self.encoder(video)).chunk(2, dim=1)
        z = mu
        if sample_posterior:
            z = mu + torch.exp(0.5 * logvar.clamp(-30.0, 20.0)) * torch.randn_like(mu)
        return self.decoder(self.conv2(z)), mu, logvar

    # ----- chunked inference --------------------------------------------------------------------------------
    def _cache(self, device: torch.device, fast: bool | None) -> FeatureCache:
        fast = _default_fast(device) if fast is None else fast
        return FeatureCache(channels_last=fast, fused=fast and vae_ops.triton_available() and device.type == "cuda")

    @torch.no_grad()
    def encode_moments(self, video: torch.Tensor, chunk_frames: int | None = 4, fast: bool | None = None):
        """Raw (mu, logvar) of a video, fed as frame 0 then `chunk_frames` frames at a time (None: all at once)."""
        self._check_video(video)
        tf = self.config.temporal_factor
        t = video.shape[2]
        if chunk_frames is not None and (chunk_frames < tf or chunk_frames % tf):
            raise ValueError(f"chunk_frames must be a positive multiple of {tf}, got {chunk_frames}")
        cache = self._cache(video.device, fast)
        bounds = [0, t] if chunk_frames is None else sorted({0, 1, t, *range(1 + chunk_frames, t, chunk_frames)})
        out = None
        pos = 0
        for a, b in zip(bounds[:-1], bounds[1:]):
            m = self.conv1(self.encoder(video[:, :, a:b], cache))
            if out is None:
                n, c, _, h, w = m.shape
                out = torch.empty((n, c, self.latent_frames(t), h, w), dtype=m.dtype, device=m.device)
            out[:, :, pos : pos + m.shape[2]].copy_(m)
            pos += m.shape[2]
        mu, logvar = out.chunk(2, dim=1)
        return mu, logvar

    @torch.no_grad()
    def encode(self, video: torch.Tensor, chunk_frames: int | None = 4, fast: bool | None = None) -> torch.Tensor:
        """Normalised mean latents (N, z_dim, 1 + (T-1)/4, H/8, W/8) of a video in [-1, 1]."""
        mu, _ = self.encode_moments(video, chunk_frames, fast)
        return self.normalize_latents(mu)

    @torch.no_grad()
    def decode(self, latents: torch.Tensor, chunk_latents: int | None = 1, fast: bool | None = None,
               normalized: bool = True, clamp: bool = False) -> torch.Tensor:
        """Video from latents, decoded as latent frame 0 then `chunk_latents` at a time (None: all at once)."""
        z = self.denormalize_latents(latents) if normalized else latents
        x = self.conv2(z)
        t = x.shape[2]
        if chunk_latents is not None and chunk_latents < 1:
            raise ValueError(f"chunk_latents must be >= 1, got {chunk_latents}")
        cache = self._cache(x.device, fast)
        bounds = [0, t] if chunk_latents is None else sorted({0, 1, t, *range(1 + chunk_latents, t, chunk_latents)})
        tf, sf = self.config.temporal_factor, self.config.spatial_factor
        out = None
        pos = 0
        for a, b in zip(bounds[:-1], bounds[1:]):
            y = self.decoder(x[:, :, a:b], cache)
            if out is None:
                n, c, _, h, w = y.shape
                out = torch.empty((n, c, 1 + tf * (t - 1), h, w), dtype=y.dtype, device=y.device)
            out[:, :, pos : pos + y.shape[2]].copy_(y)
            pos += y.shape[2]
        assert pos == out.shape[2], (pos, out.shape)
        return out.clamp_(-1, 1) if clamp else out

    @torch.no_grad()
    def reconstruct(self, video: torch.Tensor, **kw) -> torch.Tensor:
        """decode(encode(video)) with the posterior mean, chunked."""
        return self.decode(self.encode(video), **kw)


def load_state_dict_file(path: str) -> dict[str, torch.Tensor]:
    """Weights from a .safetensors file or a plain tensor .pth/.pt (loaded with weights_only=True)."""
    if str(path).endswith(".safetensors"):
        from safetensors.torch import load_file

        return load_file(str(path))
    sd = torch.load(str(path), map_location="cpu", weights_only=True)
    if isinstance(sd, dict) and "state_dict" in sd and isinstance(sd["state_dict"], dict):
        sd = sd["state_dict"]
    return sd


def load_wan_vae(path: str, config: VAEConfig | None = None, device: str | torch.device = "cpu") -> WanVAE:
    """Build the VAE and load weights (e.g. the released Wan2.1_VAE.pth) with strict=True."""
    with torch.device("meta"):
        model = WanVAE(config)
    model.load_state_dict(load_state_dict_file(path), strict=True, assign=True)
    # Buffers were created on meta and are not in the checkpoint: rebuild them.
    cfg = model.config
    mean = torch.tensor(cfg.latent_mean if cfg.latent_mean is not None else [0.0] * cfg.z_dim)
    std = torch.tensor(cfg.latent_std if cfg.latent_std is not None else [1.0] * cfg.z_dim)
    model.latent_mean = mean.view(1, -1, 1, 1, 1)
    model.latent_inv_std = (1.0 / std).view(1, -1, 1, 1, 1)
    return model.to(device)


def count_parameters(model: nn.Module) -> int:
    """Number of parameters."""
    return sum(p.numel() for p in model.parameters())


__all__ = [
    "VAEConfig", "PRESETS", "vae_config", "read_vae_config", "FeatureCache", "CausalConv3d", "RMS_norm", "ResidualBlock",
    "AttentionBlock", "Resample", "Encoder3d", "Decoder3d", "WanVAE", "load_wan_vae", "load_state_dict_file",
    "count_parameters", "WAN21_LATENT_MEAN", "WAN21_LATENT_STD",
]
