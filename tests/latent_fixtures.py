"""Write small prepared-latent folders in the documented shard format (random latents and text) for trainer tests."""

from __future__ import annotations

import json
import os

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import torch
from safetensors.torch import save_file


def latent_shape(bucket: str, channels: int = 16) -> list[int]:
    """[C, F', H', W'] of a pixel bucket "FxHxW" under Wan's 4x8x8 VAE."""
    f, h, w = (int(v) for v in bucket.split("x"))
    return [channels, 1 + (f - 1) // 4, h // 8, w // 8]


def write_latents(root: str, rows: list[dict], text_dim: int = 32, text_len: int = 16, channels: int = 16,
                  seed: int = 0, nan_samples: tuple[str, ...] = (), dtype: str = "float32") -> str:
    """A LATENTS folder with one shard per stage; each row dict has sample_id, stage, bucket and optional weight.

    Latents are a per-sample smooth pattern plus noise (so a model can learn something); samples named in
    `nan_samples` get a NaN latent (for the non-finite-loss guard).
    """
    rng = np.random.default_rng(seed)
    os.makedirs(os.path.join(root, "index"), exist_ok=True)
    per_stage: dict[str, dict[str, torch.Tensor]] = {}
    index = []
    tdtype = {"float32": torch.float32, "bfloat16": torch.bfloat16}[dtype]
    for r in rows:
        shape = latent_shape(r["bucket"], channels)
        base = rng.standard_normal((shape[0], 1, 1, 1)).astype(np.float32)
        lat = base + 0.3 * rng.standard_normal(shape).astype(np.float32)
        if r["sample_id"] in nan_samples:
            lat[:] = np.nan
        n_tok = int(rng.integers(1, text_len + 1))
        txt = rng.standard_normal((n_tok, text_dim)).astype(np.float32)
        shard = f"shards/{r['stage']}/shard-test-00000.safetensors"
        per_stage.setdefault(shard, {})
        per_stage[shard][f"latent.{r['sample_id']}"] = torch.from_numpy(lat).to(tdtype)
        per_stage[shard][f"text.{r['sample_id']}"] = torch.from_numpy(txt).to(tdtype)
        index.append(dict(sample_id=r["sample_id"], stage=r["stage"], bucket=r["bucket"],
                          weight=float(r.get("weight", 1.0)), latent_shape=shape, text_tokens=n_tok, shard=shard,
                          caption=f"caption of {r['sample_id']}", caption_source="test", cluster_id=r.get("cluster_id"),
                          status="ok", error=None))
    for shard, tensors in per_stage.items():
        os.makedirs(os.path.dirname(os.path.join(root, shard)), exist_ok=True)
        save_file(tensors, os.path.join(root, shard))
    schema = pa.schema([("sample_id", pa.string()), ("stage", pa.string()), ("bucket", pa.string()),
                        ("weight", pa.float64()), ("latent_shape", pa.list_(pa.int32())),
                        ("text_tokens", pa.int32()), ("shard", pa.string()), ("caption", pa.string()),
                        ("caption_source", pa.string()), ("cluster_id", pa.int64()), ("status", pa.string()),
                        ("error", pa.string())])
    pq.write_table(pa.Table.from_pylist(index, schema=schema), os.path.join(root, "index", "part-test-00000.parquet"))
    meta = dict(format_version=1, vae="test", text_encoder="test", text_dim=text_dim, text_len=text_len,
                storage_dtype=dtype, counts={"ok": len(index), "failed": 0})
    with open(os.path.join(root, "prepare.json"), "w") as fh:
        json.dump(meta, fh)
    return root


def grid_rows(stages: dict[str, list[str]], per_bucket: int = 4, weights: bool = True) -> list[dict]:
    """Rows for `stages` ({stage: [buckets]}): `per_bucket` samples per bucket with varied weights."""
    rows = []
    for stage, buckets in stages.items():
        for b in buckets:
            for i in range(per_bucket):
                rows.append(dict(sample_id=f"{stage}-{b}-{i}", stage=stage, bucket=b,
                                 weight=(0.5 + i % 3) if weights else 1.0, cluster_id=i % 2))
    return rows

