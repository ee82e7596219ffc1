"""``least-requests``: Envoy's LEAST_REQUEST balancer (power of two choices on outstanding requests)."""

from __future__ import annotations

import random
from collections.abc import Sequence
from typing import ClassVar

from accelgen.core.routing.types import Decision, PodState, RouteRequest, no_ready_pod


class LeastRequestsRouter:
    """Of two ready pods drawn at random, the one holding fewer requests (waiting + running).

    Envoy's ``LEAST_REQUEST`` policy with its default ``choice_count`` of 2; with one
    ready pod, that pod.
    """

    name: ClassVar[str] = "least-requests"
    description: ClassVar[str] = "Envoy's least request: the less loaded of two random pods"

    def __init__(self, *, seed: int = 0, choice_count: int = 2) -> None:
        self._rng = random.Random(seed)
        self.choice_count = max(1, choice_count)

    def pick(self, request: RouteRequest, pods: Sequence[PodState], now: float) -> Decision:
        none = no_ready_pod(pods)
        if none is not None:
            return none
        ready = [p for p in pods if p.ready]
        drawn = self._rng.sample(ready, min(self.choice_count, len(ready)))
        best = min(drawn, key=lambda p: p.load)
        return Decision(best.name, reason=f"fewest requests of {len(drawn)} drawn ({best.load})")
