"""Latent shards written by `trainer.prepare`, read back for training: the only reader of the format.

    LATENTS/prepare.json                        config, VAE id + scaling, text encoder id, text_dim, text_len, counts
    LATENTS/index/part-*.parquet                one row per stage row (ok or failed), each part appears atomically
    LATENTS/shards/<stage>/shard-<tag>-<seq>.safetensors   tensors "latent.<sample_id>" and "text.<sample_id>"

Index columns (`INDEX_SCHEMA`): sample_id, stage, bucket ("FxHxW" in pixels), weight (the stage mix weight),
latent_shape [C, F', H', W'], text_tokens, shard (relative to LATENTS; null when failed), caption, caption_source,
cluster_id (nullable), status ("ok" | "failed"), error (null when ok).

Latents are the VAE posterior mean normalised per channel ((mu - mean) / std); text is the encoder's last hidden
state of the caption's valid tokens, [text_tokens, text_dim]. Both are stored as float32 or bfloat16 (prepare.json
`storage_dtype`). Safetensors only: nothing is unpickled.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import pandas as pd
import pyarrow as pa
import torch

INDEX_DIR = "index"
SHARDS_DIR = "shards"
META_FILE = "prepare.json"
FORMAT_VERSION = 1

INDEX_SCHEMA = pa.schema([
    pa.field("sample_id", pa.string(), nullable=False),
    pa.field("stage", pa.string(), nullable=False),
    pa.field("bucket", pa.string()),
    pa.field("weight", pa.float64()),
    pa.field("latent_shape", pa.list_(pa.int32())),
    pa.field("text_tokens", pa.int32()),
    pa.field("shard", pa.string()),
    pa.field("caption", pa.string()),
    pa.field("caption_source", pa.string()),
    pa.field("cluster_id", pa.int64()),
    pa.field("status", pa.string(), nullable=False),
    pa.field("error", pa.string()),
])
_META_KEYS = ("format_version", "vae", "text_encoder", "text_dim", "text_len", "storage_dtype")


class ShardError(RuntimeError):
    """A latent shard is missing, unreadable or lacks a sample's tensors; the message names the shard and sample."""


class LatentIndexError(ValueError):
    """LATENTS is not a prepared latent folder (no prepare.json, no index, or an index with the wrong columns)."""


def latent_key(sample_id: str) -> str:
    """Tensor name of a sample's latent inside its shard."""
    return f"latent.{sample_id}"


def text_key(sample_id: str) -> str:
    """Tensor name of a sample's text embedding inside its shard."""
    return f"text.{sample_id}"


def index_parts(latents_dir: str | os.PathLike) -> list[Path]:
    """Completed index part files (temporary files are hidden and ignored)."""
    d = Path(latents_dir) / INDEX_DIR
    return sorted(p for p in d.glob("part-*.parquet") if p.is_file()) if d.is_dir() else []


def read_index(latents_dir: str | os.PathLike) -> pd.DataFrame:
    """Every index row (ok and failed) of a latent folder; an empty frame with the index columns when none.

    A row written twice (a batch retried after its actor died past the write) is kept once, `ok` first."""
    import pyarrow.parquet as pq

    parts = index_parts(latents_dir)
    if not parts:
        return INDEX_SCHEMA.empty_table().to_pandas()
    tables = []
    for p in parts:
        t = pq.read_table(p)
        missing = [f.name for f in INDEX_SCHEMA if f.name not in t.column_names]
        if missing:
            raise LatentIndexError(f"{p}: index part lacks columns {missing}")
        tables.append(t.select(INDEX_SCHEMA.names).cast(INDEX_SCHEMA))
    df = pa.concat_tables(tables).to_pandas(types_mapper={pa.int64(): pd.Int64Dtype()}.get)
    df = df.sort_values("status", key=lambda s: s != "ok", kind="stable")
    return df.drop_duplicates(["stage", "sample_id"], keep="first").reset_index(drop=True)


