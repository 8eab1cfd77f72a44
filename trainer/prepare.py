"""From curated stages to training shards: a Ray Data pass that VAE-encodes clips and text-encodes captions.

    python -m trainer.prepare --stages OUT/stages --out LATENTS --config trainer/configs/prepare_demo.yaml

For each row of the configured stages (`OUT/stages/<stage>/part-*.parquet`, kept rows):

    driver: bucket (trainer.data.buckets) + caption (its own, or the fallback built from its fields)
      -> CPU tasks: decode the bucket's frames with curation's decoder (trainer.data.clips.read_row_frames, the
         isolated helper), scale to cover and centre-crop to the bucket
      -> actors (GPU when `compute.num_gpus` > 0): VAE posterior mean, normalised per channel, and the text
         encoder's hidden states, batched per bucket; each call writes one safetensors shard per stage and then
         one index part (both atomically: temp name, then rename)

Layout and columns: `trainer.data.latents` (the reader). Every stage row ends up in the index, `ok` or `failed`
with its error (decode failure, no bucket, empty caption without fallback, encoder error): nothing is dropped.
Resumable: a re-run skips rows already in the index; a shard appears whole before its index part, so an
interrupted call leaves at most an orphan shard that nothing references. A re-run whose VAE, text encoder,
buckets or storage dtype differ from the folder's refuses to mix the two (new --out, or the old config).
"""

from __future__ import annotations

import argparse
import dataclasses
import hashlib
import json
import logging
import math
import os
import secrets
import sys
import time
from pathlib import Path
from typing import Any, Literal

import numpy as np
import pandas as pd
import pyarrow as pa
import torch

from trainer.components.config import ConfigError, load_yaml, to_dict
from trainer.data import latents as fmt
from trainer.data.buckets import Bucket, StageBuckets, assign, stage_buckets
from trainer.models.text.encoder import MAX_TOKENS, TextEncoderConfig, model_folder, model_id

log = logging.getLogger("trainer.prepare")

FALLBACK_SOURCE = "fallback:fields"
VAE_FILE = "vae.safetensors"  # the VAE weights used, when they were initialised here (random, for plumbing)
# Stage-row columns the pass carries (the decode needs the first group; the index and the fallback caption the rest).
_DECODE_COLS = ("source_uri", "media_type", "start_frame", "end_frame", "fps", "width", "height", "rotation")
_ROW_COLS = ("sample_id", "stage", "weight", "cluster_id", "caption", "caption_source")
_FIELD_COLS = ("motion_tier", "camera_motion", "object_motion", "ocr_text", "duration_s")


@dataclasses.dataclass
class VAESection:
    """Which VAE encodes the clips and where its weights come from."""

    preset: str = "wan2.1"
    overrides: dict = dataclasses.field(default_factory=dict)
    # A .pth/.safetensors file, a folder holding Wan2.1_VAE.pth, or a registry key (e.g. wan2.1-t2v-1.3b).
    # None: random init from `seed`, saved as LATENTS/vae.safetensors (plumbing and demos only: says so loudly).
    weights: str | None = None
    seed: int = 0
    # bfloat16: fp32 weights under bf16 autocast with bf16 input, the way the released WanVAE wrapper runs and the
    # configuration bench/vae.py measured (fused Triton kernels, channels-last); float32: plain fp32.
    dtype: Literal["float32", "bfloat16"] = "float32"
    chunk_frames: int = 4


@dataclasses.dataclass
class ComputeSection:
    """How the pass is spread over the cluster."""

    batch_size: int = 8  # rows per encoder call (one shard per stage per call)
    vae_batch: int = 4  # clips per VAE forward (same bucket)
    num_gpus: float = 0.0  # per encoder actor; 0 = CPU actors
    num_cpus: float = 1.0  # per encoder actor
    concurrency: int = 1  # encoder actors
    decode_batch_size: int = 2  # rows per decode task
    decode_cpus: float = 1.0
    decode_timeout_s: float = 120.0
    max_pixels: int = 8192 * 8192


@dataclasses.dataclass
class PrepareConfig:
    """The whole prepare config (YAML)."""

    stages: list[StageBuckets]
    vae: VAESection = dataclasses.field(default_factory=VAESection)
    text_encoder: TextEncoderConfig = dataclasses.field(default_factory=TextEncoderConfig)
    caption_fallback: bool = False  # build a caption from the row's fields when it has none (demo only)
    storage_dtype: Literal["float32", "bfloat16"] = "float32"
    compute: ComputeSection = dataclasses.field(default_factory=ComputeSection)


