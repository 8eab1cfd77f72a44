"""The Wan2.1 text-to-video diffusion transformer, with the module names and shapes of the released checkpoints.

    x (latent video, C×F×H×W) ─► Conv3d patch embed (1×2×2) ─► tokens (F·H/2·W/2 of them, `dim` wide)
    t ─► sinusoid(256) ─► time MLP ─► 6·dim projection, shared by all blocks (each adds its own learnt offset)
    umT5 text (≤ 512 × 4096, zero-padded to 512) ─► text MLP
    blocks: [modulated LayerNorm ─► self-attention (RMS-normed q/k, 3D RoPE) ─► gated residual]
            [LayerNorm ─► cross-attention to the text ─► residual]
            [modulated LayerNorm ─► GELU-tanh FFN ─► gated residual]
    head: modulated LayerNorm ─► Linear (zero-initialised) ─► un-patchify to C×F×H×W

The residual stream, the modulation and the norms are float32 as in the reference; under bf16 autocast the linear
layers and attention run in bf16. This file knows nothing of training or parallelism. It offers two seams that
`trainer.distributed` fills for context parallelism: `WanSelfAttention.attn` (the attention kernel: [B, L, H, D]
queries, keys, values in; [B, L, H, D] out) and `WanDiT.sequence` (what happens to the token sequence after the
patch embedding and before the head: nothing, on one process).
"""

from __future__ import annotations

import dataclasses
import math
from typing import Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F


@dataclasses.dataclass(frozen=True)
class DiTConfig:
    """Wan2.1's config keywords (the released `config.json` of the t2v models uses the same names)."""

    dim: int = 1536
    ffn_dim: int = 8960
    freq_dim: int = 256
    text_dim: int = 4096
    in_dim: int = 16
    out_dim: int = 16
    num_heads: int = 12
    num_layers: int = 30
    patch_size: tuple[int, int, int] = (1, 2, 2)
    text_len: int = 512
    qk_norm: bool = True
    cross_attn_norm: bool = True
    eps: float = 1e-6

    def __post_init__(self):
        if self.dim % self.num_heads:
            raise ValueError(f"dim={self.dim} is not divisible by num_heads={self.num_heads}")
        head_dim = self.dim // self.num_heads
        if head_dim % 2 or head_dim < 6:
            raise ValueError(f"head_dim={head_dim} must be even and >= 6 (3D RoPE splits it three ways)")
        if len(tuple(self.patch_size)) != 3:
            raise ValueError(f"patch_size must have 3 entries, got {self.patch_size}")
        object.__setattr__(self, "patch_size", tuple(int(p) for p in self.patch_size))

    @property
    def head_dim(self) -> int:
        """Width of one attention head."""
        return self.dim // self.num_heads


PRESETS: dict[str, DiTConfig] = {
    # Plumbing and CPU demos: 2 blocks, 4 heads of 8.
    "tiny": DiTConfig(dim=32, ffn_dim=64, freq_dim=32, text_dim=32, num_heads=4, num_layers=2, text_len=16),
    "1.3B": DiTConfig(dim=1536, ffn_dim=8960, num_heads=12, num_layers=30),
    "14B": DiTConfig(dim=5120, ffn_dim=13824, num_heads=40, num_layers=40),
}

# Keys of a released config.json that do not change the t2v architecture.
_IGNORED_CONFIG_KEYS = {"_class_name", "_diffusers_version", "model_type", "window_size"}


def config_from_dict(values: dict, where: str = "DiTConfig") -> DiTConfig:
    """A DiTConfig from Wan2.1 keyword arguments or a released `config.json` (non-t2v models are refused), read by
    the project's one typed config reader: an unknown key or a mistyped value is a ConfigError naming `where.key`."""
    from curation.errors import ConfigError
    from curation.typed import read

    values = dict(values)
    kind = values.get("model_type", "t2v")
    if kind != "t2v":
        raise ConfigError(f"{where}.model_type: {kind!r}: only the text-to-video DiT (t2v) is built here")
    return read(DiTConfig, {k: v for k, v in values.items() if k not in _IGNORED_CONFIG_KEYS}, where)


# ----------------------------------------------------------------------------------------------------------------
# Positional and time features


def sinusoidal_embedding(dim: int, t: torch.Tensor) -> torch.Tensor:
    """[cos | sin] features of timesteps `t` ([B]) at `dim/2` geometric frequencies, computed in float64."""
    half = dim // 2
    pos = t.to(torch.float64)
    inv = torch.pow(10000.0, -torch.arange(half, device=t.device, dtype=torch.float64) / half)
    ang = torch.outer(pos, inv)
    return torch.cat([torch.cos(ang), torch.sin(ang)], dim=1)


