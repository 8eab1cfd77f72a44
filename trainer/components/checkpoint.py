"""Training checkpoints: model weights as safetensors, optimizer state through torch.distributed.checkpoint.

Layout of one checkpoint, written to a temporary folder and renamed when complete (a crash never leaves a half
checkpoint that resume would pick up):

    <root>/step_00000100/model.safetensors     weights only, loadable by trainer.models.vae.model.load_wan_vae
    <root>/step_00000100/<name>.safetensors     other modules (e.g. the discriminator)
    <root>/step_00000100/optim/                 DCP folder with every optimizer's state
    <root>/step_00000100/state.json             step and anything else JSON-able
    <root>/latest                               name of the newest complete checkpoint

Trust: model weights (safetensors) and state.json load without unpickling anything. The optimizer folder is
torch.distributed.checkpoint's format: tensors as raw bytes, but its `.metadata` index is a pickle that DCP
unpickles on load. Resume only from checkpoints your own runs wrote; to start from someone else's weights, load
their `model.safetensors` (or the released `.pth` via `trainer.models.vae.model.load_wan_vae`, which uses weights_only=True).
"""

from __future__ import annotations

import json
import os
import shutil
import warnings

import torch
import torch.nn as nn


def _dcp():
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.state_dict import get_optimizer_state_dict, set_optimizer_state_dict

    return dcp, get_optimizer_state_dict, set_optimizer_state_dict


def save_checkpoint(root: str, step: int, modules: dict[str, nn.Module],
                    optimizers: dict[str, tuple[nn.Module, torch.optim.Optimizer]], state: dict,
                    keep: int = 2) -> str:
    """Write checkpoint `step` under `root` and prune all but the newest `keep`; returns its folder."""
    from safetensors.torch import save_file

    dcp, get_osd, _ = _dcp()
    name = f"step_{step:08d}"
    final = os.path.join(root, name)
    tmp = os.path.join(root, f".tmp_{name}")
    shutil.rmtree(tmp, ignore_errors=True)
    os.makedirs(tmp)
    for mod_name, module in modules.items():
        sd = {k: v.detach().contiguous().cpu() for k, v in module.state_dict().items()}
        save_file(sd, os.path.join(tmp, f"{mod_name}.safetensors"))
    if optimizers:
        osd = {k: get_osd(model, opt) for k, (model, opt) in optimizers.items()}
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # DCP warns that no process group exists; single process is fine
            dcp.save(osd, checkpoint_id=os.path.join(tmp, "optim"))
    with open(os.path.join(tmp, "state.json"), "w") as fh:
        json.dump(dict(state, step=step), fh, indent=1)
    shutil.rmtree(final, ignore_errors=True)
    os.replace(tmp, final)
    with open(os.path.join(root, ".latest.tmp"), "w") as fh:
        fh.write(name)
    os.replace(os.path.join(root, ".latest.tmp"), os.path.join(root, "latest"))
    done = sorted(d for d in os.listdir(root) if d.startswith("step_"))
    for old in done[:-keep] if keep > 0 else []:
        shutil.rmtree(os.path.join(root, old), ignore_errors=True)
    return final


def latest_checkpoint(root: str) -> str | None:
    """The newest complete checkpoint folder under `root`, or None."""
    pointer = os.path.join(root, "latest")
    if not os.path.exists(pointer):
        return None
    with open(pointer) as fh:
        path = os.path.join(root, fh.read().strip())
    return path if os.path.isdir(path) else None


def load_checkpoint(path: str, modules: dict[str, nn.Module],
                    optimizers: dict[str, tuple[nn.Module, torch.optim.Optimizer]]) -> dict:
    """Restore modules (strict) and optimizers from a checkpoint folder; returns its state.json."""
    from safetensors.torch import load_file

    dcp, get_osd, set_osd = _dcp()
    from torch.distributed.checkpoint.state_dict import StateDictOptions

    for mod_name, module in modules.items():
        module.load_state_dict(load_file(os.path.join(path, f"{mod_name}.safetensors")), strict=True)
    if optimizers:
        # DCP loads in place into a template with the right structure (optimizer state initialised). Parameters
        # that had no gradient before the save (e.g. temporal convs during an image-only phase) have no state in
        # the checkpoint and are left out of the template, so they stay stateless as in an uninterrupted run.
        saved = dcp.FileSystemReader(os.path.join(path, "optim")).read_metadata().state_dict_metadata
        template = {}
        for k, (model, opt) in optimizers.items():
            osd = get_osd(model, opt)
            osd["state"] = {fqn: st for fqn, st in osd["state"].items()
                            if any(key.startswith(f"{k}.state.{fqn}.") for key in saved)}
            template[k] = osd
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            dcp.load(template, checkpoint_id=os.path.join(path, "optim"))
        for k, (model, opt) in optimizers.items():
            set_osd(model, opt, template[k], options=StateDictOptions(strict=False))
    with open(os.path.join(path, "state.json")) as fh:
        return json.load(fh)


