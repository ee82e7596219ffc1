"""Routing policies for a pool of replicas, chosen by name from one registry.

Every policy implements :class:`accelgen.core.routing.types.Router`; the cluster
simulator and the gateway's endpoint picker run the very same classes.
"""

from __future__ import annotations

from typing import Any

from accelgen.core.routing.least_requests import LeastRequestsRouter
from accelgen.core.routing.random_choice import RandomRouter
from accelgen.core.routing.round_robin import RoundRobinRouter
from accelgen.core.routing.types import Decision, PodState, Router, RouteRequest, no_ready_pod

ROUTERS: dict[str, type[Any]] = {
    cls.name: cls
    for cls in (
        RandomRouter,
        RoundRobinRouter,
        LeastRequestsRouter,
    )
}


def router_names() -> list[str]:
    return list(ROUTERS)


def make_router(name: str, **opts: Any) -> Router:
    """A new router of the policy called ``name``, with keyword options (``seed``, ...).

    Raises:
        ValueError: ``name`` is not a registered policy (the message lists them).
    """
    cls = ROUTERS.get(name)
    if cls is None:
        raise ValueError(f"unknown routing policy {name!r} (known: {', '.join(ROUTERS)})")
    router: Router = cls(**opts)
    return router


__all__ = ["ROUTERS", "Decision", "PodState", "RouteRequest", "Router", "make_router", "no_ready_pod", "router_names"]