def rope_split(head_dim: int) -> tuple[int, int, int]:
    """How many rotary pairs of a head go to time, height and width (Wan: 22/21/21 for head_dim 128)."""
    pairs = head_dim // 2
    return pairs - 2 * (pairs // 3), pairs // 3, pairs // 3


def rope_angles(grid: Sequence[int], head_dim: int, device=None, theta: float = 10000.0) -> torch.Tensor:
    """Rotation angles (float64, [F·H·W, head_dim/2]) of the tokens of one (F, H, W) patch grid, in raster order."""
    f, h, w = (int(v) for v in grid)
    out = []
    for n, size, axis in zip(rope_split(head_dim), (f, h, w), range(3)):
        dim = 2 * n
        inv = 1.0 / torch.pow(theta, torch.arange(0, dim, 2, device=device, dtype=torch.float64) / dim)
        ang = torch.outer(torch.arange(size, device=device, dtype=torch.float64), inv)  # [size, n]
        shape = [1, 1, 1, n]
        shape[axis] = size
        out.append(ang.view(shape).expand(f, h, w, n))
    return torch.cat(out, dim=-1).reshape(f * h * w, head_dim // 2)


def rope_table(grids: Sequence[Sequence[int]], seq_len: int, head_dim: int, device=None) -> torch.Tensor:
    """cos/sin of every sample's token angles, [2, B, seq_len, 1, head_dim/2] float32 (padding rows: no rotation)."""
    tables = []
    for grid in grids:
        ang = rope_angles(grid, head_dim, device)
        if ang.shape[0] < seq_len:
            ang = torch.cat([ang, ang.new_zeros(seq_len - ang.shape[0], ang.shape[1])])
        tables.append(ang)
    ang = torch.stack(tables)[:, :, None, :]
    return torch.stack([torch.cos(ang), torch.sin(ang)]).float()


def apply_rope(x: torch.Tensor, rope: torch.Tensor) -> torch.Tensor:
    """Rotate adjacent pairs of the last dim of x ([B, L, H, D]) by the angles of `rope` (see rope_table), in fp32."""
    cos, sin = rope[0], rope[1]
    xf = x.float().unflatten(-1, (-1, 2))
    x0, x1 = xf[..., 0], xf[..., 1]
    return torch.stack([x0 * cos - x1 * sin, x0 * sin + x1 * cos], dim=-1).flatten(-2)


# ----------------------------------------------------------------------------------------------------------------
# Layers


class WanRMSNorm(nn.Module):
    """RMS norm over the last dim with a learnt scale (computed in fp32, cast back, then scaled)."""

    def __init__(self, dim: int, eps: float = 1e-5):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Normalise x ([..., dim])."""
        xf = x.float()
        return (xf * torch.rsqrt(xf.pow(2).mean(dim=-1, keepdim=True) + self.eps)).type_as(x) * self.weight


class WanLayerNorm(nn.LayerNorm):
    """LayerNorm computed in fp32 (affine only where the reference has it)."""

    def __init__(self, dim: int, eps: float = 1e-6, elementwise_affine: bool = False):
        super().__init__(dim, eps=eps, elementwise_affine=elementwise_affine)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Normalise x in fp32 and return it in x's dtype."""
        return F.layer_norm(x.float(), self.normalized_shape, None if self.weight is None else self.weight.float(),
                            None if self.bias is None else self.bias.float(), self.eps).type_as(x)


class SDPAttention(nn.Module):
    """Attention kernel of one process: torch's scaled_dot_product_attention on [B, L, H, D] tensors.

    `k_lens` ([B] or None) masks keys at positions >= k_lens[b] (the zero padding of shorter samples). `backends`
    pins SDPA's kernel choice (e.g. cuDNN first on Hopper); None lets torch choose.
    """

    def __init__(self, backends: Sequence | None = None):
        super().__init__()
        self.backends = list(backends) if backends else None

    def forward(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
                k_lens: torch.Tensor | None = None) -> torch.Tensor:
        """softmax(q·kᵀ/√D)·v per head; returns [B, Lq, H, D]."""
        mask = None
        if k_lens is not None and bool((k_lens < k.shape[1]).any()):
            pos = torch.arange(k.shape[1], device=k.device)
            mask = (pos[None, :] < k_lens.to(k.device)[:, None])[:, None, None, :]
        q, k, v = (t.transpose(1, 2) for t in (q, k, v))
        if q.dtype != v.dtype or k.dtype != v.dtype:
            dtype = torch.promote_types(torch.promote_types(q.dtype, k.dtype), v.dtype)
            q, k, v = q.to(dtype), k.to(dtype), v.to(dtype)
        if self.backends is None:
            out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)
        else:
            from torch.nn.attention import sdpa_kernel

            with sdpa_kernel(self.backends, set_priority=True):
                out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)
        return out.transpose(1, 2)


