"""The CLIP image tower (open_clip ViT-L/14 or a tiny test tower) that embeds many uint8 frames at once, with its
preprocessing on the device, and the clip embedding (`mean_embedding`) every embedding operator reduces frames with.
Used by `operators.clip_embedding` and `curation heads train`."""

from __future__ import annotations

import contextlib
import logging

import numpy as np

from operators.models.heads import EMBED_DIM

log = logging.getLogger(__name__)

OPENAI_MEAN = (0.48145466, 0.4578275, 0.40821073)
OPENAI_STD = (0.26862954, 0.26130258, 0.27577711)
PRECISIONS = ("bf16", "pure_bf16", "autocast", "fp32")
TINY_ARCH = "tiny-test"  # a 2-layer random ViT with a 768-d output: for plumbing tests only



def _build_visual(arch: str, weights_path: str | None, quick_gelu: bool, precision: str = "fp32"):
    """The image tower of an open_clip model (text tower dropped: it is never used here).

    precision "bf16" is open_clip's (and OpenAI's original) mixed precision: conv/linear/attention weights in bf16,
    LayerNorm kept and computed in fp32; "pure_bf16" casts everything; "fp32"/"autocast" keep fp32 weights.
    """
    import torch
    import open_clip
    from open_clip.model import convert_weights_to_lp
    from open_clip.transformer import LayerNorm, LayerNormFp32, QuickGELU, VisionTransformer

    clip_precision = {"bf16": "bf16", "pure_bf16": "pure_bf16"}.get(precision, "fp32")
    if arch == TINY_ARCH:
        visual = VisionTransformer(image_size=224, patch_size=32, width=64, layers=2, heads=2, mlp_ratio=2.0,
                                   output_dim=EMBED_DIM, act_layer=QuickGELU,
                                   norm_layer=LayerNormFp32 if clip_precision == "bf16" else LayerNorm)
        if clip_precision == "bf16":
            convert_weights_to_lp(visual, dtype=torch.bfloat16)
        elif clip_precision == "pure_bf16":
            visual = visual.to(torch.bfloat16)
        return visual
    # OpenAI weights were trained with QuickGELU; loading them from a file path (not the 'openai' tag) needs the
    # flag forced, or activations silently differ.
    model = open_clip.create_model(arch, pretrained=weights_path, force_quick_gelu=quick_gelu,
                                   pretrained_text=False, load_weights=weights_path is not None,
                                   precision=clip_precision)
    return model.visual


def _resample_matrix(n_in: int, n_out: int) -> np.ndarray:
    """(n_in, n_out) weights of torch's antialiased bicubic resize along one axis: resize(x) = x @ R."""
    import torch
    import torch.nn.functional as F

    if n_in == n_out:
        return np.eye(n_in)
    impulses = torch.eye(n_in, dtype=torch.float64)[None, None]  # row i: a unit impulse at i
    # The other axis stays n_in → n_in, where bicubic at scale 1 is exactly the identity.
    r = F.interpolate(impulses, size=(n_in, n_out), mode="bicubic", antialias=True, align_corners=False)
    return r[0, 0].numpy()


class _Plan:
    """How one frame shape becomes the model's input: the source window to copy and the two resample matrices."""

    def __init__(self, h: int, w: int, s: int, device):
        import torch

        # torchvision Resize(int) semantics (open_clip's eval transform): short side = s, long = int(s*long/short);
        # then a centre crop of s×s.
        nh, nw = (s, int(s * w / h)) if h <= w else (int(s * h / w), s)
        top, left = int(round((nh - s) / 2.0)), int(round((nw - s) / 2.0))
        ry = _resample_matrix(h, nh)[:, top:top + s]  # (h, s)
        rx = _resample_matrix(w, nw)[:, left:left + s]  # (w, s)
        # Only source rows/columns with a non-zero weight reach the crop: copy just that window to the device.
        rows = np.nonzero(np.abs(ry).sum(axis=1) > 0)[0]
        cols = np.nonzero(np.abs(rx).sum(axis=1) > 0)[0]
        self.r0, self.r1, self.c0, self.c1 = int(rows[0]), int(rows[-1]) + 1, int(cols[0]), int(cols[-1]) + 1
        self.wy = torch.tensor(ry[self.r0:self.r1].T, dtype=torch.float32, device=device)  # (s, h')
        self.wx = torch.tensor(rx[self.c0:self.c1], dtype=torch.float32, device=device)  # (w', s)

    def window(self, frames: np.ndarray) -> np.ndarray:
        """The part of (K,H,W,3) frames that the crop depends on, as a (K, h', w'*3) view (no copy): merging
        width and channels makes each copied run a whole window row, which copies several times faster."""
        k, h, w, c = frames.shape
        return frames.reshape(k, h, w * c)[:, self.r0:self.r1, self.c0 * c:self.c1 * c]


