"""``random``: what a Kubernetes Service does (kube-proxy picks a ready endpoint at random)."""

from __future__ import annotations

import random
from collections.abc import Sequence
from typing import ClassVar

from accelgen.core.routing.types import Decision, PodState, RouteRequest, no_ready_pod


class RandomRouter:
    """A uniformly random ready pod, blind to load and tiers (a Service in iptables mode)."""

    name: ClassVar[str] = "random"
    description: ClassVar[str] = "a Kubernetes Service: a random ready pod"

    def __init__(self, *, seed: int = 0) -> None:
        self._rng = random.Random(seed)

    def pick(self, request: RouteRequest, pods: Sequence[PodState], now: float) -> Decision:
        none = no_ready_pod(pods)
        if none is not None:
            return none
        ready = [p for p in pods if p.ready]
        return Decision(self._rng.choice(ready).name, reason="random")
