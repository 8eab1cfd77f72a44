"""Generate videos with a Wan DiT: diffusers' flow-matching schedulers, classifier-free guidance, our VAE, mp4 out.

    python -m trainer.sample --checkpoint DIR --vae Wan2.1_VAE.pth --text-encoder umt5-xxl \\
        --prompt "a red fox runs through fresh snow" --out fox.mp4          # Wan T2V defaults: 50 steps, shift 5, CFG 5

With context parallelism (the video's tokens sharded over processes; same output, less time per video):

    torchrun --standalone --nproc_per_node 2 -m trainer.sample --ulysses 2 ...   # or --ring 2, or both

`DIR` is a folder in the released layout (config.json + diffusion_pytorch_model*.safetensors: a released Wan2.1 T2V
checkpoint, or the EMA export of `trainer.train_dit`). The noise is drawn from a CPU generator seeded with --seed, so a
run is reproducible whatever the device. The scheduler is UniPC (Wan's default solver) or Euler, both from diffusers;
neither is re-implemented here.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
import time
from typing import Any, Callable, Sequence

import numpy as np
import torch

from trainer.flow import NUM_TRAIN_TIMESTEPS

log = logging.getLogger("trainer.sample")

# Wan2.1's negative prompt is Chinese boilerplate about artefacts; this is our own short English equivalent.
DEFAULT_NEGATIVE = ("static, blurry, overexposed, low quality, jpeg artifacts, watermark, subtitles, text, "
                    "deformed, disfigured, extra limbs, bad anatomy, frozen frame, cluttered background")


def make_scheduler(solver: str, shift: float):
    """A diffusers flow-matching scheduler: 'unipc' (UniPCMultistepScheduler with flow sigmas) or 'euler'."""
    if solver == "unipc":
        from diffusers import UniPCMultistepScheduler

        return UniPCMultistepScheduler(num_train_timesteps=NUM_TRAIN_TIMESTEPS, prediction_type="flow_prediction",
                                       use_flow_sigmas=True, flow_shift=shift)
    if solver == "euler":
        from diffusers import FlowMatchEulerDiscreteScheduler

        return FlowMatchEulerDiscreteScheduler(num_train_timesteps=NUM_TRAIN_TIMESTEPS, shift=shift)
    raise ValueError(f"solver must be unipc or euler, got {solver!r}")


def latent_shape(frames: int, height: int, width: int, z_dim: int = 16, temporal: int = 4,
                 spatial: int = 8) -> tuple[int, int, int, int]:
    """[C, F', H', W'] of a video of `frames` (1 + 4k) × height × width (multiples of 16) in Wan's latent space."""
    if (frames - 1) % temporal:
        raise ValueError(f"frames must be 1 + {temporal}k, got {frames}")
    if height % (2 * spatial) or width % (2 * spatial):
        raise ValueError(f"height and width must be multiples of {2 * spatial}, got {height}x{width}")
    return z_dim, 1 + (frames - 1) // temporal, height // spatial, width // spatial


@torch.no_grad()
def denoise(velocity: Callable[[torch.Tensor, torch.Tensor], torch.Tensor], noise: torch.Tensor, steps: int = 50,
            shift: float = 5.0, solver: str = "unipc") -> torch.Tensor:
    """Integrate a velocity field v(x, t) from pure noise (σ = 1) to data (σ = 0) with a diffusers scheduler.

    `velocity(x, t)` takes the current latents [B, ...] and the scheduler's timestep (0..1000) and returns v = ε − x0.
    """
    scheduler = make_scheduler(solver, shift)
    scheduler.set_timesteps(steps, device=noise.device)
    x = noise
    for t in scheduler.timesteps:
        v = velocity(x, t)
        x = scheduler.step(v.to(x.dtype), t, x, return_dict=False)[0]
    return x


@torch.no_grad()
def generate(model: torch.nn.Module, context: Sequence[torch.Tensor], negative: Sequence[torch.Tensor] | None,
             shape: tuple[int, int, int, int], steps: int = 50, shift: float = 5.0, guidance: float = 5.0,
             solver: str = "unipc", seed: int = 0, dtype: torch.dtype = torch.bfloat16) -> list[torch.Tensor]:
    """Latents [C, F', H', W'] (normalised, fp32) for each text embedding of `context`, with CFG against `negative`.

    Conditional and unconditional predictions run as one batch of 2·B. Deterministic for a given seed.
    """
    device = next(model.parameters()).device
    b = len(context)
    gen = torch.Generator("cpu").manual_seed(int(seed))
    noise = torch.randn((b, *shape), generator=gen, dtype=torch.float32).to(device)
    use_cfg = negative is not None and guidance != 1.0
    if use_cfg and len(negative) not in (1, b):
        raise ValueError(f"negative prompts: 1 or {b} embeddings, got {len(negative)}")
    ctx = list(context) + (list(negative) * (b // len(negative)) if use_cfg else [])
    ctx = [c.to(device) for c in ctx]
    autocast = torch.autocast(device.type, dtype=dtype, enabled=dtype != torch.float32)

    def velocity(x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        xs = list(x) + (list(x) if use_cfg else [])
        ts = torch.full((len(xs),), float(t), device=device)
        with autocast:
            out = torch.stack(model(xs, ts, ctx))
        if not use_cfg:
            return out
        cond, uncond = out[:b], out[b:]
        return uncond + guidance * (cond - uncond)

    latents = denoise(velocity, noise, steps=steps, shift=shift, solver=solver)
    return [z.float() for z in latents]


def write_mp4(video: torch.Tensor, path: str, fps: int = 16) -> None:
    """Write a [3, F, H, W] video in [-1, 1] as H.264 mp4 (yuv420p; written to a temporary name, then renamed)."""
    import av

    frames = ((video.clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8).permute(1, 2, 3, 0).cpu().numpy()
    h, w = frames.shape[1:3]
    tmp = os.path.join(os.path.dirname(os.path.abspath(path)), f".{os.path.basename(path)}.tmp.mp4")
    with av.open(tmp, "w") as c:
        s = c.add_stream("libx264", rate=fps, options={"crf": "18"})
        s.width, s.height = w - w % 2, h - h % 2
        s.pix_fmt = "yuv420p"
        for f in frames:
            vf = av.VideoFrame.from_ndarray(np.ascontiguousarray(f[: s.height, : s.width]), format="rgb24")
            c.mux(s.encode(vf))
        c.mux(s.encode(None))
    os.replace(tmp, path)


def _parse(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m trainer.sample", description=__doc__.split("\n")[0])
    p.add_argument("--checkpoint", required=True, help="DiT folder in the released layout (config.json + weights)")
    p.add_argument("--vae", required=True, help="Wan2.1_VAE.pth, or a .safetensors written by trainer.train_vae")
    p.add_argument("--vae-preset", default="wan2.1", help="VAE preset of --vae (wan2.1, or tiny for the demo)")
    p.add_argument("--vae-override", action="append", default=[], metavar="KEY=VALUE",
                   help="VAE config override (e.g. z_dim=16), repeatable")
    p.add_argument("--text-encoder", default="umt5-xxl",
                   help="registry key (umt5-xxl, minilm-l6-v2) or a local folder of a UMT5 encoder + tokenizer")
    p.add_argument("--prompt", action="append", required=True, help="repeatable: one video per prompt")
    p.add_argument("--negative-prompt", default=DEFAULT_NEGATIVE)
    p.add_argument("--out", required=True, help="output .mp4 (several prompts: NAME-0.mp4, NAME-1.mp4, ...)")
    p.add_argument("--frames", type=int, default=81)
    p.add_argument("--height", type=int, default=480)
    p.add_argument("--width", type=int, default=832)
    p.add_argument("--steps", type=int, default=50)
    p.add_argument("--shift", type=float, default=5.0)
    p.add_argument("--guidance", type=float, default=5.0)
    p.add_argument("--solver", choices=("unipc", "euler"), default="unipc")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--fps", type=int, default=16)
    p.add_argument("--device", default="auto")
    p.add_argument("--precision", choices=("bf16", "fp32"), default="bf16")
    rw = p.add_argument_group("prompt rewriting (captioner/rewrite.py, the Wan paper's section 4.5)")
    rw.add_argument("--rewrite", action="store_true", help="rewrite the prompts into training-caption style with an "
                    "instruct LLM before encoding them")
    rw.add_argument("--rewrite-model", default="qwen2.5-7b-instruct", help="registry key or local folder")
    rw.add_argument("--rewrite-language", default="auto", help="auto (each prompt's language), en or zh")
    rw.add_argument("--rewrite-max-new-tokens", type=int, default=256)
    p.add_argument("--ulysses", type=int, default=1, help="context parallelism: Ulysses degree (under torchrun)")
    p.add_argument("--ring", type=int, default=1, help="context parallelism: Ring degree (under torchrun)")
    return p.parse_args(argv)


def rewrite_if_asked(args: argparse.Namespace, device: torch.device) -> list[str]:
    """The prompts to encode: `--prompt` as given, or their rewrites with `--rewrite` (the LLM is freed before the
    DiT loads); a rejected rewrite stops the run with the reason."""
    prompts = list(args.prompt)
    if not args.rewrite:
        return prompts
    from captioner.rewrite import RewriteConfig, rewrite_prompts

    cfg = RewriteConfig(model=args.rewrite_model, language=args.rewrite_language, device=str(device),
                        max_new_tokens=args.rewrite_max_new_tokens,
                        dtype="bfloat16" if args.precision == "bf16" else "float32")
    try:
        rewritten = rewrite_prompts(prompts, cfg)
    except ValueError as exc:
        raise SystemExit(f"--rewrite: {exc}") from None
    for old, new in zip(prompts, rewritten):
        log.info("rewrote %r -> %r", old, new)
    return rewritten


def _vae_overrides(items: list[str]) -> dict:
    from curation.typed import yaml_scalar

    out = {}
    for item in items:
        if "=" not in item:
            raise SystemExit(f"--vae-override {item!r}: expected KEY=VALUE")
        k, v = item.split("=", 1)
        out[k] = yaml_scalar(v)
    return out


def _load(flag: str, fn: Any, *args: Any, **kwargs: Any) -> Any:
    """`fn(*args, **kwargs)`, a model loader; a missing, unreadable or mismatched file stops the run with one line
    naming the flag (OSError: not there; ValueError / RuntimeError: not that model's weights or config)."""
    try:
        return fn(*args, **kwargs)
    except (OSError, ValueError, RuntimeError) as exc:
        text = " ".join(str(exc).split())  # a strict load lists every missing key: one line, cut short
        raise SystemExit(f"{flag}: {text[:400]}{' ...' if len(text) > 400 else ''}") from None


def main(argv: list[str] | None = None) -> int:
    """CLI entry point: text → latents → VAE decode → mp4."""
    args = _parse(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    from trainer.distributed.context_parallel import apply_context_parallel, init_inference_mesh
    from trainer.models.dit.weights import load_wan_dit
    from trainer.models.text import load_text_encoder
    from trainer.models.vae.model import load_wan_vae, vae_config

    device = torch.device("cuda" if args.device == "auto" and torch.cuda.is_available() else
                          ("cpu" if args.device == "auto" else args.device))
    if device.type == "cuda" and "LOCAL_RANK" in os.environ:
        device = torch.device("cuda", int(os.environ["LOCAL_RANK"]))
        torch.cuda.set_device(device)
    mesh = init_inference_mesh(args.ulysses, args.ring, device.type)  # every rank samples the same videos
    rank = torch.distributed.get_rank() if mesh is not None else 0
    dtype = torch.bfloat16 if args.precision == "bf16" else torch.float32
    started = time.monotonic()
    prompts = rewrite_if_asked(args, device)
    model = _load("--checkpoint", load_wan_dit, args.checkpoint, dtype=torch.float32, device=device)
    model.train(False).requires_grad_(False)
    apply_context_parallel(model, mesh)
    vae = _load("--vae", lambda: load_wan_vae(args.vae, vae_config(args.vae_preset,
                                                                     **_vae_overrides(args.vae_override)), device=device))
    vae.train(False).requires_grad_(False)
    cfg = vae.config
    try:  # checked before the text encoder loads: a wrong size costs seconds, not the encoder's load time
        shape = latent_shape(args.frames, args.height, args.width, cfg.z_dim, cfg.temporal_factor,
                             cfg.spatial_factor)
    except ValueError as exc:
        raise SystemExit(f"--frames/--height/--width: {exc}") from None
    if model.config.in_dim != shape[0]:
        raise SystemExit(f"the DiT takes {model.config.in_dim} latent channels, the VAE makes {shape[0]}")
    encoder = _load("--text-encoder", load_text_encoder, args.text_encoder, device=device)
    context = encoder.encode(prompts)
    negative = encoder.encode([args.negative_prompt]) if args.guidance != 1.0 else None
    log.info("loaded in %.1f s; sampling %d video(s) of %s latents", time.monotonic() - started, len(context), shape)
    latents = generate(model, context, negative, shape, steps=args.steps, shift=args.shift, guidance=args.guidance,
                       solver=args.solver, seed=args.seed, dtype=dtype)
    root, ext = os.path.splitext(args.out)
    for i, z in enumerate(latents if rank == 0 else []):  # CP ranks hold the same latents: one writer
        video = vae.decode(z[None].to(device), clamp=True)[0].float()
        path = args.out if len(latents) == 1 else f"{root}-{i}{ext or '.mp4'}"
        write_mp4(video, path, fps=args.fps)
        log.info("wrote %s (%d frames, %dx%d)", path, video.shape[1], video.shape[3], video.shape[2])
    log.info("done in %.1f s", time.monotonic() - started)
    if mesh is not None:
        torch.distributed.destroy_process_group()
    return 0


if __name__ == "__main__":
    sys.exit(main())
