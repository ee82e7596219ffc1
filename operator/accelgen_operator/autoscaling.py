"""Pure: the autoscaler's decision from one stats window and its remembered state.

Rules (one step per decision, so a decision is always explainable in one Event):

- below target for ``evaluationPeriods`` windows in a row → +1 replica (up to max);
- at or above target + ``scaleDownHeadroom`` with low load (nothing waiting, KV usage
  under ``scaleDownMaxKvUsage``) for as many windows → −1 replica (down to min);
- between the two, or without enough completed requests to judge: reset the streaks;
- no step within ``cooldownSeconds`` of the last one, in either direction.

The gap between "below target" and "target + headroom", the streaks and the cooldown
together keep it from flapping. Replicas outside [min, max] are brought back at once.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from accelgen.core.tiers import TierSet
from accelgen_operator.status import PoolStats, measured_attainment


@dataclass(frozen=True, slots=True)
class AutoscalePolicy:
    """The spec's ``autoscaling`` block with its defaults resolved."""

    min_replicas: int
    max_replicas: int
    tier: str
    target_attainment: float
    headroom: float = 0.03
    max_kv_usage: float = 0.5
    evaluation_periods: int = 3
    cooldown_s: float = 300.0
    min_completed: int = 20

    @classmethod
    def from_spec(cls, raw: Mapping[str, Any], tiers: TierSet) -> AutoscalePolicy:
        """Resolve defaults: the protected tier is the default tier, its target the tier's own."""
        tier = tiers.get(raw.get("tier"))
        return cls(
            min_replicas=int(raw.get("minReplicas", 1)),
            max_replicas=int(raw["maxReplicas"]),
            tier=tier.name,
            target_attainment=float(raw.get("targetAttainment", tier.attainment_target)),
            headroom=float(raw.get("scaleDownHeadroom", 0.03)),
            max_kv_usage=float(raw.get("scaleDownMaxKvUsage", 0.5)),
            evaluation_periods=int(raw.get("evaluationPeriods", 3)),
            cooldown_s=float(raw.get("cooldownSeconds", 300)),
            min_completed=int(raw.get("minCompleted", 20)),
        )


@dataclass(frozen=True, slots=True)
class AutoscaleState:
    """What the autoscaler remembers between windows (kept in ``status.autoscaling``)."""

    below_periods: int = 0
    above_periods: int = 0
    last_scale_s: float | None = None  # epoch seconds of the last step


@dataclass(frozen=True, slots=True)
class ScaleDecision:
    replicas: int
    reason: str  # a CamelCase Event reason
    message: str


def decide(
    policy: AutoscalePolicy, state: AutoscaleState, *, replicas: int, pool: PoolStats, now_s: float
) -> tuple[AutoscaleState, ScaleDecision | None]:
    """The next state, and a decision or None ("no change")."""
    if replicas < policy.min_replicas or replicas > policy.max_replicas:
        bounded = min(max(replicas, policy.min_replicas), policy.max_replicas)
        msg = f"{replicas} replicas is outside [{policy.min_replicas}, {policy.max_replicas}]"
        return AutoscaleState(last_scale_s=now_s), ScaleDecision(bounded, "ScaledToBounds", msg)
    stats = pool.tier(policy.tier)
    attainment = measured_attainment(stats)
    if stats is None or attainment is None or stats.num_completed < policy.min_completed:
        return AutoscaleState(last_scale_s=state.last_scale_s), None
    below = attainment < policy.target_attainment
    idle = pool.waiting == 0 and pool.kv_usage_max < policy.max_kv_usage
    above = attainment >= policy.target_attainment + policy.headroom and idle
    state = AutoscaleState(
        below_periods=state.below_periods + 1 if below else 0,
        above_periods=state.above_periods + 1 if above else 0,
        last_scale_s=state.last_scale_s,
    )
    cooling = state.last_scale_s is not None and now_s - state.last_scale_s < policy.cooldown_s
    figures = f"tier {policy.tier} attainment {attainment:.1%}, target {policy.target_attainment:.0%}"
    step_up = below and state.below_periods >= policy.evaluation_periods
    if step_up and not cooling and replicas < policy.max_replicas:
        msg = f"{figures} for {state.below_periods} windows: {replicas} → {replicas + 1} replicas"
        return AutoscaleState(last_scale_s=now_s), ScaleDecision(replicas + 1, "ScaledUp", msg)
    step_down = above and state.above_periods >= policy.evaluation_periods
    if step_down and not cooling and replicas > policy.min_replicas:
        msg = f"{figures}, idle, for {state.above_periods} windows: {replicas} → {replicas - 1}"
        return AutoscaleState(last_scale_s=now_s), ScaleDecision(replicas - 1, "ScaledDown", msg)
    return state, None