class WanSelfAttention(nn.Module):
    """Multi-head self-attention with RMS-normed queries and keys and 3D RoPE."""

    def __init__(self, dim: int, num_heads: int, qk_norm: bool = True, eps: float = 1e-6):
        super().__init__()
        self.num_heads, self.head_dim = num_heads, dim // num_heads
        self.q = nn.Linear(dim, dim)
        self.k = nn.Linear(dim, dim)
        self.v = nn.Linear(dim, dim)
        self.o = nn.Linear(dim, dim)
        self.norm_q = WanRMSNorm(dim, eps=eps) if qk_norm else nn.Identity()
        self.norm_k = WanRMSNorm(dim, eps=eps) if qk_norm else nn.Identity()
        self.attn: nn.Module = SDPAttention()

    def forward(self, x: torch.Tensor, rope: torch.Tensor, k_lens: torch.Tensor | None) -> torch.Tensor:
        """x: [B, L, dim] → [B, L, dim]."""
        b, s = x.shape[:2]
        q = self.norm_q(self.q(x)).view(b, s, self.num_heads, self.head_dim)
        k = self.norm_k(self.k(x)).view(b, s, self.num_heads, self.head_dim)
        v = self.v(x).view(b, s, self.num_heads, self.head_dim)
        out = self.attn(apply_rope(q, rope), apply_rope(k, rope), v, k_lens)
        return self.o(out.flatten(2))


class WanCrossAttention(nn.Module):
    """Attention from the video tokens to the (embedded, zero-padded) text tokens; no mask, as in the reference."""

    def __init__(self, dim: int, num_heads: int, qk_norm: bool = True, eps: float = 1e-6):
        super().__init__()
        self.num_heads, self.head_dim = num_heads, dim // num_heads
        self.q = nn.Linear(dim, dim)
        self.k = nn.Linear(dim, dim)
        self.v = nn.Linear(dim, dim)
        self.o = nn.Linear(dim, dim)
        self.norm_q = WanRMSNorm(dim, eps=eps) if qk_norm else nn.Identity()
        self.norm_k = WanRMSNorm(dim, eps=eps) if qk_norm else nn.Identity()
        self.attn: nn.Module = SDPAttention()

    def forward(self, x: torch.Tensor, context: torch.Tensor) -> torch.Tensor:
        """x: [B, L, dim], context: [B, text_len, dim] → [B, L, dim]."""
        b = x.shape[0]
        q = self.norm_q(self.q(x)).view(b, -1, self.num_heads, self.head_dim)
        k = self.norm_k(self.k(context)).view(b, -1, self.num_heads, self.head_dim)
        v = self.v(context).view(b, -1, self.num_heads, self.head_dim)
        return self.o(self.attn(q, k, v, None).flatten(2))


class WanAttentionBlock(nn.Module):
    """One transformer block: modulated self-attention, cross-attention, modulated FFN."""

    def __init__(self, cfg: DiTConfig):
        super().__init__()
        dim = cfg.dim
        self.norm1 = WanLayerNorm(dim, cfg.eps)
        self.self_attn = WanSelfAttention(dim, cfg.num_heads, cfg.qk_norm, cfg.eps)
        self.norm3 = WanLayerNorm(dim, cfg.eps, elementwise_affine=True) if cfg.cross_attn_norm else nn.Identity()
        self.cross_attn = WanCrossAttention(dim, cfg.num_heads, cfg.qk_norm, cfg.eps)
        self.norm2 = WanLayerNorm(dim, cfg.eps)
        self.ffn = nn.Sequential(nn.Linear(dim, cfg.ffn_dim), nn.GELU(approximate="tanh"), nn.Linear(cfg.ffn_dim, dim))
        self.modulation = nn.Parameter(torch.randn(1, 6, dim) / dim**0.5)

    def forward(self, x: torch.Tensor, e: torch.Tensor, rope: torch.Tensor, context: torch.Tensor,
                k_lens: torch.Tensor | None) -> torch.Tensor:
        """x: [B, L, dim] fp32 residual stream, e: [B, 6, dim] fp32 time projection."""
        shift1, scale1, gate1, shift2, scale2, gate2 = (self.modulation.float() + e.float()).chunk(6, dim=1)
        y = self.self_attn(self.norm1(x).float() * (1 + scale1) + shift1, rope, k_lens)
        x = x + y.float() * gate1
        x = x + self.cross_attn(self.norm3(x), context).float()
        y = self.ffn(self.norm2(x).float() * (1 + scale2) + shift2)
        return x + y.float() * gate2


