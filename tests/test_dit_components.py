"""Small pieces of the DiT trainer: LR schedule, EMA, mesh sizes, model FLOPs, validation hold-out."""

from __future__ import annotations

import math

import pandas as pd
import pytest
import torch

from trainer.components.ema import EMA
from trainer.components.lr import lr_at
from trainer.components.metrics import dit_train_flops
from trainer.distributed.mesh import ParallelConfig, build_mesh, mesh_sizes
from trainer.models.dit.model import PRESETS
from trainer.train_dit import holdout


def test_lr_warmup_then_cosine_to_floor():
    assert lr_at(0, 100, 1.0, warmup=10) == pytest.approx(0.1)
    assert lr_at(9, 100, 1.0, warmup=10) == pytest.approx(1.0)
    assert lr_at(10, 100, 1.0, warmup=10, decay="cosine", min_ratio=0.1) == pytest.approx(1.0)
    assert lr_at(55, 100, 1.0, warmup=10, decay="cosine", min_ratio=0.1) == pytest.approx(0.55)
    assert lr_at(100, 100, 1.0, warmup=10, decay="cosine", min_ratio=0.1) == pytest.approx(0.1)
    assert lr_at(50, 100, 2.0, warmup=10) == 2.0
    with pytest.raises(ValueError, match="constant or cosine"):
        lr_at(0, 1, 1.0, decay="linear")


def test_ema_follows_parameters_with_warmup():
    m = torch.nn.Linear(2, 1, bias=False)
    with torch.no_grad():
        m.weight.fill_(0.0)
    ema = EMA(m, decay=0.9, warmup=True)
    with torch.no_grad():
        m.weight.fill_(1.0)
    ema.update(m)  # first decay min(0.9, 1/10) = 0.1
    assert torch.allclose(ema.shadow["weight"], torch.full((1, 2), 0.9))
    ema.update(m)  # then min(0.9, 2/11)
    assert torch.allclose(ema.shadow["weight"], torch.full((1, 2), 1 - 0.1 * 2 / 11))
    assert ema.shadow["weight"].dtype == torch.float32 and ema.shadow["weight"] is not m.weight


def test_mesh_sizes():
    assert mesh_sizes(ParallelConfig(), 8) == dict(dp_replicate=1, dp_shard=8, ring=1, ulysses=1)
    assert mesh_sizes(ParallelConfig(dp_replicate=2, ulysses=2), 8)["dp_shard"] == 2
    with pytest.raises(ValueError, match="not divisible"):
        mesh_sizes(ParallelConfig(ring=3), 8)
    with pytest.raises(ValueError, match="multiply to 4"):
        mesh_sizes(ParallelConfig(dp_shard=2, ring=2), 8)
    with pytest.raises(ValueError, match="dp_shard must be"):
        ParallelConfig(dp_shard=0)
    assert build_mesh(ParallelConfig(ulysses=2), 1, "cpu") is None  # one process: nothing to shard


def test_model_flops_as_the_dit_issue_counts_them():
    cfg = PRESETS["1.3B"]
    tokens = 21 * 30 * 52  # 480x832x81
    d, f = 1536, 8960
    want = 3 * 30 * (2 * tokens * (6 * d * d + 2 * d * f) + 4 * tokens**2 * d + 4 * tokens * 512 * d)
    assert dit_train_flops(cfg, tokens) == want
    assert 4 * tokens**2 * d * 30 * 3 / want > 0.6  # attention dominates at 81 frames


def test_holdout_is_stable_and_never_empties_a_stage():
    rows = pd.DataFrame([dict(sample_id="only", stage="s1")] +
                        [dict(sample_id=f"r{i}", stage="s2") for i in range(5)] +
                        [dict(sample_id="r0", stage="s3"), dict(sample_id="r1", stage="s3")])
    got = holdout(rows, 10, seed=0)
    left = rows[~rows["sample_id"].isin(got)]
    assert set(left["stage"]) == {"s1", "s2", "s3"}  # every stage keeps a row
    assert "only" not in got and len(got) == 4 and not {"r0", "r1"} <= set(got)
    assert holdout(rows, 2, seed=0) == got[:2]
    assert holdout(rows, 0, seed=0) == []
