"""decide: thresholds → status and reasons; null scores never fire; failed rows stay failed."""

import numpy as np

from curation.config import Rule, parse_config
from curation.decide import decide_batch, reasons_for


def _rules(d):
    return parse_config({"operators": ["basic"], "decide": d}).decide


def test_reasons_min_max_exclude_flag():
    rules = _rules({
        "duration_s": {"min": 1.0, "max": 60.0},
        "short_side": {"min": 128},
        "motion_tier": {"exclude": ["static", "shaky"]},
    })
    # A flag rule, as stage `where:` rules use it (decide: refuses duplicate_of: clustering fills it afterwards).
    rules = rules + (Rule(column="duplicate_of", reject_if_true=True),)
    assert reasons_for({"duration_s": 0.5, "short_side": 64}, rules) == ["duration_s<1.0", "short_side<128"]
    assert reasons_for({"duration_s": 61.0}, rules) == ["duration_s>60.0"]
    assert reasons_for({"motion_tier": "static"}, rules) == ["motion_tier=static"]
    assert reasons_for({"motion_tier": "optimal"}, rules) == []
    assert reasons_for({"duplicate_of": "abc"}, rules) == ["duplicate_of"]
    assert reasons_for({"duplicate_of": None}, rules) == []
    # A score that was not computed is not evidence either way.
    assert reasons_for({"duration_s": None, "short_side": float("nan")}, rules) == []


def test_decide_batch_keeps_failed_rows_failed():
    rules = _rules({"duration_s": {"min": 1.0}})
    batch = {
        "sample_id": np.array(["a", "b", "c"], dtype=object),
        "status": np.array(["kept", "kept", "failed"], dtype=object),
        "duration_s": np.array([0.5, 3.0, np.nan]),
    }
    out = decide_batch(batch, rules)
    assert list(out["status"]) == ["rejected", "kept", "failed"]
    assert [list(r) for r in out["reject_reasons"]] == [["duration_s<1.0"], [], []]
