"""Released Wan2.1 DiT checkpoints in and out: `config.json` + `diffusion_pytorch_model*.safetensors` (one file, or
shards listed in `diffusion_pytorch_model.safetensors.index.json`), loaded strictly; nothing is unpickled."""

from __future__ import annotations

import dataclasses
import json
import os

import torch
from safetensors import safe_open
from safetensors.torch import save_file

from trainer.models.dit.model import DiTConfig, WanDiT, config_from_dict

WEIGHTS = "diffusion_pytorch_model.safetensors"
INDEX = "diffusion_pytorch_model.safetensors.index.json"
CONFIG = "config.json"


def checkpoint_files(path: str) -> list[str]:
    """The safetensors files of a checkpoint folder (sharded via its index, or the single file) or a file path."""
    if os.path.isfile(path):
        return [path]
    if not os.path.isdir(path):
        raise FileNotFoundError(f"no DiT checkpoint at {path}")
    index = os.path.join(path, INDEX)
    if os.path.exists(index):
        with open(index) as fh:
            weight_map = json.load(fh).get("weight_map")
        if not isinstance(weight_map, dict) or not weight_map:
            raise ValueError(f"{index}: no weight_map")
        files = [os.path.join(path, f) for f in sorted(set(weight_map.values()))]
        missing = [f for f in files if not os.path.exists(f)]
        if missing:
            raise FileNotFoundError(f"{path}: shards listed in {INDEX} are missing: {[os.path.basename(f) for f in missing]}")
        return files
    single = os.path.join(path, WEIGHTS)
    if os.path.exists(single):
        return [single]
    raise FileNotFoundError(f"{path}: neither {WEIGHTS} nor {INDEX}")


def read_config(path: str) -> DiTConfig:
    """The DiTConfig in a checkpoint folder's config.json."""
    with open(os.path.join(path, CONFIG)) as fh:
        return config_from_dict(json.load(fh), os.path.join(path, CONFIG))


def load_state_dict(path: str, device: str | torch.device = "cpu") -> dict[str, torch.Tensor]:
    """All tensors of a checkpoint (every shard), keyed as in the released layout."""
    sd: dict[str, torch.Tensor] = {}
    for f in checkpoint_files(path):
        with safe_open(f, framework="pt", device=str(device)) as fh:
            for k in fh.keys():
                if k in sd:
                    raise ValueError(f"{f}: tensor {k} also appears in another shard")
                sd[k] = fh.get_tensor(k)
    return sd


def load_wan_dit(path: str, config: DiTConfig | dict | str | None = None, dtype: torch.dtype = torch.float32,
                 device: str | torch.device = "cpu") -> WanDiT:
    """A WanDiT with the weights of a released (or exported) checkpoint, loaded with strict=True.

    `path` is a folder (config.json + weights) or a .safetensors file (then `config` is required: a DiTConfig,
    a dict of Wan2.1 keywords or a preset name).
    """
    if not os.path.exists(path):
        raise FileNotFoundError(f"no DiT checkpoint at {path}")
    if config is None:
        if not os.path.isdir(path):
            raise ValueError(f"{path} is a file: pass config= (a preset such as '1.3B', or the config dict)")
        config = read_config(path)
    with torch.device("meta"):
        model = WanDiT.from_config(config)
    sd = load_state_dict(path, device)
    model.load_state_dict(sd, strict=True, assign=True)
    return model.to(device=device, dtype=dtype)


def save_wan_dit(state_dict: dict[str, torch.Tensor], config: DiTConfig, out_dir: str,
                 max_shard_bytes: int | None = None) -> str:
    """Write weights in the released layout (config.json + one file, or shards + index); returns out_dir.

    Files appear complete: each is written under a temporary name and renamed.
    """
    os.makedirs(out_dir, exist_ok=True)
    sd = {k: v.detach().contiguous().cpu() for k, v in state_dict.items()}
    shards: list[dict[str, torch.Tensor]] = [{}]
    size = 0
    for k, v in sd.items():
        nbytes = v.numel() * v.element_size()
        if max_shard_bytes and shards[-1] and size + nbytes > max_shard_bytes:
            shards.append({})
            size = 0
        shards[-1][k] = v
        size += nbytes
    names = [WEIGHTS] if len(shards) == 1 else [
        f"diffusion_pytorch_model-{i + 1:05d}-of-{len(shards):05d}.safetensors" for i in range(len(shards))]
    for name, shard in zip(names, shards):
        tmp = os.path.join(out_dir, f".{name}.tmp")
        save_file(shard, tmp, metadata={"format": "pt"})
        os.replace(tmp, os.path.join(out_dir, name))
    if len(shards) > 1:
        index = {"metadata": {"total_size": sum(v.numel() * v.element_size() for v in sd.values())},
                 "weight_map": {k: name for name, shard in zip(names, shards) for k in shard}}
        _write_json(os.path.join(out_dir, INDEX), index)
    cfg = dataclasses.asdict(config)
    cfg["patch_size"] = list(cfg["patch_size"])
    _write_json(os.path.join(out_dir, CONFIG), {"_class_name": "WanModel", "model_type": "t2v", **cfg})
    return out_dir


def _write_json(path: str, obj: dict) -> None:
    tmp = path + ".tmp"
    with open(tmp, "w") as fh:
        json.dump(obj, fh, indent=1)
    os.replace(tmp, path)