# ----- config --------------------------------------------------------------------------------------------------


def load_config(path: str, overrides: list[str] = ()) -> PrepareConfig:
    """Read a prepare config, apply `--set dotted.key=value` overrides (YAML scalars), validate; errors name the key."""
    cfg = load_yaml(path, PrepareConfig, overrides)
    validate(cfg)
    return cfg


def validate(cfg: PrepareConfig) -> None:
    """Cross-field checks: stage names unique, buckets the VAE can encode, sane compute numbers."""
    from trainer.models.vae.model import read_vae_config

    if not cfg.stages:
        raise ConfigError("stages: at least one stage is needed")
    names = [s.name for s in cfg.stages]
    if len(set(names)) != len(names):
        raise ConfigError(f"stages: names repeat ({names})")
    vcfg = read_vae_config(cfg.vae.preset, cfg.vae.overrides, "vae")  # errors name the key
    tf, sf = vcfg.temporal_factor, vcfg.spatial_factor
    for i, st in enumerate(cfg.stages):
        for b in stage_buckets(st):
            if (b.frames - 1) % tf or b.height % sf or b.width % sf:
                raise ConfigError(f"stages[{i}] ({st.name}): bucket {b.name} does not fit the VAE "
                                  f"(frames 1 + {tf}k, sides multiples of {sf})")
    if cfg.vae.chunk_frames < tf or cfg.vae.chunk_frames % tf:
        raise ConfigError(f"vae.chunk_frames: must be a positive multiple of {tf}")
    c = cfg.compute
    if c.batch_size < 1 or c.vae_batch < 1 or c.concurrency < 1 or c.decode_batch_size < 1:
        raise ConfigError("compute: batch_size, vae_batch, concurrency and decode_batch_size must be >= 1")
    if c.num_gpus < 0 or c.num_cpus < 0 or c.decode_cpus <= 0:
        raise ConfigError("compute: num_gpus and num_cpus must be >= 0, decode_cpus > 0")


def fingerprint(cfg: PrepareConfig) -> str:
    """Hash of everything that shapes the stored tensors (a folder holds tensors of one fingerprint only)."""
    part = {"stages": to_dict(cfg.stages), "vae": to_dict(cfg.vae), "text_encoder": to_dict(cfg.text_encoder),
            "caption_fallback": cfg.caption_fallback, "storage_dtype": cfg.storage_dtype}
    part["vae"].pop("dtype")  # compute precision is a speed setting; the latents agree within bf16 noise
    part["vae"].pop("chunk_frames")  # any chunking gives the same latents
    return hashlib.sha256(json.dumps(part, sort_keys=True).encode()).hexdigest()[:16]


# ----- captions ------------------------------------------------------------------------------------------------


def _present(v: Any) -> bool:
    return v is not None and not (isinstance(v, float) and math.isnan(v)) and v is not pd.NA


def fallback_caption(row: dict) -> str:
    """A caption made only from the row's own fields (media type, shape, motion, OCR text): no model involved."""
    image = row.get("media_type") == "image"
    w, h = row.get("width"), row.get("height")
    shape = ""
    if _present(w) and _present(h) and w and h:
        shape = "square " if abs(w / h - 1) < 0.1 else ("landscape " if w > h else "portrait ")
    parts = [f"A {shape}{'photo' if image else 'video clip'}"]
    if not image:
        if _present(row.get("duration_s")):
            parts.append(f"of {float(row['duration_s']):.0f} seconds")
        tier = row.get("motion_tier")
        if _present(tier):
            parts.append(f"with {str(tier).replace('_', ' ')} motion")
        cam, obj = row.get("camera_motion"), row.get("object_motion")
        if _present(cam):
            # 0.02 is the motion operator's threshold for a moving camera (operators/motion.py `camera_min`).
            parts.append("; the camera moves" if float(cam) >= 0.02 else "; the camera is still")
        if _present(obj):
            parts.append("and things in the scene move" if float(obj) >= 0.02 else "and the scene is still")
    text = row.get("ocr_text")
    if _present(text) and str(text).strip():
        parts.append(f'; on-screen text: "{" ".join(str(text).split())[:200]}"')
    return " ".join(parts).replace(" ;", ";") + "."


def resolve_caption(row: dict, fallback: bool) -> tuple[str | None, str | None, str | None]:
    """(caption, caption_source, error) of a row: its own caption, else the fallback (when on), else an error."""
    cap = row.get("caption")
    if _present(cap) and str(cap).strip():
        src = row.get("caption_source")
        return str(cap), (str(src) if _present(src) else "manifest"), None
    if fallback:
        return fallback_caption(row), FALLBACK_SOURCE, None
    return None, None, ("empty caption: the row has no caption (caption the stages with `curation caption`, or set "
                        "caption_fallback: true for a demo)")


