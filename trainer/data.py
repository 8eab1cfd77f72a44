"""Training clips from curated manifests: read rows, decode a frame window, resize/crop, normalise to [-1, 1].

`OUT/stages/<stage>/part-*.parquet` rows carry a sampling `weight`; `OUT/samples` rows are used when `status` is
`kept`, uniformly. Each sample is a pure function of (seed, index), so a resumed run sees exactly the clips an
uninterrupted run would have seen, whatever the number of loader workers.
"""

from __future__ import annotations

import glob
import math
import os
from urllib.parse import urlparse

import numpy as np
import pandas as pd
import torch

COLUMNS = ("source_uri", "media_type", "start_frame", "end_frame", "fps", "width", "height")


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
    df = _read_parquet_dir(samples_dir)
    _check_columns(df, samples_dir)
    if "status" in df.columns:
        df = df[df["status"] == "kept"]
    df = df.copy()
    df["weight"] = 1.0
    df["stage"] = "samples"
    return df.reset_index(drop=True)


def _local_path(uri: str) -> str | None:
    parsed = urlparse(uri)
    if parsed.scheme in ("", "file"):
        return parsed.path if parsed.scheme == "file" else uri
    if len(parsed.scheme) == 1:  # a Windows drive letter, not a scheme
        return uri
    return None


def read_image(uri: str) -> np.ndarray:
    """One RGB image as uint8 (1, H, W, 3)."""
    from PIL import Image

    path = _local_path(uri)
    if path is not None:
        img = Image.open(path)
    else:
        import fsspec

        with fsspec.open(uri, "rb") as fh:
            img = Image.open(fh)
            img.load()
    return np.asarray(img.convert("RGB"))[None]


def _read_video_decord(path: str, indices: list[int]) -> np.ndarray:
    import decord

    vr = decord.VideoReader(path, ctx=decord.cpu(0), num_threads=1)
    return vr.get_batch(indices).asnumpy()


def _read_video_pyav(uri: str, indices: list[int]) -> np.ndarray:
    import av

    path = _local_path(uri)
    if path is None:
        import fsspec

        fh = fsspec.open(uri, "rb").open()
    else:
        fh = path
    wanted = sorted(set(indices))
    got: dict[int, np.ndarray] = {}
    with av.open(fh) as container:
        stream = container.streams.video[0]
        rate = float(stream.average_rate or stream.guessed_rate or 0) or None
        tb = float(stream.time_base)
        start_pts = stream.start_time or 0
        if rate and wanted[0] > 0:
            # Seek to the keyframe before the first wanted frame; then count frames by timestamp.
            container.seek(int(start_pts + (wanted[0] / rate) / tb), stream=stream, backward=True)
        counter = 0
        for frame in container.decode(stream):
            if rate and frame.pts is not None:
                idx = int(round((frame.pts - start_pts) * tb * rate))
            else:
                idx = counter
            counter += 1
            if idx in wanted:
                got[idx] = frame.to_ndarray(format="rgb24")
            if idx >= wanted[-1]:
                break
    if path is None:
        fh.close()
    missing = [i for i in wanted if i not in got]
    if missing:
        raise ValueError(f"{uri}: could not decode frames {missing[:5]}")
    return np.stack([got[i] for i in indices])


def read_video_frames(uri: str, indices: list[int]) -> np.ndarray:
    """Frames `indices` of a video as uint8 (T, H, W, 3): decord for local files, PyAV as the fallback."""
    path = _local_path(uri)
    if path is not None:
        try:
            return _read_video_decord(path, indices)
        except Exception:  # decord lacks some codecs/containers (AV1, odd muxers): PyAV reads those
            pass
    return _read_video_pyav(uri, indices)


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
    """Rows usable for a phase: images only for 1-frame phases, videos with enough frames for the window."""
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
    return df[df["weight"].fillna(0) > 0].reset_index(drop=True)


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
        if row["media_type"] == "image":
            pix = read_image(row["source_uri"])
        else:
            pix = read_video_frames(row["source_uri"], self.window(row, rng))
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
