"""Training clips from curated manifests: read rows, decode a frame window, resize/crop, normalise to [-1, 1].

`OUT/stages/<stage>/part-*.parquet` rows carry a sampling `weight`; `OUT/samples` rows are used when `status` is
`kept`, uniformly. Each sample is a pure function of (seed, index), so a resumed run sees exactly the clips an
uninterrupted run would have seen, whatever the number of loader workers.
"""

from __future__ import annotations

import glob
import math
import os

import numpy as np
import pandas as pd
import torch

COLUMNS = ("source_uri", "media_type", "start_frame", "end_frame", "fps", "width", "height")  # rotation: optional


def _read_parquet_dir(path: str) -> pd.DataFrame:
    files = sorted(glob.glob(os.path.join(path, "**", "*.parquet"), recursive=True))
    if not files:
        raise FileNotFoundError(f"no parquet files under {path}")
    return pd.concat([pd.read_parquet(f) for f in files], ignore_index=True)


def _check_columns(df: pd.DataFrame, where: str) -> None:
    missing = [c for c in COLUMNS if c not in df.columns]
    if missing:
        raise ValueError(f"{where}: manifest lacks columns {missing}")


def read_stage_rows(stages_dir: str, stage_names: list[str] | None = None) -> pd.DataFrame:
    """Rows of the named stages (all stage folders, sorted, when None), with `stage` and `weight` columns."""
    if not os.path.isdir(stages_dir):
        raise FileNotFoundError(f"stages folder not found: {stages_dir}")
    if stage_names is None:
        stage_names = sorted(d for d in os.listdir(stages_dir) if os.path.isdir(os.path.join(stages_dir, d)))
    if not stage_names:
        raise FileNotFoundError(f"no stage folders under {stages_dir}")
    frames = []
    for name in stage_names:
        df = _read_parquet_dir(os.path.join(stages_dir, name))
        _check_columns(df, f"{stages_dir}/{name}")
        df = df.copy()
        df["stage"] = name
        if "weight" not in df.columns:
            df["weight"] = 1.0
        frames.append(df)
    rows = pd.concat(frames, ignore_index=True)
    if "status" in rows.columns:
        rows = rows[rows["status"].fillna("kept") == "kept"]
    return rows.reset_index(drop=True)


def read_manifest_rows(samples_dir: str) -> pd.DataFrame:
    """The `kept` rows of a samples manifest, each with weight 1."""
    if not os.path.isdir(samples_dir):
        raise FileNotFoundError(f"manifest folder not found: {samples_dir}")
    df = _read_parquet_dir(samples_dir)
    _check_columns(df, samples_dir)
    if "status" in df.columns:
        df = df[df["status"] == "kept"]
    df = df.copy()
    df["weight"] = 1.0
    df["stage"] = "samples"
    return df.reset_index(drop=True)


def cover_short_side(width: int, height: int, out_h: int, out_w: int) -> int:
    """The short side at which a width x height picture just covers out_h x out_w (decode no larger than that)."""
    scale = max(out_h / height, out_w / width)
    return max(2, int(math.ceil(min(width, height) * scale)))


def read_row_frames(row, indices: list[int], out_h: int, out_w: int, max_pixels: int = 8192 * 8192,
                    timeout_s: float = 120.0) -> np.ndarray:
    """Frames `indices` of a manifest row (its one frame for an image) as uint8 (T, H, W, 3), decoded by curation's
    decoder (`curation.ingest.row_clip`: same frame counting, rotation and fallbacks as the frames it was scored on)
    at the smallest size that still covers out_h x out_w."""
    from curation.ingest import row_clip

    w, h = int(row["width"]), int(row["height"])
    return row_clip(dict(row), indices, cover_short_side(w, h, out_h, out_w), max_pixels, timeout_s)


def resize_crop(frames: np.ndarray, height: int, width: int, rng: np.random.Generator | None) -> np.ndarray:
    """Scale so the frame covers (height, width), then crop (random offset with `rng`, centred without)."""
    import cv2

    h, w = frames.shape[1:3]
    scale = max(height / h, width / w)
    nh, nw = max(height, round(h * scale)), max(width, round(w * scale))
    if (nh, nw) != (h, w):
        interp = cv2.INTER_AREA if scale < 1 else cv2.INTER_LINEAR
        frames = np.stack([cv2.resize(f, (nw, nh), interpolation=interp) for f in frames])
    if rng is None:
        top, left = (nh - height) // 2, (nw - width) // 2
    else:
        top, left = int(rng.integers(0, nh - height + 1)), int(rng.integers(0, nw - width + 1))
    return frames[:, top : top + height, left : left + width]


def frame_stride(row_fps: float | None, target_fps: float | None) -> int:
    """Source frames per training frame when resampling to `target_fps` (1 when either is unknown)."""
    if not target_fps or not row_fps or row_fps != row_fps:
        return 1
    return max(1, int(round(row_fps / target_fps)))


