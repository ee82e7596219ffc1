"""Pure: /stats answers → pool aggregate, status tiers and conditions."""

from __future__ import annotations

import pytest

from accelgen_operator.status import (
    Condition,
    StatsError,
    aggregate,
    parse_pod_stats,
    rollout_conditions,
    set_conditions,
    slo_condition,
    status_delta,
    tier_status,
    tightest_tier,
)
from accelgen_operator.tierconfig import parse_checked, tiers_config
from tests.support.operator_cluster import make_spec, pod_stats

TIERS = parse_checked(tiers_config(make_spec()))


def test_parse_reads_what_the_sidecars_writer_writes() -> None:
    stats = parse_pod_stats(pod_stats({"interactive": (10, 9)}, waiting=3, kv=0.4))
    assert stats.window_s == 60
    (tier,) = stats.tiers
    assert (tier.name, tier.num_completed, tier.num_slo_met, tier.attainment) == ("interactive", 10, 9, 0.9)
    assert tier.goodput_tokens_per_s == 900 / 60 and tier.num_rejected == 1
    assert (stats.engine.waiting, stats.engine.kv_usage, stats.engine.ready) == (3, 0.4, True)


GOOD = pod_stats({"a": (2, 1)})
GOOD_TIER = GOOD["tiers"][0]


@pytest.mark.parametrize(
    ("raw", "message"),
    [
        ([], "must be a JSON object"),
        ({k: v for k, v in GOOD.items() if k != "version"}, "missing field 'version'"),
        ({**GOOD, "version": 2}, "newer than this reader"),
        ({**GOOD, "tiers": {}}, "tiers must be a list"),
        ({**GOOD, "tiers": [{"completed": 1}]}, "string name"),
        ({**GOOD, "tiers": [{**GOOD_TIER, "completed": -1}]}, "completed must be a non-negative number"),
        ({**GOOD, "tiers": [{**GOOD_TIER, "completed": "3"}]}, "completed must be"),
        ({**GOOD, "tiers": [{**GOOD_TIER, "completed": 1.5}]}, "whole number"),
        ({**GOOD, "tiers": [{**GOOD_TIER, "completed": 1, "slo_met": 2}]}, "slo_met exceeds completed"),
        ({**GOOD, "tiers": [{**GOOD_TIER, "ttft_p99_s": float("nan")}]}, "ttft_p99_s"),
        ({**GOOD, "tiers": [{k: v for k, v in GOOD_TIER.items() if k != "num_tokens"}]}, "missing field 'num_tokens'"),
        ({**GOOD, "engine": []}, "engine must be an object"),
        ({**GOOD, "engine": {"ready": True}}, "engine: missing field 'running'"),
        ({**GOOD, "engine": {**GOOD["engine"], "waiting": -1}}, "waiting must be a non-negative number"),
    ],
)
def test_parse_rejects_bad_answers_with_a_reason(raw: object, message: str) -> None:
    with pytest.raises(StatsError, match=message):
        parse_pod_stats(raw)


def test_aggregate_weights_attainment_by_completed_requests() -> None:
    a = parse_pod_stats(pod_stats({"interactive": (90, 90), "batch": (0, 0)}))
    b = parse_pod_stats(pod_stats({"interactive": (10, 0)}, waiting=4, kv=0.7))
    pool = aggregate([a, b], num_unreachable=1, tier_order=["interactive", "standard", "batch"])
    tier = pool.tier("interactive")
    assert tier is not None
    assert (tier.num_completed, tier.num_slo_met) == (100, 90)
    assert tier.attainment == pytest.approx(0.9)  # not the 0.5 mean of the pods' 1.0 and 0.0
    assert tier.goodput_rps == pytest.approx(90 / 60)
    assert tier.num_rejected == 2
    assert [t.name for t in pool.tiers] == ["interactive", "batch"]
    assert (pool.pods_reporting, pool.pods_unreachable, pool.waiting, pool.kv_usage_max) == (
        2,
        1,
        4,
        0.7,
    )


def test_status_tiers_list_every_configured_tier() -> None:
    pool = aggregate([parse_pod_stats(pod_stats({"interactive": (20, 19)}))])
    rows = {r["name"]: r for r in tier_status(pool, TIERS)}
    assert set(rows) == {"interactive", "standard", "batch"}
    assert rows["interactive"]["attainment"] == 0.95 and rows["interactive"]["sloMet"] == 19
    assert rows["interactive"]["ttftP99Seconds"] == 0.2
    assert "attainment" not in rows["standard"]
    assert tightest_tier(TIERS) == "interactive"


def test_slo_condition_true_false_unknown() -> None:
    assert slo_condition(aggregate([]), TIERS).status == "Unknown"
    idle = aggregate([parse_pod_stats(pod_stats({"interactive": (0, 0)}))])
    assert slo_condition(idle, TIERS).reason == "NoTraffic"
    good = aggregate([parse_pod_stats(pod_stats({"interactive": (100, 96), "batch": (10, 10)}))])
    assert slo_condition(good, TIERS).status == "True"
    bad = aggregate([parse_pod_stats(pod_stats({"interactive": (100, 80), "batch": (10, 10)}))])
    cond = slo_condition(bad, TIERS)
    assert (cond.status, cond.reason) == ("False", "BelowTarget")
    assert "interactive 80.0% < 95%" in cond.message


def test_rollout_conditions() -> None:
    ready, progressing = rollout_conditions(desired=2, ready=2, updated=2, deployment_current=True)
    assert (ready.status, progressing.status) == ("True", "False")
    ready, progressing = rollout_conditions(desired=2, ready=1, updated=1, deployment_current=True)
    assert (ready.status, progressing.status) == ("False", "True")
    ready, _ = rollout_conditions(desired=0, ready=0, updated=0, deployment_current=True)
    assert ready.reason == "ScaledToZero"


def test_transition_time_moves_only_on_status_change() -> None:
    first = set_conditions([], [Condition("Ready", "False", "A", "x")], now="t1", generation=1)
    same = set_conditions(first, [Condition("Ready", "False", "B", "y")], now="t2", generation=1)
    assert same[0]["lastTransitionTime"] == "t1" and same[0]["reason"] == "B"
    flipped = set_conditions(same, [Condition("Ready", "True", "C", "z")], now="t3", generation=2)
    assert flipped[0]["lastTransitionTime"] == "t3" and flipped[0]["observedGeneration"] == 2
    kept = set_conditions(flipped, [Condition("Degraded", "False", "R", "ok")], now="t4", generation=2)
    assert [c["type"] for c in kept] == ["Ready", "Degraded"]


def test_status_delta_is_empty_when_nothing_changed() -> None:
    assert status_delta({"a": 1, "b": [1]}, {"a": 1, "b": [1]}) == {}
    assert status_delta({"a": 1}, {"a": 2, "c": None}) == {"a": 2}