class LatentIndex:
    """The prepared rows of a latent folder and a loader of their tensors."""

    def __init__(self, root: Path, meta: dict, rows: pd.DataFrame, failed: pd.DataFrame):
        self.root, self.meta, self.rows, self.failed = root, meta, rows, failed
        self.text_dim = int(meta["text_dim"])
        # A row in two stages (e.g. a joint stage and the high-quality one) has one entry per stage, each with its
        # own bucket and shard: look rows up by (stage, sample_id), and by sample_id where that is unambiguous.
        self._by_key = rows.set_index(["stage", "sample_id"])
        counts = rows["sample_id"].value_counts()
        self._stage_of = {sid: st for st, sid in zip(rows["stage"], rows["sample_id"]) if counts[sid] == 1}
        self._multi = set(counts[counts > 1].index)

    @classmethod
    def open(cls, latents_dir: str | os.PathLike) -> "LatentIndex":
        """Validate prepare.json and the index of `latents_dir`; `.rows` are the ok rows, `.failed` the others."""
        root = Path(latents_dir)
        meta_path = root / META_FILE
        if not meta_path.is_file():
            raise LatentIndexError(f"{root}: no {META_FILE} (run `python -m trainer.prepare` first)")
        try:
            meta = json.loads(meta_path.read_text())
        except json.JSONDecodeError as e:
            raise LatentIndexError(f"{meta_path}: not valid JSON ({e})") from None
        missing = [k for k in _META_KEYS if k not in meta]
        if missing:
            raise LatentIndexError(f"{meta_path}: lacks {missing}")
        if meta["format_version"] != FORMAT_VERSION:
            raise LatentIndexError(f"{meta_path}: format_version {meta['format_version']}, this reader knows "
                                   f"{FORMAT_VERSION}")
        if not index_parts(root):
            raise LatentIndexError(f"{root}/{INDEX_DIR}: no index parts")
        df = read_index(root)
        ok = df["status"] == "ok"
        rows, failed = df[ok].reset_index(drop=True), df[~ok].reset_index(drop=True)
        bad = rows["shard"].isna() | rows["latent_shape"].isna()
        if bad.any():
            raise LatentIndexError(f"{root}: ok rows without a shard or latent_shape, e.g. "
                                   f"{rows.loc[bad, 'sample_id'].iloc[0]}")
        return cls(root, meta, rows, failed)

    def shard_path(self, shard: str) -> Path:
        """Absolute path of a shard named in the index."""
        return self.root / shard

    def _key(self, item, stage: str | None) -> tuple[str, str]:
        if isinstance(item, tuple):
            return str(item[0]), str(item[1])
        if stage is not None:
            return stage, str(item)
        if item in self._multi:
            raise KeyError(f"sample {item} is in several stages of {self.root}; pass stage= or (stage, sample_id)")
        if item not in self._stage_of:
            raise KeyError(f"sample {item} is not among the ok rows of {self.root}")
        return self._stage_of[item], str(item)

    def load(self, sample_ids: list, stage: str | None = None) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """(latent [C, F, H, W], text [L, text_dim]) per sample, in order; each shard is opened once.

        Items are sample ids (with `stage` when a row is in several stages) or (stage, sample_id) pairs."""
        from safetensors import safe_open

        keys = [self._key(item, stage) for item in sample_ids]
        unknown = [k for k in keys if k not in self._by_key.index]
        if unknown:
            raise KeyError(f"not among the ok rows of {self.root}: {unknown[:5]}")
        by_shard: dict[str, list[int]] = {}
        for i, key in enumerate(keys):
            by_shard.setdefault(str(self._by_key.at[key, "shard"]), []).append(i)
        out: list[tuple[torch.Tensor, torch.Tensor] | None] = [None] * len(sample_ids)
        for shard, positions in by_shard.items():
            path = self.shard_path(shard)
            first = keys[positions[0]][1]
            if not path.is_file():
                raise ShardError(f"shard {path} is missing (sample {first})")
            try:
                with safe_open(str(path), framework="pt") as f:
                    names = set(f.keys())
                    for i in positions:
                        sid = keys[i][1]
                        for key in (latent_key(sid), text_key(sid)):
                            if key not in names:
                                raise ShardError(f"shard {path} has no tensor {key} (sample {sid})")
                        lat, txt = f.get_tensor(latent_key(sid)), f.get_tensor(text_key(sid))
                        want = [int(v) for v in self._by_key.at[keys[i], "latent_shape"]]
                        if list(lat.shape) != want or txt.dim() != 2 or txt.shape[1] != self.text_dim:
                            raise ShardError(f"shard {path}: sample {sid} has latent {tuple(lat.shape)} (index says "
                                             f"{want}) and text {tuple(txt.shape)} (text_dim {self.text_dim})")
                        out[i] = (lat, txt)
            except ShardError:
                raise
            except Exception as e:  # safetensors raises its own error types for a truncated or garbled file
                raise ShardError(f"shard {path} is corrupt or unreadable (sample {first}): "
                                 f"{type(e).__name__}: {e}") from e
        return out  # type: ignore[return-value]
