"""The device mesh every parallelism shares: dp_replicate × dp_shard × ring × ulysses (after torchtitan).

FSDP2 shards parameters over ("dp_shard", "ring", "ulysses") flattened as "dp_shard_cp" (context-parallel ranks hold
different tokens of the same samples, so they can share parameter shards) and replicates over "dp_replicate" (HSDP
when > 1). Data-parallel ranks ("dp" = dp_replicate × dp_shard flattened) draw different samples; the ranks of one
context-parallel group ("cp" = ring × ulysses) see the same samples.
"""

from __future__ import annotations

import dataclasses

NAMES = ("dp_replicate", "dp_shard", "ring", "ulysses")


@dataclasses.dataclass
class ParallelConfig:
    """Sizes of the mesh dimensions; dp_shard = -1 takes what the others leave of the world."""

    dp_replicate: int = 1
    dp_shard: int = -1
    ring: int = 1
    ulysses: int = 1

    def __post_init__(self):
        for name in ("dp_replicate", "ring", "ulysses"):
            if getattr(self, name) < 1:
                raise ValueError(f"parallel.{name} must be >= 1, got {getattr(self, name)}")
        if self.dp_shard != -1 and self.dp_shard < 1:
            raise ValueError(f"parallel.dp_shard must be >= 1 or -1 (the rest), got {self.dp_shard}")


def mesh_sizes(parallel: ParallelConfig, world_size: int) -> dict[str, int]:
    """The size of every mesh dimension for `world_size` processes (error when they do not multiply to it)."""
    fixed = parallel.dp_replicate * parallel.ring * parallel.ulysses
    shard = parallel.dp_shard
    if shard == -1:
        if world_size % fixed:
            raise ValueError(f"world size {world_size} is not divisible by dp_replicate×ring×ulysses = {fixed}")
        shard = world_size // fixed
    sizes = dict(dp_replicate=parallel.dp_replicate, dp_shard=shard, ring=parallel.ring, ulysses=parallel.ulysses)
    if fixed * shard != world_size:
        raise ValueError(f"parallel sizes {sizes} multiply to {fixed * shard}, but {world_size} processes run")
    return sizes


def build_mesh(parallel: ParallelConfig, world_size: int, device_type: str):
    """A DeviceMesh with dims NAMES (plus flattened "dp", "dp_shard_cp", "cp"), or None for one process.

    One process ignores the sizes (no parallelism to apply), so the same config runs alone and under torchrun.
    """
    if world_size == 1:
        return None
    sizes = mesh_sizes(parallel, world_size)
    from torch.distributed.device_mesh import init_device_mesh

    mesh = init_device_mesh(device_type, tuple(sizes[n] for n in NAMES), mesh_dim_names=NAMES)
    mesh[("dp_replicate", "dp_shard")]._flatten("dp")
    mesh[("dp_shard", "ring", "ulysses")]._flatten("dp_shard_cp")
    mesh[("ring", "ulysses")]._flatten("cp")
    return mesh


def _sub(mesh, names):
    import warnings

    with warnings.catch_warnings():
        # torch >= 2.10 warns that slicing flattened dims off the root mesh will change; it still works there.
        warnings.filterwarnings("ignore", message=".*flattened dim.*")
        return mesh[names]


def fsdp_mesh(mesh):
    """The (sub)mesh FSDP2 shards over: ("dp_replicate", "dp_shard_cp") for HSDP, else "dp_shard_cp"."""
    if mesh is None:
        return None
    cp = mesh["ring"].size() * mesh["ulysses"].size()
    shard = "dp_shard_cp" if cp > 1 else "dp_shard"  # the same ranks without CP: no flattened dim needed
    if mesh["dp_replicate"].size() > 1:
        return _sub(mesh, ("dp_replicate", shard))
    return _sub(mesh, shard)


def dp_rank_world(mesh) -> tuple[int, int]:
    """(rank, size) of this process among the data-parallel ranks (ranks of one CP group share a rank)."""
    if mesh is None:
        return 0, 1
    rep, shard = mesh["dp_replicate"], mesh["dp_shard"]
    return rep.get_local_rank() * shard.size() + shard.get_local_rank(), rep.size() * shard.size()