class Head(nn.Module):
    """Modulated LayerNorm and the output projection to patch pixels (zero-initialised)."""

    def __init__(self, cfg: DiTConfig):
        super().__init__()
        self.norm = WanLayerNorm(cfg.dim, cfg.eps)
        self.head = nn.Linear(cfg.dim, math.prod(cfg.patch_size) * cfg.out_dim)
        self.modulation = nn.Parameter(torch.randn(1, 2, cfg.dim) / cfg.dim**0.5)

    def forward(self, x: torch.Tensor, e: torch.Tensor) -> torch.Tensor:
        """x: [B, L, dim], e: [B, dim] → [B, L, prod(patch)·out_dim] (fp32, as the reference computes it)."""
        shift, scale = (self.modulation.float() + e.float().unsqueeze(1)).chunk(2, dim=1)
        with torch.autocast(x.device.type, enabled=False):
            h = self.norm(x).float() * (1 + scale) + shift
            return F.linear(h, self.head.weight.float(), self.head.bias.float())


class SequenceHooks:
    """What happens to the token sequence between the patch embedding and the head: nothing on one process.

    `enter(tokens, rope, k_lens)` may shard the sequence (and the RoPE table) and returns the three; `leave(out)`
    undoes it on the head's output. trainer.distributed's context parallelism supplies its own.
    """

    def enter(self, tokens: torch.Tensor, rope: torch.Tensor,
              k_lens: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
        """Identity."""
        return tokens, rope, k_lens

    def leave(self, out: torch.Tensor) -> torch.Tensor:
        """Identity."""
        return out


class WanDiT(nn.Module):
    """Wan2.1 text-to-video DiT; `state_dict()` keys and shapes equal the released `diffusion_pytorch_model`."""

    def __init__(self, dim: int = 1536, ffn_dim: int = 8960, freq_dim: int = 256, text_dim: int = 4096,
                 in_dim: int = 16, out_dim: int = 16, num_heads: int = 12, num_layers: int = 30,
                 patch_size: Sequence[int] = (1, 2, 2), text_len: int = 512, qk_norm: bool = True,
                 cross_attn_norm: bool = True, eps: float = 1e-6):
        super().__init__()
        cfg = DiTConfig(dim=dim, ffn_dim=ffn_dim, freq_dim=freq_dim, text_dim=text_dim, in_dim=in_dim,
                        out_dim=out_dim, num_heads=num_heads, num_layers=num_layers, patch_size=tuple(patch_size),
                        text_len=text_len, qk_norm=qk_norm, cross_attn_norm=cross_attn_norm, eps=eps)
        self.config = cfg
        self.patch_embedding = nn.Conv3d(in_dim, dim, kernel_size=cfg.patch_size, stride=cfg.patch_size)
        self.text_embedding = nn.Sequential(nn.Linear(text_dim, dim), nn.GELU(approximate="tanh"),
                                            nn.Linear(dim, dim))
        self.time_embedding = nn.Sequential(nn.Linear(freq_dim, dim), nn.SiLU(), nn.Linear(dim, dim))
        self.time_projection = nn.Sequential(nn.SiLU(), nn.Linear(dim, dim * 6))
        self.blocks = nn.ModuleList([WanAttentionBlock(cfg) for _ in range(num_layers)])
        self.head = Head(cfg)
        self.sequence = SequenceHooks()
        self.init_weights()

    @classmethod
    def from_config(cls, cfg: DiTConfig | dict | str) -> "WanDiT":
        """Build from a DiTConfig, a dict of Wan2.1 keywords, or a preset name ('tiny', '1.3B', '14B')."""
        if isinstance(cfg, str):
            if cfg not in PRESETS:
                raise ValueError(f"unknown DiT preset {cfg!r} (known: {sorted(PRESETS)})")
            cfg = PRESETS[cfg]
        if isinstance(cfg, dict):
            cfg = config_from_dict(cfg)
        return cls(**dataclasses.asdict(cfg))

    def init_weights(self) -> None:
        """The reference's initialisation: Xavier linears, N(0, 0.02) text/time MLPs, zero output head."""
        for m in self.modules():
            if isinstance(m, nn.Linear):
                nn.init.xavier_uniform_(m.weight)
                if m.bias is not None:
                    nn.init.zeros_(m.bias)
        nn.init.xavier_uniform_(self.patch_embedding.weight.flatten(1))
        for m in list(self.text_embedding.modules()) + list(self.time_embedding.modules()):
            if isinstance(m, nn.Linear):
                nn.init.normal_(m.weight, std=0.02)
        nn.init.zeros_(self.head.head.weight)

    def patchify(self, x: list[torch.Tensor], seq_len: int | None) -> tuple[torch.Tensor, list[tuple], torch.Tensor]:
        """Patch-embed a list of [C, F, H, W] latents into zero-padded tokens [B, seq_len, dim] (+ grids, lengths)."""
        emb = [self.patch_embedding(u.unsqueeze(0).to(self.patch_embedding.weight.dtype)) for u in x]
        grids = [tuple(int(s) for s in u.shape[2:]) for u in emb]
        tokens = [u.flatten(2).transpose(1, 2) for u in emb]
        lens = torch.tensor([t.shape[1] for t in tokens], dtype=torch.long, device=tokens[0].device)
        longest = int(lens.max())
        seq_len = longest if seq_len is None else int(seq_len)
        if longest > seq_len:
            raise ValueError(f"a sample has {longest} tokens, more than seq_len={seq_len}")
        tokens = torch.cat([F.pad(t, (0, 0, 0, seq_len - t.shape[1])) for t in tokens])
        return tokens, grids, lens

    def embed_text(self, context: list[torch.Tensor] | torch.Tensor) -> torch.Tensor:
        """Zero-pad each [L, text_dim] text embedding to text_len tokens, then the text MLP: [B, text_len, dim]."""
        n = self.config.text_len
        rows = []
        for u in context:
            if u.shape[0] > n:
                raise ValueError(f"text embedding has {u.shape[0]} tokens, more than text_len={n}")
            rows.append(F.pad(u, (0, 0, 0, n - u.shape[0])))
        return self.text_embedding(torch.stack(rows).to(self.text_embedding[0].weight.dtype))

    def time_features(self, t: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(e [B, dim], e0 [B, 6, dim]) in fp32 for timesteps t ([B], 0..1000)."""
        with torch.autocast(t.device.type, enabled=False):
            w = self.time_embedding[0].weight
            e = self.time_embedding(sinusoidal_embedding(self.config.freq_dim, t).to(w.dtype)).float()
            e0 = self.time_projection(e.to(w.dtype)).float().unflatten(1, (6, self.config.dim))
        return e, e0

    def forward(self, x: list[torch.Tensor] | torch.Tensor, t: torch.Tensor,
                context: list[torch.Tensor] | torch.Tensor, seq_len: int | None = None) -> list[torch.Tensor]:
        """Velocity prediction for each latent in `x` ([C, F, H, W] each, sizes may differ) at timesteps t ([B])
        given text embeddings `context` ([L, text_dim] each); returns a list of [out_dim, F, H, W] fp32 tensors."""
        tokens, grids, lens = self.patchify(list(x), seq_len)
        cfg = self.config
        rope = rope_table(grids, tokens.shape[1], cfg.head_dim, tokens.device)
        e, e0 = self.time_features(t)
        ctx = self.embed_text(context)
        k_lens = lens if bool((lens < tokens.shape[1]).any()) else None
        h, rope, k_lens = self.sequence.enter(tokens.float(), rope, k_lens)
        for block in self.blocks:
            h = block(h, e0, rope, ctx, k_lens)
        out = self.sequence.leave(self.head(h, e))
        return self.unpatchify(out, grids)

    def unpatchify(self, out: torch.Tensor, grids: list[tuple]) -> list[torch.Tensor]:
        """[B, L, prod(patch)·C] head output → list of [C, F·pt, H·ph, W·pw] tensors (padding dropped)."""
        c = self.config.out_dim
        pt, ph, pw = self.config.patch_size
        videos = []
        for u, (f, h, w) in zip(out, grids):
            u = u[: f * h * w].view(f, h, w, pt, ph, pw, c)
            videos.append(torch.einsum("fhwpqrc->cfphqwr", u).reshape(c, f * pt, h * ph, w * pw))
        return videos


def count_parameters(model: nn.Module) -> int:
    """Number of parameters (the released 1.3B config has 1,418,996,800)."""
    return sum(p.numel() for p in model.parameters())
