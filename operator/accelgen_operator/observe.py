"""Pure: what the handlers write to a pool's status, from what they read.

The handlers read (the Deployment, the pods' ``/stats``) and patch; these functions
decide the fields, on plain dicts, so they are tested without an API server.

    reconcile ok      ──► reconciled_status:  observedGeneration, selector, configHash, Degraded=False
    reconcile failed  ──► failure_status:     lastReconcile, Degraded=True
    timer             ──► observed_status:    replicas, tiers, Ready/Progressing/Degraded/SLOAttained
                          autoscale_step:     status.autoscaling and the step to take, if any
"""

from __future__ import annotations

import datetime
from collections.abc import Mapping, Sequence
from typing import Any

from accelgen.core.tiers import TierSet
from accelgen_operator.autoscaling import AutoscalePolicy, AutoscaleState, ScaleDecision, decide
from accelgen_operator.resources import content_hash, effective_replicas, selector_labels
from accelgen_operator.status import (
    Condition,
    PoolStats,
    measured_attainment,
    rollout_conditions,
    set_conditions,
    slo_condition,
    tier_status,
    tightest_tier,
)

RECONCILED = Condition("Degraded", "False", "Reconciled", "every child matches the spec")


def outcome(cond: Condition, generation: int | None) -> dict[str, Any]:
    """``status.lastReconcile``: the last reconcile's reason, message and generation."""
    # Kept apart from conditions so the timer can rebuild Degraded from it (both write conditions).
    return {"reason": cond.reason, "message": cond.message, "generation": generation}


def degraded_from(status: Mapping[str, Any]) -> Condition:
    """The Degraded condition the last reconcile left (Reconciled when there was none)."""
    last = status.get("lastReconcile") or {}
    if not last or last.get("reason") == RECONCILED.reason:
        return RECONCILED
    return Condition("Degraded", "True", str(last.get("reason")), str(last.get("message", "")))


def is_reconciled(status: Mapping[str, Any], generation: int | None) -> bool:
    """Whether the last reconcile of this generation succeeded."""
    last = status.get("lastReconcile") or {}
    return bool(last.get("reason") == RECONCILED.reason and last.get("generation") == generation)


def _with_degraded(
    status: Mapping[str, Any], cond: Condition, *, now: str, generation: int | None
) -> list[dict[str, Any]]:
    """The status's conditions with Degraded replaced by ``cond``."""
    return set_conditions(status.get("conditions") or [], [cond], now=now, generation=generation)


def failure_status(status: Mapping[str, Any], cond: Condition, *, now: str, generation: int | None) -> dict[str, Any]:
    """The status fields of a failed reconcile: its outcome and Degraded=True."""
    return {
        "lastReconcile": outcome(cond, generation),
        "conditions": _with_degraded(status, cond, now=now, generation=generation),
    }


def reconciled_status(
    name: str,
    children: Sequence[Mapping[str, Any]],
    status: Mapping[str, Any],
    *,
    now: str,
    generation: int | None,
) -> dict[str, Any]:
    """The status fields of a successful reconcile of ``children``."""
    return {
        "observedGeneration": generation,
        "selector": ",".join(f"{k}={v}" for k, v in selector_labels(name).items()),
        "configHash": content_hash([c.get("data") or c.get("spec") for c in children]),
        "lastReconcile": outcome(RECONCILED, generation),
        "conditions": _with_degraded(status, RECONCILED, now=now, generation=generation),
    }


def _observed_conditions(
    spec: Mapping[str, Any], status: Mapping[str, Any], deployment: Mapping[str, Any], pool: PoolStats, tiers: TierSet
) -> list[Condition]:
    """Ready and Progressing from the Deployment, Degraded as reconciled, SLOAttained from the pods."""
    dstat = deployment.get("status") or {}
    current = (dstat.get("observedGeneration") or 0) >= ((deployment.get("metadata") or {}).get("generation") or 0)
    return [
        *rollout_conditions(
            desired=effective_replicas(spec),
            ready=int(dstat.get("readyReplicas") or 0),
            updated=int(dstat.get("updatedReplicas") or 0),
            deployment_current=bool(deployment) and current,
        ),
        degraded_from(status),
        slo_condition(pool, tiers),
    ]