# ----- models --------------------------------------------------------------------------------------------------


def vae_weights_path(weights: str) -> Path:
    """The weights file named by `vae.weights`: a file, a folder holding Wan2.1_VAE.pth, or a registry key."""
    from curation.models import REGISTRY, resolve

    path = resolve(weights) if weights in REGISTRY else Path(weights).expanduser()
    if path.is_dir():
        path = path / "Wan2.1_VAE.pth"
    if not path.is_file():
        raise FileNotFoundError(f"vae.weights: {path} not found")
    return path


def build_vae(cfg: VAESection, weights_file: str | os.PathLike, device: str | torch.device = "cpu"):
    """The configured VAE with weights from `weights_file` (strict), fp32 weights, eval mode, on `device`."""
    from trainer.models.vae.model import WanVAE, load_state_dict_file, vae_config

    model = WanVAE(vae_config(cfg.preset, **cfg.overrides))
    model.load_state_dict(load_state_dict_file(str(weights_file)), strict=True)
    model = model.to(device=device)
    model.eval()
    model.requires_grad_(False)
    return model


def encode_clips(vae, pixels: torch.Tensor, dtype: str = "float32", chunk_frames: int = 4) -> torch.Tensor:
    """Normalised posterior means (N, z, F', H', W') fp32 of uint8 clips (N, T, H, W, 3) already on the VAE's device."""
    x = pixels.permute(0, 4, 1, 2, 3).float().div_(127.5).sub_(1.0)
    if dtype == "bfloat16":
        with torch.autocast(x.device.type, dtype=torch.bfloat16):
            mu, _ = vae.encode_moments(x.to(torch.bfloat16), chunk_frames=chunk_frames)
    else:
        mu, _ = vae.encode_moments(x, chunk_frames=chunk_frames)
    return vae.normalize_latents(mu.float())


def _prepare_vae(cfg: PrepareConfig, out: Path) -> tuple[Path, dict]:
    """Resolve (or, without weights, create and save) the VAE weights; return (file, record for prepare.json)."""
    from trainer.models.vae.model import WanVAE, vae_config

    vcfg = vae_config(cfg.vae.preset, **cfg.vae.overrides)
    record: dict[str, Any] = {"preset": cfg.vae.preset, "overrides": cfg.vae.overrides, "z_dim": vcfg.z_dim,
                              "temporal_factor": vcfg.temporal_factor, "spatial_factor": vcfg.spatial_factor,
                              "latent_mean": list(vcfg.latent_mean) if vcfg.latent_mean else [0.0] * vcfg.z_dim,
                              "latent_std": list(vcfg.latent_std) if vcfg.latent_std else [1.0] * vcfg.z_dim,
                              "normalisation": "(mu - latent_mean) / latent_std per channel, mu = posterior mean",
                              "dtype": cfg.vae.dtype}
    if cfg.vae.weights:
        path = vae_weights_path(cfg.vae.weights)
        record.update(weights=str(path), source=cfg.vae.weights, random_init=False)
        return path, record
    path = out / VAE_FILE
    if not path.exists():
        from safetensors.torch import save_file

        torch.manual_seed(cfg.vae.seed)
        model = WanVAE(vcfg)
        tmp = out / f".{VAE_FILE}.{secrets.token_hex(4)}.tmp"
        save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(tmp))
        os.replace(tmp, path)
    record.update(weights=VAE_FILE, source=None, random_init=True, seed=cfg.vae.seed,
                  note=f"RANDOM-INIT VAE (no vae.weights given): latents are a deterministic random projection, "
                       f"good for plumbing and the CPU demo only. Decode them with {VAE_FILE} in this folder.")
    return path, record


def _text_record(cfg: TextEncoderConfig) -> dict:
    """text_dim/text_len of the configured encoder from its config file alone (also checks it is on disk)."""
    from transformers import AutoConfig

    folder = model_folder(cfg.model)
    enc = folder / "text_encoder" if (folder / "text_encoder").is_dir() else folder
    mc = AutoConfig.from_pretrained(str(enc), local_files_only=True)
    dim = int(mc.d_model if cfg.kind == "umt5" else mc.hidden_size)
    limit = getattr(mc, "max_position_embeddings", None)
    text_len = min(cfg.max_tokens, int(limit)) if limit else cfg.max_tokens
    return {"kind": cfg.kind, "model": cfg.model, "id": model_id(cfg.model), "folder": str(folder),
            "model_type": mc.model_type, "text_dim": dim, "text_len": text_len,
            "output": "last hidden state of the valid tokens (no padding), [text_tokens, text_dim]",
            "projection": f"none: the DiT's text_dim is {dim} and its text MLP projects it to the model width"}


