"""The curriculum sampler: which latent samples every training step uses, as a pure function of
(seed, phase, step), split over data-parallel ranks by position.

Each step of a phase draws one stage (by the phase's stage ratios), one bucket of that stage (by its rows' total
`weight` divided by the bucket's batch size, so that samples, not steps, follow the weights), then the bucket's
global batch of rows by `weight` (with replacement). Every rank computes the same global batch and takes its own
contiguous slice, so world size 1 and N see the same samples per step, and a resumed run sees exactly what an
uninterrupted one would: the sampler's whole position is the step number.

Rows are de-duplicated per (phase, stage) by sample_id; a row that is in two stages of one phase is drawn through
each stage at that stage's ratio, as the curation's stage mixes intend (pooling stage folders counted it twice).
"""

from __future__ import annotations

import dataclasses

import numpy as np
import pandas as pd

ANY_BUCKET = "*"


@dataclasses.dataclass
class PhasePlan:
    """What the sampler needs of a phase: its stages with ratios, length, and global batch per bucket."""

    name: str
    stages: dict[str, float]
    steps: int
    batch: dict[str, int]  # bucket -> global batch size per step; "*" for any bucket not listed


@dataclasses.dataclass
class StepBatch:
    """The global batch of one training step."""

    step: int  # global step (over all phases)
    phase: int
    phase_name: str
    local_step: int  # step within the phase
    stage: str
    bucket: str
    sample_ids: list[str]
    weights: list[float]

    def shard(self, rank: int, world: int) -> list[str]:
        """The sample ids of data-parallel rank `rank` of `world` (contiguous, equal slices)."""
        n = len(self.sample_ids)
        if n % world:
            raise ValueError(f"batch of {n} does not split over {world} data-parallel ranks")
        k = n // world
        return self.sample_ids[rank * k : (rank + 1) * k]


class SamplerError(ValueError):
    """A phase cannot be sampled (a stage with no rows, no allowed bucket, a bad batch size)."""


class CurriculumSampler:
    """Global batches for every step of a list of phases over the ok rows of a LatentIndex."""

    def __init__(self, rows: pd.DataFrame, phases: list[PhasePlan], seed: int = 0, dp_world: int = 1):
        self.phases = phases
        self.seed = int(seed)
        self.total_steps = sum(p.steps for p in phases)
        # pools[phase][stage] = (bucket names, per-bucket (ids, weights, p), bucket probabilities)
        self.pools: list[dict[str, tuple]] = []
        for pi, ph in enumerate(phases):
            if not ph.stages:
                raise SamplerError(f"phase {ph.name}: names no stage")
            for b, n in ph.batch.items():
                if n < 1 or n % dp_world:
                    raise SamplerError(f"phase {ph.name}: batch {b}={n} must be a positive multiple of the "
                                       f"{dp_world} data-parallel ranks")
            pools = {}
            for stage, ratio in ph.stages.items():
                if not ratio > 0:
                    raise SamplerError(f"phase {ph.name}: stage {stage} ratio must be > 0, got {ratio}")
                df = rows[(rows["stage"] == stage) & (rows["weight"].fillna(0) > 0)]
                if df.empty:
                    raise SamplerError(f"phase {ph.name}: stage {stage!r} has no rows with weight > 0 in the "
                                       f"latents (stages present: {sorted(rows['stage'].unique())})")
                df = df.drop_duplicates("sample_id")
                buckets, per, mass = [], [], []
                for bucket, g in sorted(df.groupby("bucket"), key=lambda kv: kv[0]):
                    size = ph.batch.get(bucket, ph.batch.get(ANY_BUCKET))
                    if size is None:
                        continue
                    w = g["weight"].to_numpy(dtype=np.float64)
                    buckets.append(bucket)
                    per.append((g["sample_id"].astype(str).tolist(), w, w / w.sum()))
                    mass.append(w.sum() / size)
                if not buckets:
                    raise SamplerError(f"phase {ph.name}: stage {stage!r} has rows only in buckets "
                                       f"{sorted(df['bucket'].unique())}, none allowed by batch {sorted(ph.batch)}")
                mass = np.asarray(mass)
                pools[stage] = (buckets, per, mass / mass.sum())
            self.pools.append(pools)

    def locate(self, step: int) -> tuple[int, int]:
        """(phase index, step within the phase) of a global step."""
        if step < 0 or step >= self.total_steps:
            raise IndexError(f"step {step} outside 0..{self.total_steps - 1}")
        for i, ph in enumerate(self.phases):
            if step < ph.steps:
                return i, step
            step -= ph.steps
        raise AssertionError("unreachable")

    def batch(self, step: int) -> StepBatch:
        """The global batch of global step `step` (a pure function of seed, phase and step)."""
        pi, local = self.locate(step)
        ph = self.phases[pi]
        rng = np.random.default_rng([self.seed, pi, local, 0xC0FFEE])
        stages = list(ph.stages)
        ratios = np.asarray([ph.stages[s] for s in stages], dtype=np.float64)
        stage = stages[int(rng.choice(len(stages), p=ratios / ratios.sum()))] if len(stages) > 1 else stages[0]
        buckets, per, bp = self.pools[pi][stage]
        b = int(rng.choice(len(buckets), p=bp))
        bucket = buckets[b]
        ids, w, p = per[b]
        size = ph.batch.get(bucket, ph.batch.get(ANY_BUCKET))
        pick = rng.choice(len(ids), size=size, replace=True, p=p)
        return StepBatch(step=step, phase=pi, phase_name=ph.name, local_step=local, stage=stage, bucket=bucket,
                         sample_ids=[ids[i] for i in pick], weights=[float(w[i]) for i in pick])

    def state_dict(self, step: int) -> dict:
        """The sampler's position (everything else is a pure function of it and the config)."""
        return {"seed": self.seed, "step": int(step)}