def _tightest_attainment(pool: PoolStats, tightest: str) -> float | None:
    """The tightest tier's pool attainment, rounded; None without completions."""
    attainment = measured_attainment(pool.tier(tightest))
    return None if attainment is None else round(attainment, 4)


def observed_status(
    *,
    spec: Mapping[str, Any],
    status: Mapping[str, Any],
    deployment: Mapping[str, Any],
    pool: PoolStats,
    tiers: TierSet,
    now: str,
    generation: int | None,
) -> dict[str, Any]:
    """The timer's status fields: the Deployment's counts, the pool's tiers and every condition.

    Args:
        spec: The InferencePool's spec.
        status: Its current status (conditions keep their transition times).
        deployment: The pool's Deployment, ``{}`` when there is none.
        pool: The pods' aggregated ``/stats``.
        tiers: The pool's tiers, in their configured order.
        now: The timestamp for conditions that change.
        generation: The pool's ``metadata.generation``.

    Returns:
        The fields to write; ``autoscaling`` is the caller's (:func:`autoscale_step`).
    """
    dstat = deployment.get("status") or {}
    tightest = tightest_tier(tiers)
    return {
        "replicas": int(dstat.get("replicas") or 0),
        "readyReplicas": int(dstat.get("readyReplicas") or 0),
        "updatedReplicas": int(dstat.get("updatedReplicas") or 0),
        "podsReporting": pool.pods_reporting,
        "podsUnreachable": pool.pods_unreachable,
        "windowSeconds": pool.window_s,
        "tiers": tier_status(pool, tiers),
        "tightestTier": tightest,
        "tightestAttainment": _tightest_attainment(pool, tightest),
        "conditions": set_conditions(
            status.get("conditions") or [],
            _observed_conditions(spec, status, deployment, pool, tiers),
            now=now,
            generation=generation,
        ),
    }


def _remembered_state(remembered: Mapping[str, Any]) -> AutoscaleState:
    """The autoscaler's state as the last period left it in ``status.autoscaling``."""
    last = remembered.get("lastScaleTime")
    last_s = datetime.datetime.fromisoformat(last.replace("Z", "+00:00")).timestamp() if last else None
    return AutoscaleState(
        below_periods=int(remembered.get("belowPeriods", 0)),
        above_periods=int(remembered.get("abovePeriods", 0)),
        last_scale_s=last_s,
    )


def autoscale_step(
    spec: Mapping[str, Any],
    status: Mapping[str, Any],
    pool: PoolStats,
    tiers: TierSet,
    *,
    now: datetime.datetime,
) -> tuple[dict[str, Any], ScaleDecision | None]:
    """One autoscaling period: the new ``status.autoscaling`` and the step to take (None: stay)."""
    policy = AutoscalePolicy.from_spec(spec["autoscaling"], tiers)
    remembered = status.get("autoscaling") or {}
    state, decision = decide(
        policy, _remembered_state(remembered), replicas=int(spec.get("replicas", 1)), pool=pool, now_s=now.timestamp()
    )
    out: dict[str, Any] = {"belowPeriods": state.below_periods, "abovePeriods": state.above_periods}
    if remembered.get("lastScaleTime"):
        out["lastScaleTime"] = remembered["lastScaleTime"]
    if remembered.get("lastScaleReason"):
        out["lastScaleReason"] = remembered["lastScaleReason"]
    if decision is not None:
        out["lastScaleTime"] = now.strftime("%Y-%m-%dT%H:%M:%SZ")
        out["lastScaleReason"] = decision.message
    return out, decision