# ----- Ray stages ----------------------------------------------------------------------------------------------


def _decode(batch: pd.DataFrame, max_pixels: int, timeout_s: float) -> pd.DataFrame:
    """Ray map_batches body (CPU task): the bucket's frames of each row, uint8 (T, H, W, 3), or the decode error."""
    from trainer.data.clips import read_row_frames, resize_crop

    # Ray may hand an all-null string column back as NaN: anything that is not a string means "no error".
    errors = [e if isinstance(e, str) else None for e in batch["error"]]
    pixels, seconds = [], []
    for i, row in enumerate(batch.to_dict("records")):
        t0 = time.perf_counter()
        frames = np.zeros((0, 1, 1, 3), np.uint8)  # an empty array, not None: the column stays a tensor column
        if errors[i] is None:
            b = Bucket.parse(row["bucket"])
            try:
                clip = read_row_frames(row, [int(v) for v in row["indices"]], b.height, b.width, max_pixels,
                                       timeout_s)
                if clip.shape[0] != b.frames:
                    raise ValueError(f"decoded {clip.shape[0]} frames, the bucket needs {b.frames}")
                frames = np.ascontiguousarray(resize_crop(clip, b.height, b.width, None))
            except Exception as exc:  # noqa: BLE001 - one bad clip must not sink the pass: it becomes a failed row
                errors[i] = f"decode: {type(exc).__name__}: {exc}"
        pixels.append(frames)
        seconds.append(time.perf_counter() - t0)
    out = batch.drop(columns=[c for c in _DECODE_COLS + _FIELD_COLS + ("indices",) if c in batch.columns])
    out["error"] = errors
    out["pixels"] = pixels
    out["decode_s"] = seconds
    return out


