"""Pure: autoscaling decisions — bounds, streaks, hysteresis, cooldown."""

from __future__ import annotations

from accelgen_operator.autoscaling import AutoscalePolicy, AutoscaleState, decide
from accelgen_operator.status import PoolStats, aggregate, parse_pod_stats
from accelgen_operator.tierconfig import parse_checked, tiers_config
from tests.support.operator_cluster import make_spec, pod_stats

TIERS = parse_checked(tiers_config(make_spec()))
POLICY = AutoscalePolicy(
    min_replicas=1,
    max_replicas=3,
    tier="interactive",
    target_attainment=0.95,
    evaluation_periods=2,
    cooldown_s=60,
    min_completed=20,
)


def window(completed: int, met: int, *, waiting: int = 0, kv: float = 0.1) -> PoolStats:
    return aggregate([parse_pod_stats(pod_stats({"interactive": (completed, met)}, waiting=waiting, kv=kv))])


def test_policy_defaults_come_from_the_tier() -> None:
    policy = AutoscalePolicy.from_spec({"maxReplicas": 4}, TIERS)
    assert (policy.tier, policy.target_attainment, policy.min_replicas) == ("standard", 0.9, 1)
    policy = AutoscalePolicy.from_spec({"maxReplicas": 4, "tier": "interactive", "targetAttainment": 0.99}, TIERS)
    assert (policy.tier, policy.target_attainment) == ("interactive", 0.99)


def test_scales_up_after_the_streak_and_not_before() -> None:
    state, decision = decide(POLICY, AutoscaleState(), replicas=1, pool=window(100, 80), now_s=1000)
    assert decision is None and state.below_periods == 1
    state, decision = decide(POLICY, state, replicas=1, pool=window(100, 80), now_s=1010)
    assert decision is not None and decision.replicas == 2 and decision.reason == "ScaledUp"
    assert "interactive attainment 80.0%" in decision.message
    assert state == AutoscaleState(last_scale_s=1010)


def test_cooldown_blocks_the_next_step() -> None:
    state = AutoscaleState(below_periods=5, last_scale_s=1000)
    _, decision = decide(POLICY, state, replicas=2, pool=window(100, 80), now_s=1030)
    assert decision is None
    _, decision = decide(POLICY, state, replicas=2, pool=window(100, 80), now_s=1061)
    assert decision is not None and decision.replicas == 3


def test_never_above_max_or_below_min() -> None:
    _, decision = decide(POLICY, AutoscaleState(below_periods=9), replicas=3, pool=window(100, 50), now_s=1e6)
    assert decision is None
    _, decision = decide(POLICY, AutoscaleState(above_periods=9), replicas=1, pool=window(100, 100), now_s=1e6)
    assert decision is None
    _, decision = decide(POLICY, AutoscaleState(), replicas=7, pool=window(0, 0), now_s=1e6)
    assert decision is not None and (decision.replicas, decision.reason) == (3, "ScaledToBounds")


def test_scales_down_only_when_well_above_target_and_idle() -> None:
    state = AutoscaleState(above_periods=1)
    _, decision = decide(POLICY, state, replicas=3, pool=window(100, 100), now_s=1e6)
    assert decision is not None and decision.replicas == 2 and decision.reason == "ScaledDown"
    busy = window(100, 100, waiting=5)
    _, decision = decide(POLICY, state, replicas=3, pool=busy, now_s=1e6)
    assert decision is None
    _, decision = decide(POLICY, state, replicas=3, pool=window(100, 96), now_s=1e6)  # inside the band
    assert decision is None


def test_no_flapping_between_up_and_down() -> None:
    """Alternating windows around the target never complete a streak."""
    state, steps = AutoscaleState(), []
    for i in range(40):
        pool = window(100, 90) if i % 2 else window(100, 100)
        state, decision = decide(POLICY, state, replicas=2, pool=pool, now_s=1000 + 100 * i)
        if decision is not None:
            steps.append(decision.reason)
    assert steps == []


def test_too_few_completions_is_no_evidence() -> None:
    state, decision = decide(POLICY, AutoscaleState(below_periods=1), replicas=1, pool=window(5, 0), now_s=1e6)
    assert decision is None and state.below_periods == 0
