"""Pure: what the handlers write to status, from a Deployment, the pods' stats and the spec."""

from __future__ import annotations

import datetime
from typing import Any

from accelgen.core.summary import TierSummary
from accelgen_operator.observe import (
    RECONCILED,
    autoscale_step,
    degraded_from,
    failure_status,
    is_reconciled,
    observed_status,
    reconciled_status,
)
from accelgen_operator.status import Condition, PoolStats
from accelgen_operator.tierconfig import parse_checked, tiers_config
from tests.support.operator_cluster import make_spec

SPEC = make_spec(replicas=2)
TIERS = parse_checked(tiers_config(SPEC))
NOW = "2026-01-01T00:00:00Z"


def pool(completed: int, met: int) -> PoolStats:
    return PoolStats(
        tiers=(TierSummary("interactive", 60.0, num_requests=completed, num_completed=completed, num_slo_met=met),),
        pods_reporting=2,
        pods_unreachable=1,
        window_s=60.0,
    )


def deployment(*, ready: int, updated: int, observed: int = 3, generation: int = 3) -> dict[str, Any]:
    return {
        "metadata": {"generation": generation},
        "status": {"replicas": 2, "readyReplicas": ready, "updatedReplicas": updated, "observedGeneration": observed},
    }


def by_type(conditions: list[dict[str, Any]]) -> dict[str, tuple[str, str]]:
    return {c["type"]: (c["status"], c["reason"]) for c in conditions}


def test_observed_status_has_the_deployments_counts_the_pools_tiers_and_every_condition() -> None:
    out = observed_status(
        spec=SPEC,
        status={},
        deployment=deployment(ready=2, updated=2),
        pool=pool(3, 2),
        tiers=TIERS,
        now=NOW,
        generation=7,
    )
    assert (out["replicas"], out["readyReplicas"], out["updatedReplicas"]) == (2, 2, 2)
    assert (out["podsReporting"], out["podsUnreachable"], out["windowSeconds"]) == (2, 1, 60.0)
    assert [t["name"] for t in out["tiers"]] == ["interactive", "standard", "batch"]
    assert (out["tightestTier"], out["tightestAttainment"]) == ("interactive", 0.6667)
    assert [c["type"] for c in out["conditions"]] == ["Ready", "Progressing", "Degraded", "SLOAttained"]
    assert by_type(out["conditions"]) == {
        "Ready": ("True", "AllReplicasReady"),
        "Progressing": ("False", "RolloutComplete"),
        "Degraded": ("False", "Reconciled"),
        "SLOAttained": ("False", "BelowTarget"),
    }
    assert {c["observedGeneration"] for c in out["conditions"]} == {7}
    assert "autoscaling" not in out


def test_observed_status_without_a_deployment_or_traffic() -> None:
    empty = PoolStats(pods_reporting=1)
    out = observed_status(spec=SPEC, status={}, deployment={}, pool=empty, tiers=TIERS, now=NOW, generation=None)
    assert (out["replicas"], out["tightestAttainment"]) == (0, None)
    assert by_type(out["conditions"])["Ready"] == ("False", "ReplicasNotReady")
    assert by_type(out["conditions"])["Progressing"] == ("True", "RollingOut")
    assert by_type(out["conditions"])["SLOAttained"] == ("Unknown", "NoTraffic")


def test_a_stale_deployment_is_still_rolling_out() -> None:
    stale = deployment(ready=2, updated=2, observed=2, generation=3)
    out = observed_status(spec=SPEC, status={}, deployment=stale, pool=pool(1, 1), tiers=TIERS, now=NOW, generation=1)
    assert by_type(out["conditions"])["Progressing"] == ("True", "RollingOut")


def test_the_timer_keeps_the_degraded_condition_a_failed_reconcile_left() -> None:
    failed = Condition("Degraded", "True", "ApplyFailed", "no API")
    status = failure_status({}, failed, now=NOW, generation=4)
    assert status["lastReconcile"] == {"reason": "ApplyFailed", "message": "no API", "generation": 4}
    assert by_type(status["conditions"]) == {"Degraded": ("True", "ApplyFailed")}
    assert degraded_from(status) == failed
    assert not is_reconciled(status, 4)
    out = observed_status(spec=SPEC, status=status, deployment={}, pool=PoolStats(), tiers=TIERS, now=NOW, generation=4)
    assert by_type(out["conditions"])["Degraded"] == ("True", "ApplyFailed")


def test_reconciled_status_clears_degraded_and_names_the_selector() -> None:
    children = [{"kind": "ConfigMap", "data": {"a": "1"}}, {"kind": "Deployment", "spec": {"replicas": 1}}]
    broken = failure_status({}, Condition("Degraded", "True", "ApplyFailed", "no API"), now=NOW, generation=4)
    status = reconciled_status("llama", children, broken, now="2026-01-01T00:01:00Z", generation=5)
    assert status["observedGeneration"] == 5
    assert "llama" in status["selector"]
    assert status["configHash"] == reconciled_status("llama", children, {}, now=NOW, generation=5)["configHash"]
    (degraded,) = status["conditions"]
    assert (degraded["status"], degraded["lastTransitionTime"]) == ("False", "2026-01-01T00:01:00Z")
    assert is_reconciled(status, 5) and not is_reconciled(status, 6)
    assert degraded_from(status) == RECONCILED
    assert degraded_from({}) == RECONCILED


def test_autoscale_step_counts_periods_then_steps_and_remembers_when() -> None:
    spec = make_spec(replicas=1, autoscaling={"maxReplicas": 3, "tier": "interactive", "evaluationPeriods": 2})
    now = datetime.datetime(2026, 1, 1, 12, 0, 0, tzinfo=datetime.UTC)
    out, decision = autoscale_step(spec, {}, pool(40, 20), TIERS, now=now)
    assert (out, decision) == ({"belowPeriods": 1, "abovePeriods": 0}, None)
    out, decision = autoscale_step(spec, {"autoscaling": out}, pool(40, 20), TIERS, now=now)
    assert decision is not None and (decision.replicas, decision.reason) == (2, "ScaledUp")
    assert out["lastScaleTime"] == "2026-01-01T12:00:00Z"
    assert out["lastScaleReason"] == decision.message
    scaled = dict(out)
    later = now + datetime.timedelta(seconds=10)
    out, decision = autoscale_step(spec, {"autoscaling": scaled}, pool(40, 40), TIERS, now=later)
    assert decision is None
    assert out == {"belowPeriods": 0, "abovePeriods": 1} | {k: scaled[k] for k in ("lastScaleTime", "lastScaleReason")}