class _Encode:
    """Ray map_batches body (actor): VAE + text encoder loaded once; each call writes shards, then an index part."""

    def __init__(self, cfg: PrepareConfig, out: str, vae_file: str):
        from trainer.models.text.encoder import build_text_encoder

        self.cfg, self.out = cfg, Path(out)
        self.device = torch.device("cuda" if cfg.compute.num_gpus > 0 else "cpu")
        if self.device.type == "cuda":
            torch.backends.cudnn.benchmark = True  # one bucket shape per call: autotuned conv kernels pay off
        if self.device.type == "cpu" and cfg.compute.num_cpus >= 1:
            torch.set_num_threads(int(cfg.compute.num_cpus))  # no more threads than the CPUs Ray reserved
        self.vae = build_vae(cfg.vae, vae_file, self.device)
        self.text = build_text_encoder(cfg.text_encoder, self.device)
        self.store = getattr(torch, cfg.storage_dtype)
        self.tag = secrets.token_hex(4)  # unique per actor: retries and resumed runs never overwrite a file
        self.seq = 0

    def _encode_video(self, pixels: list[np.ndarray]) -> list[torch.Tensor]:
        x = torch.from_numpy(np.stack(pixels)).to(self.device)  # uint8 over the bus: 4x less than floats
        z = encode_clips(self.vae, x, self.cfg.vae.dtype, self.cfg.vae.chunk_frames)
        return [t.to(self.store).cpu().contiguous() for t in z]

    def __call__(self, batch: pd.DataFrame) -> pd.DataFrame:
        t_start = time.perf_counter()
        n = len(batch)
        errors = [e if isinstance(e, str) else None for e in batch["error"]]
        latents: list[torch.Tensor | None] = [None] * n
        texts: list[torch.Tensor | None] = [None] * n
        t0 = time.perf_counter()
        by_bucket: dict[str, list[int]] = {}
        for i in range(n):
            if errors[i] is None:
                by_bucket.setdefault(batch["bucket"].iloc[i], []).append(i)
        for bucket, rows in by_bucket.items():
            for k in range(0, len(rows), self.cfg.compute.vae_batch):
                chunk = rows[k : k + self.cfg.compute.vae_batch]
                try:
                    for i, z in zip(chunk, self._encode_video([batch["pixels"].iloc[i] for i in chunk])):
                        latents[i] = z
                except Exception as exc:  # noqa: BLE001 - e.g. out of memory on a huge bucket: rows fail, pass goes on
                    for i in chunk:
                        errors[i] = f"vae: {type(exc).__name__}: {exc}"
        if self.device.type == "cuda":
            torch.cuda.synchronize()
        t_vae = time.perf_counter() - t0
        t0 = time.perf_counter()
        ready = [i for i in range(n) if errors[i] is None]
        try:
            for i, e in zip(ready, self.text.encode([batch["caption"].iloc[i] for i in ready])):
                texts[i] = e.to(self.store).contiguous()
        except Exception as exc:  # noqa: BLE001
            for i in ready:
                errors[i] = f"text: {type(exc).__name__}: {exc}"
        t_text = time.perf_counter() - t0
        t0 = time.perf_counter()
        index = self._write(batch, errors, latents, texts)
        t_write = time.perf_counter() - t0
        index["decode_s"] = batch["decode_s"].to_numpy()
        index["vae_s"] = t_vae / n
        index["text_s"] = t_text / n
        index["write_s"] = t_write / n
        index["call_s"] = (time.perf_counter() - t_start) / n
        return index

    def _write(self, batch: pd.DataFrame, errors: list, latents: list, texts: list) -> pd.DataFrame:
        """Shards first (one per stage in the batch), then the index part naming them, each atomically."""
        from safetensors.torch import save_file

        from curation.manifest import write_table_atomic

        seq, self.seq = self.seq, self.seq + 1
        ok = [i for i in range(len(batch)) if errors[i] is None and latents[i] is not None and texts[i] is not None]
        shard_of: dict[int, str] = {}
        for stage in sorted({batch["stage"].iloc[i] for i in ok}):
            rel = f"{fmt.SHARDS_DIR}/{stage}/shard-{self.tag}-{seq:05d}.safetensors"
            tensors = {}
            for i in ok:
                if batch["stage"].iloc[i] == stage:
                    sid = batch["sample_id"].iloc[i]
                    tensors[fmt.latent_key(sid)], tensors[fmt.text_key(sid)] = latents[i], texts[i]
                    shard_of[i] = rel
            path = self.out / rel
            path.parent.mkdir(parents=True, exist_ok=True)
            tmp = path.with_name(f".{path.name}.tmp")
            save_file(tensors, str(tmp), metadata={"format": "trainer.prepare", "stage": stage})
            with open(tmp, "rb+") as f:
                os.fsync(f.fileno())
            os.replace(tmp, path)
        status = ["ok" if i in shard_of else "failed" for i in range(len(batch))]
        table = pa.table({
            "sample_id": pa.array(batch["sample_id"].astype(str).tolist(), pa.string()),
            "stage": pa.array(batch["stage"].astype(str).tolist(), pa.string()),
            "bucket": pa.array([b if isinstance(b, str) else None for b in batch["bucket"]], pa.string()),
            "weight": pa.array([float(w) for w in batch["weight"]], pa.float64()),
            "latent_shape": pa.array([list(latents[i].shape) if i in shard_of else None for i in range(len(batch))],
                                     pa.list_(pa.int32())),
            "text_tokens": pa.array([int(texts[i].shape[0]) if i in shard_of else None for i in range(len(batch))],
                                    pa.int32()),
            "shard": pa.array([shard_of.get(i) for i in range(len(batch))], pa.string()),
            "caption": pa.array([c if isinstance(c, str) else None for c in batch["caption"]], pa.string()),
            "caption_source": pa.array([c if isinstance(c, str) else None for c in batch["caption_source"]],
                                       pa.string()),
            "cluster_id": pa.array([int(c) if _present(c) else None for c in batch["cluster_id"]], pa.int64()),
            "status": pa.array(status, pa.string()),
            "error": pa.array([None if s == "ok" else (errors[i] or "encode: no output")
                               for i, s in enumerate(status)], pa.string()),
        }, schema=fmt.INDEX_SCHEMA)
        write_table_atomic(table, self.out / fmt.INDEX_DIR / f"part-{self.tag}-{seq:05d}.parquet")
        return pd.DataFrame({"stage": table.column("stage").to_pylist(), "bucket": table.column("bucket").to_pylist(),
                             "status": status, "error": table.column("error").to_pylist()})


# ----- the pass ------------------------------------------------------------------------------------------------


