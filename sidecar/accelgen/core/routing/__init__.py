"""Routing policies for a pool of replicas, chosen by name from one registry.

Every policy implements :class:`accelgen.core.routing.types.Router`; the cluster
simulator and the gateway's endpoint picker run the very same classes.
"""

from __future__ import annotations

from typing import Any

from accelgen.core.routing.accelgen import AccelGenRouter, RouterQueue
from accelgen.core.routing.least_requests import LeastRequestsRouter
from accelgen.core.routing.predicted_latency import PredictedLatencyRouter
from accelgen.core.routing.queue_kv import QueueKvRouter
from accelgen.core.routing.random_choice import RandomRouter
from accelgen.core.routing.round_robin import RoundRobinRouter
from accelgen.core.routing.types import Decision, PodState, Router, RouteRequest, no_ready_pod

ROUTERS: dict[str, type[Any]] = {
    cls.name: cls
    for cls in (
        RandomRouter,
        RoundRobinRouter,
        LeastRequestsRouter,
        QueueKvRouter,
        PredictedLatencyRouter,
        AccelGenRouter,
    )
}


def router_names() -> list[str]:
    return list(ROUTERS)


def make_router(name: str, **opts: Any) -> Router:
    """A new router of the policy called ``name``, with keyword options.

    Every policy takes ``seed``; ``tiers`` (a TierSet) is given only to those that read
    it (``predicted-latency``, ``accelgen``), so callers may pass it to all.

    Raises:
        ValueError: ``name`` is not a registered policy (the message lists them).
    """
    cls = ROUTERS.get(name)
    if cls is None:
        raise ValueError(f"unknown routing policy {name!r} (known: {', '.join(ROUTERS)})")
    if "tiers" in opts and not getattr(cls, "uses_tiers", False):
        opts = {k: v for k, v in opts.items() if k != "tiers"}
    router: Router = cls(**opts)
    return router


__all__ = [
    "ROUTERS",
    "Decision",
    "PodState",
    "RouteRequest",
    "Router",
    "RouterQueue",
    "make_router",
    "no_ready_pod",
    "router_names",
]