class ClipBackbone:
    """A CLIP image tower that embeds many uint8 frames at once.

    Per chunk of `batch_images` frames: only the source window the centre crop depends on is copied into pinned
    host memory, moved to the device on a side stream, resized there (two small matmuls that equal torch's
    antialiased bicubic resize, as open_clip's eval transform does) and normalised — while the previous chunk's
    forward pass runs on the main stream. CPU work and copies hide behind the GPU's.
    """

    def __init__(self, arch: str = "ViT-L-14", weights_path: str | None = None, device: str = "auto",
                 precision: str = "bf16", batch_images: int = 256, channels_last: bool = True,
                 compile: bool | str = False, quick_gelu: bool = True, image_size: int = 224):
        self.arch, self.weights_path, self.precision = arch, weights_path, precision
        self.batch_images, self.channels_last, self.compile = batch_images, channels_last, compile
        self.quick_gelu, self.image_size = quick_gelu, image_size
        self.device_request = device
        self.visual = None

    def load(self) -> None:
        """Build the tower and move it to the device (once per actor)."""
        import torch

        if self.device_request == "auto":
            self.device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
        else:
            self.device = torch.device(self.device_request)
        cuda = self.device.type == "cuda"
        if not cuda and self.precision != "fp32":
            log.info("ClipBackbone on CPU: using fp32 instead of %s", self.precision)
            self.precision = "fp32"
        visual = _build_visual(self.arch, self.weights_path, self.quick_gelu, self.precision)
        visual = visual.eval().to(self.device)
        if self.channels_last:
            visual = visual.to(memory_format=torch.channels_last)
        self.input_dtype = torch.bfloat16 if self.precision in ("bf16", "pure_bf16") else torch.float32
        compile_now = self.compile is True or (self.compile == "auto" and cuda)
        # dynamic=False: a new batch size gets its own static graph instead of slower shape-generic kernels.
        # (CUDA graphs, torch's "reduce-overhead" mode, measured no faster here: 49.6% vs 50.0% of the ceiling.)
        self.visual = torch.compile(visual, dynamic=False) if compile_now else visual
        self.pad_batches = compile_now  # fixed input shapes → a fixed set of compiled graphs
        self.set_batch_images(self.batch_images)
        self.mean = torch.tensor(OPENAI_MEAN, device=self.device) * 255.0
        self.std = torch.tensor(OPENAI_STD, device=self.device) * 255.0
        self._plans: dict[tuple[int, int], _Plan] = {}
        self._staging = [None, None]  # pinned host buffers, double-buffered
        self._staged = [None, None]  # events: the copy out of each buffer has finished
        self._copy_stream = torch.cuda.Stream(self.device) if cuda else None

    def set_batch_images(self, n: int) -> None:
        """Images per forward pass; the first chunk of a call (and the tail chunks) take half as many.

        Why half: on an H100 the host side of a chunk (copying its frame windows into pinned memory, ~21 ms for
        256 frames of 320x568, plus ~19 ms of CPU to launch a compiled ViT-L forward) must fit inside the GPU time
        of the chunk before it. A quarter-size first chunk (64 frames, ~24 ms of GPU) left the GPU idle ~16 ms per
        call; half-size (~49 ms) hides the next chunk's host work (bench/BENCHMARKS.md, embedding)."""
        self.batch_images = int(n)
        self.small_batch = max(1, self.batch_images // 2)

    def plan(self, h: int, w: int) -> _Plan:
        """The cached preprocessing plan for frames of shape (h, w)."""
        key = (h, w)
        if key not in self._plans:
            self._plans[key] = _Plan(h, w, self.image_size, self.device)
        return self._plans[key]

    def preprocess(self, frames: np.ndarray):
        """(K,H,W,3) uint8 → (K,3,S,S) normalised float32 on the device (NCHW view of channels-last memory)."""
        import torch

        p = self.plan(*frames.shape[1:3])
        x = torch.from_numpy(np.ascontiguousarray(p.window(frames))).to(self.device)
        return self._resample(x.view(len(frames), p.r1 - p.r0, p.c1 - p.c0, 3), p)

    def _resample(self, x, p: _Plan):
        import torch

        x = x.float()
        y = torch.einsum("oh,khwc->kowc", p.wy, x)  # resize + crop rows
        y = torch.einsum("kowc,wp->kopc", y, p.wx)  # resize + crop columns
        y = y.clamp_(0.0, 255.0).round_()  # PIL-based transforms see uint8 images: match rounding and clipping
        y = (y - self.mean) / self.std
        return y.permute(0, 3, 1, 2)

    def _stage(self, slot: int, windows: list[np.ndarray]):
        """Copy frame windows into pinned buffer `slot`; return its tensor (CPU device: a plain tensor)."""
        import torch

        total = sum(wi.size for wi in windows)
        if self.device.type != "cuda":
            return torch.from_numpy(np.concatenate([wi.ravel() for wi in windows]))
        if self._staged[slot] is not None:
            self._staged[slot].synchronize()  # the previous copy out of this buffer must be done
        buf = self._staging[slot]
        if buf is None or buf.numel() < total:
            buf = self._staging[slot] = torch.empty(int(total * 1.25), dtype=torch.uint8, pin_memory=True)
        host = buf.numpy()
        off = 0
        for wi in windows:
            np.copyto(host[off:off + wi.size].reshape(wi.shape), wi)
            off += wi.size
        return buf[:total]

    def embed(self, frames_per_row: list[np.ndarray]) -> list[np.ndarray]:
        """Raw (unnormalised) image embeddings per row, float32 (K_i, D), all rows' frames batched together."""
        import torch

        counts = [len(f) for f in frames_per_row]
        chunks = self._chunks(counts)
        cuda = self.device.type == "cuda"
        main = torch.cuda.current_stream(self.device) if cuda else None
        outs = []
        with torch.inference_mode():
            for ci, chunk in enumerate(chunks):
                plans = [self.plan(*frames_per_row[r].shape[1:3]) for r, _, _ in chunk]
                windows = [p.window(frames_per_row[r][a:b]) for p, (r, a, b) in zip(plans, chunk)]
                host = self._stage(ci % 2, windows)
                with torch.cuda.stream(self._copy_stream) if cuda else contextlib.nullcontext():
                    dev = host.to(self.device, non_blocking=True)
                    if cuda:
                        self._staged[ci % 2] = torch.cuda.Event()
                        self._staged[ci % 2].record(self._copy_stream)
                    parts, off = [], 0
                    for p, wi in zip(plans, windows):
                        shape = (wi.shape[0], p.r1 - p.r0, p.c1 - p.c0, 3)
                        parts.append(self._resample(dev[off:off + wi.size].view(shape), p))
                        off += wi.size
                    pixels = torch.cat(parts).to(self.input_dtype)
                    n = len(pixels)
                    if self.pad_batches:  # compiled: only two input shapes ever reach the tower
                        size = self.small_batch if n <= self.small_batch else self.batch_images
                        pixels = torch.cat([pixels, pixels.new_zeros((size - n, *pixels.shape[1:]))])
                    if self.channels_last:
                        pixels = pixels.contiguous(memory_format=torch.channels_last)
                if cuda:
                    main.wait_stream(self._copy_stream)  # this chunk's pixels are ready before its forward
                    pixels.record_stream(main)  # made on the side stream, consumed on the main one
                outs.append(self.forward(pixels)[:n])
            emb = torch.cat(outs).float().cpu().numpy()
        return list(np.split(emb, np.cumsum(counts)[:-1]))

    def _chunks(self, counts: list[int]) -> list[list[tuple[int, int, int]]]:
        """Split rows' frames into (row, start, end) pieces per forward pass. The first chunk is half of
        `batch_images` so the GPU starts after a short host copy; later copies hide behind earlier forwards."""
        total = sum(counts)
        caps = [self.small_batch] if total > self.batch_images else []
        while total - sum(caps) >= self.batch_images:
            caps.append(self.batch_images)
        rest = total - sum(caps)
        if rest and self.pad_batches:
            # Compiled towers take two shapes only: finish with small chunks rather than pad a big one.
            caps += [self.small_batch] * -(-rest // self.small_batch)
        elif rest:
            caps.append(rest)
        chunks: list[list[tuple[int, int, int]]] = [[] for _ in caps]
        ci, room = 0, caps[0]
        for r, n in enumerate(counts):
            a = 0
            while a < n:
                if room == 0:
                    ci += 1
                    room = caps[ci]
                take = min(n - a, room)
                chunks[ci].append((r, a, a + take))
                a += take
                room -= take
        return [c for c in chunks if c]

    def forward(self, pixels):
        """One forward pass of the tower at the configured precision."""
        import torch

        if self.precision == "autocast" and self.device.type == "cuda":
            with torch.autocast("cuda", dtype=torch.bfloat16):
                return self.visual(pixels)
        return self.visual(pixels.to(self.input_dtype))


def mean_embedding(per_frame: np.ndarray) -> np.ndarray:
    """The clip embedding: mean of L2-normalised frame embeddings, re-normalised to unit length."""
    x = np.asarray(per_frame, dtype=np.float32)
    x = x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)
    m = x.mean(axis=0)
    return (m / max(float(np.linalg.norm(m)), 1e-12)).astype(np.float32)