def read_stages(stages_dir: str | os.PathLike, cfg: PrepareConfig) -> pd.DataFrame:
    """The kept rows of every configured stage, in config order, with `stage` and `weight` (a row in two stages
    appears once per stage)."""
    from curation.manifest import read_manifest

    root = Path(stages_dir)
    frames = []
    for st in cfg.stages:
        d = root / st.name
        if not d.is_dir():
            have = sorted(p.name for p in root.iterdir() if p.is_dir()) if root.is_dir() else []
            raise FileNotFoundError(f"stage {st.name!r}: no folder {d} (stages there: {have})")
        t = read_manifest(d, exclude=("embedding",))
        df = t.to_pandas(types_mapper={pa.int64(): pd.Int64Dtype()}.get) if t.num_columns else pd.DataFrame()
        if len(df) == 0:
            continue
        missing = [c for c in ("sample_id",) + _DECODE_COLS[:-1] if c not in df.columns]
        if missing:
            raise ValueError(f"{d}: stage rows lack columns {missing}")
        if "status" in df.columns:
            df = df[df["status"].fillna("kept") == "kept"]
        df = df.assign(stage=st.name)
        if "weight" not in df.columns:
            df["weight"] = 1.0
        frames.append(df)
    if not frames:
        return pd.DataFrame(columns=list(_ROW_COLS + _DECODE_COLS))
    return pd.concat(frames, ignore_index=True)


def plan_rows(rows: pd.DataFrame, cfg: PrepareConfig) -> pd.DataFrame:
    """Bucket, frame window and caption of each row (pure, on the driver); rows that cannot go on carry `error`."""
    by_name = {st.name: st for st in cfg.stages}
    recs = []
    for row in rows.to_dict("records"):
        a = assign(row, by_name[row["stage"]])
        cap, src, cap_err = resolve_caption(row, cfg.caption_fallback)
        rec = {c: row.get(c) for c in _ROW_COLS + _DECODE_COLS + _FIELD_COLS}
        rec["weight"] = float(row["weight"]) if _present(row.get("weight")) else 1.0
        rec["cluster_id"] = int(row["cluster_id"]) if _present(row.get("cluster_id")) else None
        rec.update(caption=cap, caption_source=src, bucket=a.bucket.name if a.bucket else None,
                   indices=list(a.indices), error=a.error or cap_err)
        recs.append(rec)
    return pd.DataFrame(recs)


def _records(df: pd.DataFrame) -> list[dict]:
    """Rows as dicts with None for every missing value: pandas' str columns give NaN, which would make Arrow type
    a string column as float (Ray then falls back to pickling the column)."""
    return [{k: (v if _present(v) else None) for k, v in r.items()} for r in df.to_dict("records")]


def _counts(index: pd.DataFrame, cfg: PrepareConfig, stage_rows: dict[str, int]) -> dict:
    """ok/failed per stage and bucket, plus error kinds, from the index on disk."""
    out: dict[str, Any] = {"stage_rows": sum(stage_rows.values()), "ok": int((index["status"] == "ok").sum()),
                           "failed": int((index["status"] != "ok").sum()), "stages": {}}
    for st in cfg.stages:
        d = index[index["stage"] == st.name]
        buckets: dict[str, dict[str, int]] = {}
        for (b, s), n in d.groupby([d["bucket"].fillna("none"), "status"]).size().items():
            buckets.setdefault(b, {"ok": 0, "failed": 0})["ok" if s == "ok" else "failed"] += int(n)
        out["stages"][st.name] = {"rows": stage_rows.get(st.name, 0), "ok": int((d["status"] == "ok").sum()),
                                  "failed": int((d["status"] != "ok").sum()), "buckets": buckets}
    tokens = index.loc[index["status"] == "ok", "text_tokens"]
    out["max_text_tokens"] = int(tokens.max()) if len(tokens) else 0  # the DiT's text_len must be at least this
    kinds = index.loc[index["status"] != "ok", "error"].fillna("unknown").str.split(":").str[0]
    out["errors"] = {k: int(v) for k, v in kinds.value_counts().items()}
    out["error_examples"] = index.loc[index["status"] != "ok", "error"].head(5).tolist()
    return out


def _check_folder(out: Path, fp: str) -> dict | None:
    """The existing prepare.json of `out` (None when new); refuse a folder prepared with other tensors' settings."""
    meta_path = out / fmt.META_FILE
    if not meta_path.exists():
        if fmt.index_parts(out):
            raise RuntimeError(f"{out} holds index parts but no {fmt.META_FILE}: not a folder this tool wrote")
        return None
    meta = json.loads(meta_path.read_text())
    if meta.get("fingerprint") != fp:
        raise RuntimeError(
            f"{out} was prepared with a different VAE, text encoder, buckets, caption fallback or storage dtype "
            f"(fingerprint {meta.get('fingerprint')}, this config {fp}); mixing them would give the trainer "
            f"latents of two kinds. Prepare into a new --out, or re-run with the config in {meta_path}.")
    return meta