# ----------------------------------------------------------------------------------------------------------------
# Sharded checkpoints (the DiT trainer, one or many processes)
#
#     <root>/step_00000100/dcp/                 DCP folder: {"model", "optim", "ema"} (DTensor shards under FSDP2)
#     <root>/step_00000100/rng-<rank>.safetensors   each rank's CPU (and CUDA) RNG state
#     <root>/step_00000100/state.json           step, phase, sampler position, EMA update count, config
#     <root>/latest                             name of the newest complete checkpoint
#
# Every rank writes its shards into the temporary folder; rank 0 renames it once all have finished (barrier), so
# a kill at any moment leaves either the previous checkpoint or the new one, never half of one.


def _dist():
    import torch.distributed as dist

    return dist if dist.is_available() and dist.is_initialized() else None


def _barrier() -> None:
    dist = _dist()
    if dist is not None:
        dist.barrier()


def _rank() -> int:
    dist = _dist()
    return dist.get_rank() if dist is not None else 0


def sharded_state(model: nn.Module, optimizer: torch.optim.Optimizer, ema: dict[str, torch.Tensor]) -> dict:
    """The DCP state of a (possibly FSDP2) model, its optimizer and EMA tensors: each rank holds its own shards."""
    from torch.distributed.checkpoint.state_dict import get_model_state_dict, get_optimizer_state_dict

    return {"model": get_model_state_dict(model), "optim": get_optimizer_state_dict(model, optimizer),
            "ema": dict(ema)}


def save_sharded(root: str, step: int, model: nn.Module, optimizer: torch.optim.Optimizer,
                 ema: dict[str, torch.Tensor], state: dict, keep: int = 2, rank0_extra=None) -> str:
    """Write checkpoint `step` (all ranks call this); rank 0 publishes it and prunes all but the newest `keep`.

    `rank0_extra(folder)`, when given, writes more files into the checkpoint before it is published (rank 0 only).
    """
    import torch.distributed.checkpoint as dcp
    from safetensors.torch import save_file

    name = f"step_{step:08d}"
    final, tmp = os.path.join(root, name), os.path.join(root, f".tmp_{name}")
    if _rank() == 0:
        shutil.rmtree(tmp, ignore_errors=True)
        os.makedirs(tmp)
    _barrier()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # DCP warns when no process group exists; one process is fine
        dcp.save(sharded_state(model, optimizer, ema), checkpoint_id=os.path.join(tmp, "dcp"))
    rng = {"cpu": torch.get_rng_state()}
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        rng["cuda"] = torch.cuda.get_rng_state()
    save_file(rng, os.path.join(tmp, f"rng-{_rank()}.safetensors"))
    _barrier()
    if _rank() == 0:
        if rank0_extra is not None:
            rank0_extra(tmp)
        with open(os.path.join(tmp, "state.json"), "w") as fh:
            json.dump(dict(state, step=step), fh, indent=1)
        shutil.rmtree(final, ignore_errors=True)
        os.replace(tmp, final)
        with open(os.path.join(root, ".latest.tmp"), "w") as fh:
            fh.write(name)
        os.replace(os.path.join(root, ".latest.tmp"), os.path.join(root, "latest"))
        done = sorted(d for d in os.listdir(root) if d.startswith("step_"))
        for old in done[:-keep] if keep > 0 else []:
            shutil.rmtree(os.path.join(root, old), ignore_errors=True)
    _barrier()
    return final


def load_sharded(path: str, model: nn.Module, optimizer: torch.optim.Optimizer,
                 ema: dict[str, torch.Tensor]) -> dict:
    """Restore model, optimizer, EMA (in place) and this rank's RNG state from `path`; returns its state.json."""
    import torch.distributed.checkpoint as dcp
    from safetensors.torch import load_file
    from torch.distributed.checkpoint.state_dict import set_model_state_dict, set_optimizer_state_dict

    state = sharded_state(model, optimizer, ema)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        dcp.load(state, checkpoint_id=os.path.join(path, "dcp"))
    set_model_state_dict(model, state["model"])
    set_optimizer_state_dict(model, optimizer, state["optim"])
    with torch.no_grad():
        for k, v in state["ema"].items():
            if ema[k] is not v:
                ema[k].copy_(v)
    rng_file = os.path.join(path, f"rng-{_rank()}.safetensors")
    if os.path.exists(rng_file):  # a run resumed on more ranks than it saved with starts their RNG fresh
        rng = load_file(rng_file)
        torch.set_rng_state(rng["cpu"])
        if "cuda" in rng and torch.cuda.is_available():
            torch.cuda.set_rng_state(rng["cuda"])
    with open(os.path.join(path, "state.json")) as fh:
        return json.load(fh)
