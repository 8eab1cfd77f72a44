"""The curriculum sampler: a pure function of (seed, phase, step), the same global stream on any world size and
across a resume, rows drawn by weight, one bucket per step, bad phases refused."""

from __future__ import annotations

import collections

import pandas as pd
import pytest

from trainer.data.sampler import CurriculumSampler, PhasePlan, SamplerError


def _rows() -> pd.DataFrame:
    rows = []
    for stage, buckets in {"s1": ["1x64x64", "1x48x80"], "s2": ["5x64x64", "1x64x64"]}.items():
        for b in buckets:
            for i in range(6):
                rows.append(dict(sample_id=f"{stage}-{b}-{i}", stage=stage, bucket=b, weight=float(1 + i)))
    # a row that two stages hold (the curation puts a clip in every stage it qualifies for)
    rows.append(dict(sample_id="both", stage="s1", bucket="1x64x64", weight=1.0))
    rows.append(dict(sample_id="both", stage="s2", bucket="1x64x64", weight=1.0))
    return pd.DataFrame(rows)


PHASES = [PhasePlan("a", {"s1": 1.0}, 7, {"*": 4}),
          PhasePlan("b", {"s1": 1.0, "s2": 3.0}, 9, {"1x64x64": 4, "5x64x64": 2})]


def test_world_sizes_see_the_same_global_batches():
    one = CurriculumSampler(_rows(), PHASES, seed=3, dp_world=1)
    two = CurriculumSampler(_rows(), PHASES, seed=3, dp_world=2)
    for step in range(one.total_steps):
        a, b = one.batch(step), two.batch(step)
        assert a == b
        assert b.shard(0, 2) + b.shard(1, 2) == a.shard(0, 1) == a.sample_ids
        assert len(b.shard(0, 2)) == len(a.sample_ids) // 2


def test_stream_is_a_pure_function_of_the_step_so_resume_repeats_it():
    full = CurriculumSampler(_rows(), PHASES, seed=5)
    stream = [full.batch(s) for s in range(full.total_steps)]
    resumed = CurriculumSampler(_rows(), PHASES, seed=5)  # a new process, asked from step 10 on
    assert [resumed.batch(s) for s in range(10, full.total_steps)] == stream[10:]
    other_seed = CurriculumSampler(_rows(), PHASES, seed=6)
    assert [other_seed.batch(s).sample_ids for s in range(full.total_steps)] != [b.sample_ids for b in stream]


def test_phases_in_order_one_bucket_per_step_and_stage_rows():
    s = CurriculumSampler(_rows(), PHASES, seed=0)
    rows = _rows().set_index(["stage", "sample_id"])
    for step in range(s.total_steps):
        b = s.batch(step)
        assert b.phase_name == ("a" if step < 7 else "b")
        assert b.local_step == (step if step < 7 else step - 7)
        assert {rows.loc[(b.stage, sid), "bucket"] for sid in b.sample_ids} == {b.bucket}
        assert len(b.sample_ids) == PHASES[b.phase].batch.get(b.bucket, PHASES[b.phase].batch.get("*"))
        if b.phase == 1:
            assert b.bucket in ("1x64x64", "5x64x64")  # 1x48x80 is not allowed there


def test_rows_are_drawn_in_proportion_to_weight_and_stage_ratio():
    plan = [PhasePlan("b", {"s1": 1.0, "s2": 3.0}, 4000, {"*": 2})]
    s = CurriculumSampler(_rows(), plan, seed=1)
    stages, counts = collections.Counter(), collections.Counter()
    for step in range(4000):
        b = s.batch(step)
        stages[b.stage] += 1
        if b.stage == "s1" and b.bucket == "1x48x80":
            counts.update(b.sample_ids)
    assert abs(stages["s2"] / 4000 - 0.75) < 0.03
    # weights 1..6 within the bucket: the heaviest row is drawn about 6x as often as the lightest
    ratio = counts["s1-1x48x80-5"] / counts["s1-1x48x80-0"]
    assert 4.5 < ratio < 7.5


def test_duplicate_rows_are_drawn_once_per_stage():
    rows = pd.concat([_rows(), _rows()[_rows().stage == "s1"]], ignore_index=True)  # s1 written twice
    s = CurriculumSampler(rows, [PhasePlan("a", {"s1": 1.0}, 1, {"*": 2})], seed=0)
    ids = [sid for bucket_ids, _, _ in s.pools[0]["s1"][1] for sid in bucket_ids]
    assert len(ids) == len(set(ids)) == 13


def test_bad_phases_stop_at_start_up():
    with pytest.raises(SamplerError, match="stage 's9' has no rows"):
        CurriculumSampler(_rows(), [PhasePlan("x", {"s9": 1.0}, 3, {"*": 1})])
    with pytest.raises(SamplerError, match="none allowed"):
        CurriculumSampler(_rows(), [PhasePlan("x", {"s1": 1.0}, 3, {"17x64x64": 1})])
    with pytest.raises(SamplerError, match="multiple of the 2 data-parallel ranks"):
        CurriculumSampler(_rows(), [PhasePlan("x", {"s1": 1.0}, 3, {"*": 3})], dp_world=2)