def prepare(stages_dir: str | os.PathLike, out_dir: str | os.PathLike, cfg: PrepareConfig,
            config_path: str | None = None, retry_failed: bool = False) -> dict:
    """Run (or resume) the pass; returns the prepare.json record. Ray must be initialised (or is started locally)."""
    import ray

    from curation.manifest import write_json_atomic

    t0 = time.time()
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    fp = fingerprint(cfg)
    old = _check_folder(out, fp)
    vae_file, vae_rec = _prepare_vae(cfg, out)
    text_rec = _text_record(cfg.text_encoder)
    if cfg.text_encoder.max_tokens > MAX_TOKENS[cfg.text_encoder.kind]:
        raise ConfigError("text_encoder.max_tokens: too large")
    rows = read_stages(stages_dir, cfg)
    stage_rows = {st.name: int((rows["stage"] == st.name).sum()) if len(rows) else 0 for st in cfg.stages}
    done = fmt.read_index(out)
    if retry_failed:
        done = done[done["status"] == "ok"]
    done_keys = set(zip(done["stage"], done["sample_id"]))
    todo = rows[[(s, i) not in done_keys for s, i in zip(rows["stage"], rows["sample_id"])]] if len(rows) else rows
    t_read = time.time()
    planned = plan_rows(todo, cfg) if len(todo) else pd.DataFrame()
    meta: dict[str, Any] = {
        "format_version": fmt.FORMAT_VERSION, "fingerprint": fp, "stages_dir": str(Path(stages_dir).resolve()),
        "config_path": config_path, "config": to_dict(cfg), "vae": vae_rec, "text_encoder": text_rec,
        "text_dim": text_rec["text_dim"], "text_len": text_rec["text_len"], "storage_dtype": cfg.storage_dtype,
        "buckets": {st.name: [b.name for b in stage_buckets(st)] for st in cfg.stages},
        "caption_fallback": cfg.caption_fallback, "status": "running",
        "runs": (old or {}).get("runs", []),
    }
    write_json_atomic(meta, out / fmt.META_FILE)  # first, so a reader knows what an interrupted folder holds
    log.info("prepare: %d stage rows, %d already in the index, %d to process", len(rows), len(rows) - len(todo),
             len(todo))
    results = pd.DataFrame(columns=["stage", "bucket", "status", "error", "decode_s", "vae_s", "text_s", "write_s",
                                    "call_s"])
    stats = ""
    if len(planned):
        if not ray.is_initialized():
            from curation.rayinit import init_ray

            init_ray()
        c = cfg.compute
        # Same-bucket rows next to each other, so one encoder call stacks whole VAE batches.
        planned = planned.sort_values(["stage", "bucket"], na_position="first", kind="stable")
        records = _records(planned)
        ds = ray.data.from_items(records, override_num_blocks=max(1, min(len(records) // c.decode_batch_size, 1024)))
        # A memory reservation for the decoded frames (the largest bucket, a few copies per row). It also keeps the
        # decode in tasks of its own: with remote args equal to the actor's, Ray Data would fuse the decode into
        # the encoder actor and the CPUs would sit idle while it decodes.
        biggest = max(b.frames * b.height * b.width * 3 for st in cfg.stages for b in stage_buckets(st))
        memory = c.decode_batch_size * biggest * 4 + (512 << 20)  # the worker itself (torch, decoder client): ~400 MiB
        ds = ds.map_batches(_decode, fn_kwargs={"max_pixels": c.max_pixels, "timeout_s": c.decode_timeout_s},
                            batch_format="pandas", batch_size=c.decode_batch_size, num_cpus=c.decode_cpus,
                            memory=memory)
        ds = ds.map_batches(_Encode, fn_constructor_args=(cfg, str(out), str(vae_file)), batch_format="pandas",
                            batch_size=c.batch_size, concurrency=c.concurrency, num_gpus=c.num_gpus,
                            num_cpus=c.num_cpus)
        results = ds.to_pandas()
        stats = ds.stats()
    t_pass = time.time()
    index = fmt.read_index(out)
    keys = set(zip(index["stage"], index["sample_id"]))
    lost = [(s, i) for s, i in zip(rows["stage"], rows["sample_id"]) if (s, i) not in keys] if len(rows) else []
    if lost:
        raise RuntimeError(f"internal error: {len(lost)} stage rows are not in the index after the pass, e.g. {lost[:3]}")
    n = max(1, len(results))
    this_run = {"rows_processed": int(len(results)), "rows_skipped_as_done": int(len(rows) - len(todo)),
                "ok": int((results["status"] == "ok").sum()), "failed": int((results["status"] != "ok").sum()),
                "seconds": round(t_pass - t0, 3),
                "timings_s": {"read_and_plan": round(t_read - t0, 3), "pass": round(t_pass - t_read, 3),
                              "decode_cpu_sum": round(float(results["decode_s"].sum()), 3) if len(results) else 0.0,
                              "vae_sum": round(float(results["vae_s"].sum()), 3) if len(results) else 0.0,
                              "text_sum": round(float(results["text_s"].sum()), 3) if len(results) else 0.0,
                              "write_sum": round(float(results["write_s"].sum()), 3) if len(results) else 0.0,
                              "encoder_busy_sum": round(float(results["call_s"].sum()), 3) if len(results) else 0.0},
                "rows_per_s": round(len(results) / max(1e-9, t_pass - t_read), 3) if len(results) else None,
                "mean_decode_s_per_row": round(float(results["decode_s"].sum()) / n, 4) if len(results) else None,
                "at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
    meta.update(status="complete", counts=_counts(index, cfg, stage_rows), this_run=this_run,
                ray_data_stats=str(stats)[-8000:] if stats else "")
    meta["runs"] = meta["runs"] + [{k: this_run[k] for k in ("at", "rows_processed", "rows_skipped_as_done", "ok",
                                                             "failed", "seconds")}]
    write_json_atomic(meta, out / fmt.META_FILE)
    return meta


def format_summary(meta: dict) -> str:
    """A short report of a prepare run: counts per stage and bucket, this run's numbers and notes."""
    c = meta["counts"]
    lines = [f"stage rows: {c['stage_rows']}  ok={c['ok']}  failed={c['failed']}"]
    for name, st in c["stages"].items():
        bs = ", ".join(f"{b}: {v['ok']} ok" + (f"/{v['failed']} failed" if v["failed"] else "")
                       for b, v in sorted(st["buckets"].items()))
        lines.append(f"  {name}: {st['rows']} rows, {st['ok']} ok, {st['failed']} failed  [{bs}]")
    if c["errors"]:
        lines.append("errors: " + ", ".join(f"{k}: {v}" for k, v in c["errors"].items()))
    r = meta["this_run"]
    lines.append(f"this run: {r['rows_processed']} rows processed, {r['rows_skipped_as_done']} already done, "
                 f"{r['seconds']:.1f} s")
    lines.append(f"text encoder: {meta['text_encoder']['id']} (text_dim {meta['text_dim']}, "
                 f"text_len {meta['text_len']}); VAE: {meta['vae']['preset']}")
    if meta["vae"].get("note"):
        lines.append("NOTE: " + meta["vae"]["note"])
    return "\n".join(lines)


def main(argv=None) -> int:
    """Command-line entry point."""
    ap = argparse.ArgumentParser(description="Encode curated stages into latent + text shards for DiT training.")
    ap.add_argument("--stages", required=True, help="OUT/stages of a curation run")
    ap.add_argument("--out", required=True, help="the latent folder to write (or resume)")
    ap.add_argument("--config", required=True, help="YAML prepare config")
    ap.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                    help="override a config value (dotted key, YAML scalar); repeatable")
    ap.add_argument("--retry-failed", action="store_true", help="process the rows that failed before again")
    ap.add_argument("--address", help="Ray cluster address (default: $RAY_ADDRESS, else a local Ray)")
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    try:
        cfg = load_config(args.config, args.set)
    except ConfigError as e:
        print(f"config error: {e}", file=sys.stderr)
        return 2
    if not Path(args.stages).is_dir():
        print(f"stages folder not found: {args.stages}", file=sys.stderr)
        return 2
    if Path(args.out).exists() and not Path(args.out).is_dir():
        print(f"--out {args.out} exists and is not a folder", file=sys.stderr)
        return 2
    try:
        from curation.rayinit import init_ray

        init_ray(args.address, quiet_logs=True)  # a command-line run: Ray's known noise line out of log files
        meta = prepare(args.stages, args.out, cfg, config_path=str(Path(args.config).resolve()),
                       retry_failed=args.retry_failed)
    except (FileNotFoundError, RuntimeError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    print(format_summary(meta))
    return 0


if __name__ == "__main__":
    # Run the importable module's main, not this __main__ copy: Ray workers must find `_Encode` and `_decode` as
    # trainer.prepare attributes (a class of __main__ is pickled by value, dragging its module globals along).
    from trainer.prepare import main as _main

    raise SystemExit(_main())
