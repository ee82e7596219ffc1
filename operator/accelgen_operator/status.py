"""Pure: pods' ``/stats`` answers → the pool's status tiers and conditions.

A pod's answer is the sidecar's :class:`accelgen.wire.SidecarStats`: per tier a
:class:`~accelgen.core.summary.TierSummary` of its last window, and its engine. The
pool's figure for a tier is :func:`accelgen.core.summary.merge` of its pods': counts
and rates add up (attainment = Σ slo_met / Σ completed, each pod weighted by its
completed requests); p99 latencies take the worst pod's (an upper bound: percentiles
of different pods cannot be merged exactly). Nothing here recomputes what the sidecar
measured.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from accelgen.core.summary import TierSummary, merge
from accelgen.core.tiers import TierSet
from accelgen.wire import SidecarStats, WireError

#: One pod's parsed ``/stats``.
PodStats = SidecarStats


class StatsError(ValueError):
    """A pod's /stats answer does not follow the contract."""


@dataclass(frozen=True, slots=True)
class PoolStats:
    """The pool's aggregate over the pods that answered."""

    tiers: tuple[TierSummary, ...] = ()
    pods_reporting: int = 0
    pods_unreachable: int = 0
    window_s: float = 0.0
    waiting: int = 0
    kv_usage_max: float = 0.0

    def tier(self, name: str) -> TierSummary | None:
        return next((t for t in self.tiers if t.name == name), None)


def parse_pod_stats(raw: object) -> PodStats:
    """Parse and check one /stats answer; :class:`StatsError` says what is wrong."""
    try:
        return SidecarStats.from_json(raw)
    except WireError as err:
        raise StatsError(str(err)) from None


def aggregate(pods: Sequence[PodStats], *, num_unreachable: int = 0, tier_order: Sequence[str] = ()) -> PoolStats:
    """Merge the pods' tiers (see the module docstring); tiers in ``tier_order`` first."""
    by_name: dict[str, list[TierSummary]] = {}
    for pod in pods:
        for t in pod.tiers:
            by_name.setdefault(t.name, []).append(t)
    names = [n for n in tier_order if n in by_name] + sorted(n for n in by_name if n not in tier_order)
    return PoolStats(
        tiers=tuple(merge(n, by_name[n]) for n in names),
        pods_reporting=len(pods),
        pods_unreachable=num_unreachable,
        window_s=max((p.window_s for p in pods), default=0.0),
        waiting=sum(p.engine.waiting for p in pods),
        kv_usage_max=max((p.engine.kv_usage for p in pods), default=0.0),
    )


def measured_attainment(stats: TierSummary | None) -> float | None:
    """A tier's attainment where it judged any request in the window, else None."""
    return stats.attainment if stats is not None and stats.num_requests else None


def tightest_tier(tiers: TierSet) -> str:
    """The tier with the tightest targets: smallest TBT, then TTFT; offline tiers last."""

    def key(t: Any) -> tuple[float, float, float]:
        inf = math.inf
        return (t.tbt_slo_s or inf, t.ttft_slo_s or inf, t.deadline_s or inf)

    return min(tiers, key=key).name


def tier_status(pool: PoolStats, tiers: TierSet) -> list[dict[str, Any]]:
    """``status.tiers``: every configured tier, with figures where pods reported some."""
    out = []
    for tier in tiers:
        row: dict[str, Any] = {"name": tier.name, "attainmentTarget": tier.attainment_target}
        stats = pool.tier(tier.name)
        if stats is not None:
            row.update(
                completed=stats.num_completed,
                sloMet=stats.num_slo_met,
                goodputRps=round(stats.goodput_rps, 6),
                goodputTokensPerSecond=round(stats.goodput_tokens_per_s, 6),
                throughputRps=round(stats.throughput_rps, 6),
                rejected=stats.num_rejected,
                ttftP99Seconds=round(stats.ttft_p99_s, 6),
                tbtP99Seconds=round(stats.tbt_p99_s, 6),
            )
            attainment = measured_attainment(stats)
            if attainment is not None:  # an empty window's 1.0 is not shown as measured
                row["attainment"] = round(attainment, 4)
        out.append(row)
    return out


@dataclass(frozen=True, slots=True)
class Condition:
    """A status condition before its timestamps are set."""

    type: str
    status: str  # "True" | "False" | "Unknown"
    reason: str
    message: str


def slo_condition(pool: PoolStats, tiers: TierSet) -> Condition:
    """``SLOAttained``: every tier with completions meets its attainment target."""
    if pool.pods_reporting == 0:
        return Condition("SLOAttained", "Unknown", "NoStats", "no pod answered /stats")
    measured: list[tuple[Any, float]] = []
    for tier in tiers:
        attainment = measured_attainment(pool.tier(tier.name))
        if attainment is not None:
            measured.append((tier, attainment))
    if not measured:
        return Condition("SLOAttained", "Unknown", "NoTraffic", "no request completed in the window")
    missed = [f"{t.name} {a:.1%} < {t.attainment_target:.0%}" for t, a in measured if a < t.attainment_target]
    if missed:
        return Condition("SLOAttained", "False", "BelowTarget", "; ".join(missed))
    return Condition("SLOAttained", "True", "TargetsMet", f"{len(measured)} tier(s) at or above target")


def rollout_conditions(*, desired: int, ready: int, updated: int, deployment_current: bool) -> list[Condition]:
    """``Ready`` and ``Progressing`` from the Deployment's counts."""
    if desired == 0:
        ready_c = Condition("Ready", "False", "ScaledToZero", "the pool has zero replicas")
    elif ready >= desired:
        ready_c = Condition("Ready", "True", "AllReplicasReady", f"{ready}/{desired} pods ready")
    else:
        ready_c = Condition("Ready", "False", "ReplicasNotReady", f"{ready}/{desired} pods ready")
    if not deployment_current or updated < desired:
        progressing = Condition("Progressing", "True", "RollingOut", f"{updated}/{desired} pods updated")
    else:
        progressing = Condition("Progressing", "False", "RolloutComplete", "every pod runs the current spec")
    return [ready_c, progressing]


def set_conditions(
    current: Sequence[Mapping[str, Any]],
    new: Sequence[Condition],
    *,
    now: str,
    generation: int | None,
) -> list[dict[str, Any]]:
    """Merge conditions by type; ``lastTransitionTime`` moves only when ``status`` changes.

    Conditions in ``current`` whose type is not in ``new`` are kept as they are.
    """
    by_type = {str(c.get("type")): dict(c) for c in current if isinstance(c, Mapping)}
    for cond in new:
        old = by_type.get(cond.type)
        changed = old is None or old.get("status") != cond.status
        row: dict[str, Any] = {
            "type": cond.type,
            "status": cond.status,
            "reason": cond.reason,
            "message": cond.message,
            "lastTransitionTime": now if changed or old is None else old.get("lastTransitionTime", now),
        }
        if generation is not None:
            row["observedGeneration"] = generation
        by_type[cond.type] = row
    order = ["Ready", "Progressing", "Degraded", "SLOAttained"]
    return sorted(by_type.values(), key=lambda c: order.index(c["type"]) if c["type"] in order else len(order))


def status_delta(current: Mapping[str, Any], desired: Mapping[str, Any]) -> dict[str, Any]:
    """The top-level status fields whose value differs (empty: nothing to write)."""
    return {k: v for k, v in desired.items() if current.get(k) != v}
