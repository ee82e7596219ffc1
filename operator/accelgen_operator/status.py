"""Pure: pods' ``/stats`` answers → the pool's status tiers and conditions.

The sidecar's ``GET /stats`` contract (one pod, last window)::

    {"pool": "name-or-null", "window_s": 60,
     "tiers": [{"name", "completed", "slo_met", "attainment", "goodput_rps",
                "goodput_tokens_per_s", "throughput_rps", "rejected",
                "ttft_p99_s", "tbt_p99_s"}],
     "engine": {"ready", "running", "waiting", "kv_usage"}}

Pool figures: attainment = Σ slo_met / Σ completed (each pod weighted by its completed
requests); rates and counts add up across pods; p99 latencies take the worst pod's (an
upper bound: percentiles of different pods cannot be merged exactly).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from accelgen.core.tiers import TierSet

_TIER_COUNTS = ("completed", "slo_met", "rejected")
_TIER_SUMS = ("goodput_rps", "goodput_tokens_per_s", "throughput_rps")
_TIER_MAXES = ("ttft_p99_s", "tbt_p99_s")
_TIER_RATES = (*_TIER_SUMS, *_TIER_MAXES)


class StatsError(ValueError):
    """A pod's /stats answer does not follow the contract."""


@dataclass(frozen=True, slots=True)
class TierStats:
    """One tier's figures in one window (one pod's, or the pool's sum)."""

    name: str
    completed: int = 0
    slo_met: int = 0
    rejected: int = 0
    goodput_rps: float = 0.0
    goodput_tokens_per_s: float = 0.0
    throughput_rps: float = 0.0
    ttft_p99_s: float = 0.0
    tbt_p99_s: float = 0.0

    @property
    def attainment(self) -> float | None:
        """Fraction of completed requests that met the SLO; None without completions."""
        return self.slo_met / self.completed if self.completed else None


@dataclass(frozen=True, slots=True)
class EngineStats:
    ready: bool = False
    running: int = 0
    waiting: int = 0
    kv_usage: float = 0.0


@dataclass(frozen=True, slots=True)
class PodStats:
    """One pod's parsed /stats."""

    window_s: float
    tiers: tuple[TierStats, ...]
    engine: EngineStats


@dataclass(frozen=True, slots=True)
class PoolStats:
    """The pool's aggregate over the pods that answered."""

    tiers: tuple[TierStats, ...] = ()
    pods_reporting: int = 0
    pods_unreachable: int = 0
    window_s: float = 0.0
    waiting: int = 0
    kv_usage_max: float = 0.0

    def tier(self, name: str) -> TierStats | None:
        return next((t for t in self.tiers if t.name == name), None)


def _number(raw: Mapping[str, Any], key: str, *, integer: bool = False) -> float:
    value = raw.get(key, 0)
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value) or value < 0:
        raise StatsError(f"{key} must be a non-negative number, got {value!r}")
    if integer and value != int(value):
        raise StatsError(f"{key} must be a whole number, got {value!r}")
    return value


def _tier(name: str, values: Mapping[str, float]) -> TierStats:
    return TierStats(
        name=name,
        completed=int(values["completed"]),
        slo_met=int(values["slo_met"]),
        rejected=int(values["rejected"]),
        **{k: round(float(values[k]), 6) for k in _TIER_RATES},
    )


def parse_pod_stats(raw: object) -> PodStats:
    """Parse and check one /stats answer; :class:`StatsError` says what is wrong."""
    if not isinstance(raw, Mapping):
        raise StatsError(f"expected a JSON object, got {type(raw).__name__}")
    tiers_raw = raw.get("tiers")
    if not isinstance(tiers_raw, list):
        raise StatsError("tiers must be a list")
    tiers = []
    for i, item in enumerate(tiers_raw):
        if not isinstance(item, Mapping) or not isinstance(item.get("name"), str):
            raise StatsError(f"tiers[{i}] must be an object with a string name")
        try:
            counts = {k: int(_number(item, k, integer=True)) for k in _TIER_COUNTS}
            rates = {k: float(_number(item, k)) for k in _TIER_RATES}
        except StatsError as err:
            raise StatsError(f"tiers[{i}].{err}") from None
        if counts["slo_met"] > counts["completed"]:
            raise StatsError(f"tiers[{i}]: slo_met exceeds completed")
        tiers.append(_tier(item["name"], {**counts, **rates}))
    engine_raw = raw.get("engine")
    engine_raw = {} if engine_raw is None else engine_raw
    if not isinstance(engine_raw, Mapping):
        raise StatsError("engine must be an object")
    engine = EngineStats(
        ready=bool(engine_raw.get("ready", False)),
        running=int(_number(engine_raw, "running", integer=True)),
        waiting=int(_number(engine_raw, "waiting", integer=True)),
        kv_usage=min(1.0, float(_number(engine_raw, "kv_usage"))),
    )
    return PodStats(window_s=float(_number(raw, "window_s")), tiers=tuple(tiers), engine=engine)


def aggregate(pods: Sequence[PodStats], *, num_unreachable: int = 0, tier_order: Sequence[str] = ()) -> PoolStats:
    """Sum the pods' tiers (see the module docstring); tiers in ``tier_order`` first."""
    sums: dict[str, dict[str, float]] = {}
    for pod in pods:
        for t in pod.tiers:
            acc = sums.setdefault(t.name, dict.fromkeys((*_TIER_COUNTS, *_TIER_RATES), 0.0))
            for key in (*_TIER_COUNTS, *_TIER_SUMS):
                acc[key] += getattr(t, key)
            for key in _TIER_MAXES:
                acc[key] = max(acc[key], getattr(t, key))
    names = [n for n in tier_order if n in sums] + sorted(n for n in sums if n not in tier_order)
    tiers = tuple(_tier(n, sums[n]) for n in names)
    return PoolStats(
        tiers=tiers,
        pods_reporting=len(pods),
        pods_unreachable=num_unreachable,
        window_s=max((p.window_s for p in pods), default=0.0),
        waiting=sum(p.engine.waiting for p in pods),
        kv_usage_max=max((p.engine.kv_usage for p in pods), default=0.0),
    )


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
                completed=stats.completed,
                sloMet=stats.slo_met,
                goodputRps=stats.goodput_rps,
                goodputTokensPerSecond=stats.goodput_tokens_per_s,
                throughputRps=stats.throughput_rps,
                rejected=stats.rejected,
                ttftP99Seconds=stats.ttft_p99_s,
                tbtP99Seconds=stats.tbt_p99_s,
            )
            if stats.attainment is not None:
                row["attainment"] = round(stats.attainment, 4)
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
        stats = pool.tier(tier.name)
        if stats is not None and stats.attainment is not None:
            measured.append((tier, stats.attainment))
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