def select_rows(rows: pd.DataFrame, frames: int, media: str, target_fps: float | None) -> pd.DataFrame:
    """Rows usable for a phase: images only for 1-frame phases, videos with enough frames for the window; a clip
    present in several stages counts once (the first stage's row and weight)."""
    if media not in ("image", "video", "any"):
        raise ValueError(f"media must be image, video or any, got {media!r}")
    df = rows.copy()
    is_image = df["media_type"] == "image"
    if frames > 1 and media == "image":
        raise ValueError("an image phase must have frames: 1")
    if frames > 1 or media == "video":
        df = df[~is_image]
    elif media == "image":
        df = df[is_image]
    n_avail = (df["end_frame"].fillna(1) - df["start_frame"].fillna(0)).astype(int)
    strides = [frame_stride(f, target_fps) for f in df["fps"]]
    need = [(frames - 1) * s + 1 for s in strides]
    ok = (df["media_type"] == "image") | (n_avail.to_numpy() >= np.asarray(need))
    df = df[ok]
    df = df[df["weight"].fillna(0) > 0]
    # A clip that several stage folders hold is one sample: pooled, it would be drawn once per folder.
    key = (df["source_uri"].astype(str) + ":" + df["start_frame"].astype(str) + ":" + df["end_frame"].astype(str))
    if "sample_id" in df.columns:
        key = df["sample_id"].where(df["sample_id"].notna(), key).astype(str)
    return df[~key.duplicated(keep="first").to_numpy()].reset_index(drop=True)


class ClipDataset(torch.utils.data.Dataset):
    """Map-style dataset: index i -> one (3, frames, height, width) clip in [-1, 1], sampled by row weight."""

    def __init__(self, rows: pd.DataFrame, frames: int, height: int, width: int, seed: int = 0,
                 target_fps: float | None = None, length: int = 1 << 30, random_crop: bool = True):
        if rows.empty:
            raise ValueError("no manifest rows fit this phase (check media type, clip length and weights)")
        self.rows = rows.reset_index(drop=True)
        self.frames, self.height, self.width = frames, height, width
        self.seed, self.target_fps, self.length, self.random_crop = seed, target_fps, length, random_crop
        w = self.rows["weight"].astype(float).to_numpy()
        self.cdf = np.cumsum(w / w.sum())
        self.cdf[-1] = 1.0

    def __len__(self) -> int:
        return self.length

    def window(self, row, rng: np.random.Generator) -> list[int]:
        """Source frame indices of one training window inside the row's clip."""
        if row["media_type"] == "image":
            return [0]
        start = int(row["start_frame"] if row["start_frame"] == row["start_frame"] else 0)
        end = int(row["end_frame"])
        stride = frame_stride(row["fps"], self.target_fps)
        span = (self.frames - 1) * stride + 1
        first = start + int(rng.integers(0, end - start - span + 1))
        return [first + k * stride for k in range(self.frames)]

    def row_index(self, index: int) -> int:
        """Which row sample `index` uses: weighted systematic sampling, shuffled within blocks of len(rows).

        Each block of n consecutive indices takes n evenly spaced points of the weight CDF (one random offset),
        so every row is drawn in proportion to its weight with far less variance than independent draws (in a
        block, a row of weight share s appears floor(n*s) or ceil(n*s) times), and a random affine bijection of
        the positions shuffles them, all in O(log n) per sample without storing a permutation.
        """
        n = len(self.rows)
        block, k = divmod(int(index), n)
        rng = np.random.default_rng([self.seed, block, 0x5EED])
        offset = rng.random()
        a = int(rng.integers(1, max(2, n)))
        while math.gcd(a, n) != 1:
            a += 1
        pos = (a * k + int(rng.integers(0, n))) % n
        return int(np.searchsorted(self.cdf, (pos + offset) / n, side="right").clip(0, n - 1))

    def __getitem__(self, index: int) -> torch.Tensor:
        """The clip for global sample `index` (deterministic in seed and index)."""
        rng = np.random.default_rng([self.seed, int(index)])
        row = self.rows.iloc[self.row_index(index)]
        pix = read_row_frames(row, self.window(row, rng), self.height, self.width)
        pix = resize_crop(pix, self.height, self.width, rng if self.random_crop else None)
        x = torch.from_numpy(np.ascontiguousarray(pix)).permute(3, 0, 1, 2).float()
        return x / 127.5 - 1.0


class IndexRange(torch.utils.data.Sampler):
    """Indices start..stop-1 in order: sample i of a phase is always the same clip, so resuming is exact."""

    def __init__(self, start: int, stop: int):
        self.start, self.stop = start, stop

    def __iter__(self):
        return iter(range(self.start, self.stop))

    def __len__(self) -> int:
        return max(0, self.stop - self.start)
