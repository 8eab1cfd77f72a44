"""Image embeddings of each row's `frames`: CLIP ViT-L/14 on GPU actors (full profile), a classical descriptor
(offline profile), and the perceptual hash used for near-duplicate detection.

`embedding` is the mean of the L2-normalised per-frame embeddings, re-normalised to unit length, so cosine
similarity is a dot product for clustering and dedup whichever backbone made it. The raw per-frame CLIP
embeddings (unnormalised, what UnivFD-style probes expect) are what the heads consume: by default the heads run in
the same actor, right after the backbone, so embeddings never leave it; `keep_frame_embeddings: true` also emits
them as the intermediate column `clip_frame_embeddings` (float32 (K, 768)) for a separate `clip_heads` operator.
That column is a frame view in spirit: the graph drops it before anything is written.
"""

from __future__ import annotations

import contextlib
import logging
from typing import Any, ClassVar

import numpy as np
import pyarrow as pa

from curation.operator import Operator, OperatorConfigError, Resources
from operators.heads import EMBED_DIM, HeadSet

log = logging.getLogger(__name__)

FRAME_EMBEDDINGS_COLUMN = "clip_frame_embeddings"
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


class ClipEmbedding(Operator):
    """CLIP ViT-L/14 image embeddings of `frames` plus the configured heads, in one GPU actor."""

    name: ClassVar[str] = "embedding"
    needs: ClassVar[tuple[str, ...]] = ("frames",)
    produces: ClassVar[dict[str, pa.DataType]] = {"embedding": pa.list_(pa.float32())}  # + heads, per instance
    models: ClassVar[tuple[str, ...]] = ("clip-vit-l-14",)
    stateful: ClassVar[bool] = True
    # Fractional so that other GPU operators (captioner, NSFW) can share the card. Several replicas of *this* actor
    # on one card measured slower than one (CUDA context time-slicing, bench/BENCHMARKS.md): give the pool
    # one actor per GPU (`concurrency` = number of GPUs); the pipelined chunks already overlap copies and compute.
    default_resources: ClassVar[Resources] = Resources(num_cpus=1, num_gpus=0.25)
    # 144 rows × K=8 frames = 1,152 images = one 128-image chunk (short host copy before the GPU starts) + four
    # 256-image chunks whose copies hide behind the previous forward; no padding for the compiled shapes, and the
    # GPU's idle time between two calls (results back, next batch's first copy) spread over more images.
    default_batch_size: ClassVar[int] = 144
    params: ClassVar[dict[str, Any]] = {
        "arch": "ViT-L-14",
        "weights": "clip-vit-l-14",  # registry key or a file path; null = random weights (tests/benchmarks only)
        "allow_random_weights": False,
        "heads": ["aesthetic"],
        "head_paths": {},
        "aesthetic_reduce": "mean",
        "batch_images": 256,
        # "bf16": open_clip's mixed precision (bf16 weights, fp32 LayerNorm) — measured 1.4× the throughput of
        # "autocast" (fp32 weights under torch.autocast) on an H100, see bench/BENCHMARKS.md; "pure_bf16"
        # also casts LayerNorm; "fp32". CPU always runs fp32.
        "precision": "bf16",
        "channels_last": True,
        "compile": "auto",  # torch.compile on CUDA: ≈30 s per actor and batch shape, once; +35% images/s measured
        "keep_frame_embeddings": False,
        "model_dir": None,
        "device": "auto",
    }

    def validate(self) -> None:
        """Check params; derive this instance's output columns and model keys from its heads."""
        c = self.config
        HeadSet.validate(c["heads"], c["head_paths"], c["aesthetic_reduce"], self.name)
        if c["weights"] is None and not c["allow_random_weights"]:
            raise OperatorConfigError(f"operator '{self.name}': weights is null; random weights need "
                                      "allow_random_weights: true (tests and benchmarks only)")
        if c["precision"] not in PRECISIONS:
            raise OperatorConfigError(f"operator '{self.name}': precision must be one of {PRECISIONS}")
        if c["compile"] not in (True, False, "auto"):
            raise OperatorConfigError(f"operator '{self.name}': compile must be true, false or auto")
        if int(c["batch_images"]) < 1:
            raise OperatorConfigError(f"operator '{self.name}': batch_images must be ≥ 1")
        self.heads = HeadSet(c["heads"], c["head_paths"], c["aesthetic_reduce"], c["model_dir"])
        self.produces = {"embedding": pa.list_(pa.float32()), **self.heads.columns()}
        if c["keep_frame_embeddings"]:
            self.produces[FRAME_EMBEDDINGS_COLUMN] = pa.list_(pa.list_(pa.float32()))
        backbone = (c["weights"],) if c["weights"] and "/" not in str(c["weights"]) else ()
        self.models = backbone + self.heads.model_keys()

    def setup(self) -> None:
        """Resolve weights through the registry and load backbone and heads (once per actor)."""
        from curation import models

        c = self.config
        weights = c["weights"]
        if weights and "/" not in str(weights):
            weights = str(models.resolve(weights, c["model_dir"]))
        if weights is None:
            log.warning("operator %s: RANDOM WEIGHTS — embeddings and head scores are meaningless", self.name)
        self.backbone = ClipBackbone(arch=c["arch"], weights_path=weights, device=c["device"],
                                     precision=c["precision"], batch_images=int(c["batch_images"]),
                                     channels_last=c["channels_last"], compile=c["compile"])
        self.backbone.load()
        self.heads.load()

    def score_rows(self, rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
        """Embed all rows' frames in one batched pass, then score the heads per clip."""
        frames = []
        for r in rows:
            f = np.asarray(r["frames"])
            if f.ndim != 4 or f.shape[-1] != 3 or f.dtype != np.uint8 or len(f) == 0:
                raise ValueError(f"frames must be uint8 (K,H,W,3) with K ≥ 1, got {f.dtype} {f.shape}")
            frames.append(f)
        per_frame = self.backbone.embed(frames)
        head_scores = self.heads.score(per_frame)
        out = []
        for emb, scores in zip(per_frame, head_scores):
            row = {"embedding": mean_embedding(emb), **scores}
            if self.config["keep_frame_embeddings"]:
                row[FRAME_EMBEDDINGS_COLUMN] = emb
            out.append(row)
        return out

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        out = super().__call__(batch)
        if self.config["keep_frame_embeddings"]:
            # The base class turns list columns into Python lists; keep the (K, 768) blocks as float32 arrays so
            # Ray carries them as a tensor column instead of nested lists of doubles.
            col = out[FRAME_EMBEDDINGS_COLUMN]
            fixed = np.empty(len(col), dtype=object)
            for i, v in enumerate(col):
                fixed[i] = None if v is None else np.asarray(v, dtype=np.float32)
            out[FRAME_EMBEDDINGS_COLUMN] = fixed
        return out


# -- offline profile: a classical descriptor ----------------------------------------------------------------------

# Block layout of the descriptor (dimension 260). Each block is L2-normalised and weighted so that no block dominates
# by its size; histograms are square-rooted first (Hellinger) so a few dominant bins do not swamp the rest.
DESCRIPTOR_BLOCKS = {
    "hsv_hist": 8 * 4 * 4,  # joint hue × saturation × value histogram: global colour
    "grad_orient": 9 * 2 * 2,  # magnitude-weighted unsigned gradient orientations in 2×2 cells: texture/edges
    "gray_layout": 8 * 8,  # zero-mean, unit-variance 8×8 grey thumbnail: spatial layout
    "chroma_layout": 4 * 4 * 2,  # Lab a/b on a 4×4 grid, centred on grey: where the colours are
}
DESCRIPTOR_DIM = sum(DESCRIPTOR_BLOCKS.values())
_BLOCK_WEIGHTS = {"hsv_hist": 1.0, "grad_orient": 1.0, "gray_layout": 1.0, "chroma_layout": 0.7}


def _unit(v: np.ndarray) -> np.ndarray:
    return v / max(float(np.linalg.norm(v)), 1e-12)


def describe_frame(rgb: np.ndarray) -> np.ndarray:
    """Classical descriptor of one RGB uint8 frame (DESCRIPTOR_DIM,), unit length."""
    import cv2

    h, w = rgb.shape[:2]
    scale = 128.0 / min(h, w)
    small = cv2.resize(rgb, (max(1, round(w * scale)), max(1, round(h * scale))), interpolation=cv2.INTER_AREA)
    hsv = cv2.cvtColor(small, cv2.COLOR_RGB2HSV)
    hist = cv2.calcHist([hsv], [0, 1, 2], None, [8, 4, 4], [0, 180, 0, 256, 0, 256]).ravel()
    hsv_block = _unit(np.sqrt(hist / max(hist.sum(), 1.0)))

    gray = cv2.cvtColor(small, cv2.COLOR_RGB2GRAY).astype(np.float32)
    gx = cv2.Sobel(gray, cv2.CV_32F, 1, 0, ksize=3)
    gy = cv2.Sobel(gray, cv2.CV_32F, 0, 1, ksize=3)
    mag, ang = cv2.cartToPolar(gx, gy, angleInDegrees=True)
    bins = (np.mod(ang, 180.0) / 20.0).astype(np.int32).clip(0, 8)
    gh, gw = gray.shape
    cells = []
    for cy in range(2):
        for cx in range(2):
            sl = (slice(cy * gh // 2, (cy + 1) * gh // 2), slice(cx * gw // 2, (cx + 1) * gw // 2))
            cells.append(np.bincount(bins[sl].ravel(), weights=mag[sl].ravel(), minlength=9))
    grad = np.concatenate(cells)
    grad_block = _unit(np.sqrt(grad / max(grad.sum(), 1e-6)))

    thumb = cv2.resize(gray, (8, 8), interpolation=cv2.INTER_AREA).ravel()
    layout_block = _unit(thumb - thumb.mean()) if thumb.std() > 1e-3 else np.zeros(64, np.float32)

    lab = cv2.cvtColor(small, cv2.COLOR_RGB2LAB)
    ab = cv2.resize(lab, (4, 4), interpolation=cv2.INTER_AREA)[:, :, 1:].astype(np.float32) - 128.0
    chroma_block = ab.ravel() / 64.0  # not normalised per frame: a grey frame should stay near zero here

    parts = [_BLOCK_WEIGHTS["hsv_hist"] * hsv_block, _BLOCK_WEIGHTS["grad_orient"] * grad_block,
             _BLOCK_WEIGHTS["gray_layout"] * layout_block, _BLOCK_WEIGHTS["chroma_layout"] * chroma_block]
    return _unit(np.concatenate(parts).astype(np.float32))


def describe_frames(frames: np.ndarray) -> np.ndarray:
    """Clip descriptor: mean of per-frame descriptors, unit length (same reduction as the CLIP embedding)."""
    return mean_embedding(np.stack([describe_frame(f) for f in frames]))


class ClassicalDescriptor(Operator):
    """Colour, gradient and layout statistics as `embedding`, so clustering and dedup run without model weights."""

    name: ClassVar[str] = "descriptor"
    needs: ClassVar[tuple[str, ...]] = ("frames",)
    produces: ClassVar[dict[str, pa.DataType]] = {"embedding": pa.list_(pa.float32())}
    stateful: ClassVar[bool] = False
    default_resources: ClassVar[Resources] = Resources(num_cpus=1)
    default_batch_size: ClassVar[int] = 16

    def score_row(self, row: dict[str, Any]) -> dict[str, Any]:
        """Descriptor of the row's frames as `embedding`."""
        frames = np.asarray(row["frames"])
        if frames.ndim != 4 or frames.shape[-1] != 3 or len(frames) == 0:
            raise ValueError(f"frames must be (K,H,W,3) with K ≥ 1, got {frames.shape}")
        return {"embedding": describe_frames(frames)}


class PerceptualHash(Operator):
    """64-bit DCT perceptual hash of the middle frame, as `phash` (uint64 bits stored in an int64)."""

    name: ClassVar[str] = "phash"
    needs: ClassVar[tuple[str, ...]] = ("frames",)
    produces: ClassVar[dict[str, pa.DataType]] = {"phash": pa.int64()}
    default_resources: ClassVar[Resources] = Resources(num_cpus=1)
    default_batch_size: ClassVar[int] = 64

    def score_row(self, row: dict[str, Any]) -> dict[str, Any]:
        """pHash of the middle frame."""
        from curation.dedup import phash64

        frames = np.asarray(row["frames"])
        if frames.ndim != 4 or len(frames) == 0:
            raise ValueError(f"frames must be (K,H,W,3) with K ≥ 1, got {frames.shape}")
        return {"phash": phash64(frames[len(frames) // 2])}
