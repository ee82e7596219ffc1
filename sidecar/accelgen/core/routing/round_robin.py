"""``round-robin``: the ready pods in turn (a Service in IPVS round-robin mode, Envoy's default)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import ClassVar

from accelgen.core.routing.types import Decision, PodState, RouteRequest, no_ready_pod


class RoundRobinRouter:
    """The next ready pod after the one picked last, in the order the pods are given."""

    name: ClassVar[str] = "round-robin"
    description: ClassVar[str] = "Envoy's / IPVS's round robin over the ready pods"

    def __init__(self, *, seed: int = 0) -> None:
        self._next = seed  # NOTE: the seed only chooses where the turn starts

    def pick(self, request: RouteRequest, pods: Sequence[PodState], now: float) -> Decision:
        none = no_ready_pod(pods)
        if none is not None:
            return none
        ready = [p for p in pods if p.ready]
        pod = ready[self._next % len(ready)]
        self._next = (self._next + 1) % len(ready)
        return Decision(pod.name, reason="round robin")
