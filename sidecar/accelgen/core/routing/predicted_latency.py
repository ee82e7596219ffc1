"""``predicted-latency``: llm-d's latency-predictor routing, given a perfect predictor.

llm-d's SLO-aware scheduling predicts, per candidate pod, the request's time to first
token and time per output token (a model trained online on the pods' metrics) and
prefers pods where both predictions meet the request's targets. Here the predictor is
as good as the pod's own state allows (:mod:`accelgen.core.routing.estimate`: the
prompt tokens queued ahead of the request at its tier's urgency, the prefill rate its
running batch's TBT leaves, one more decode in that batch); in the simulator that state
is the simulated pod's truth.

Choice: among the pods whose predicted TTFT and TPOT meet the targets, the one with the
lowest predicted TTFT; when none does, the lowest sum of predicted/target ratios. A
pod that reports no prediction inputs is scored by its load, after every predicted one.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import ClassVar

from accelgen.core.routing.estimate import predicted_tpot_s, predicted_ttft_s
from accelgen.core.routing.types import Decision, PodState, RouteRequest, no_ready_pod
from accelgen.core.tiers import SLOTier, TierSet


class PredictedLatencyRouter:
    """The pod with the lowest predicted TTFT among those meeting TTFT and TPOT (docstring)."""

    name: ClassVar[str] = "predicted-latency"
    uses_tiers: ClassVar[bool] = True
    description: ClassVar[str] = "llm-d's predicted-latency routing with a perfect predictor"

    def __init__(self, *, seed: int = 0, tiers: TierSet | None = None) -> None:
        del seed  # deterministic: ties go to the first pod given
        self.tiers: Mapping[str, SLOTier] | None = {t.name: t for t in tiers} if tiers is not None else None

    def _key(self, request: RouteRequest, pod: PodState) -> tuple[int, float, float]:
        ttft = predicted_ttft_s(pod, request, self.tiers)
        tpot = predicted_tpot_s(pod)
        if ttft is None or tpot is None:
            return (2, float(pod.load), 0.0)
        ttft_target = request.ttft_slo_s if request.ttft_slo_s is not None else request.deadline_s or math.inf
        tpot_target = request.tbt_slo_s if request.tbt_slo_s is not None else math.inf
        if ttft <= ttft_target and tpot <= tpot_target:
            return (0, ttft, tpot)
        return (1, ttft / ttft_target + tpot / tpot_target, ttft)

    def pick(self, request: RouteRequest, pods: Sequence[PodState], now: float) -> Decision:
        none = no_ready_pod(pods)
        if none is not None:
            return none
        ready = [p for p in pods if p.ready]
        keys = [self._key(request, p) for p in ready]
        best = min(range(len(ready)), key=keys.__getitem__)
        kind = ("meets both predictions", "meets no prediction: least over", "no prediction: least loaded")[
            keys[best][0]
        ]
        return Decision(ready[best].name, reason=f"{kind} (key {keys[best][1]:.3g})")
