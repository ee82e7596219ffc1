"""One request's placement: ask the router, hold it while the router queues it, answer.

The picker (over gRPC) and the local front (over HTTP) both place requests through a
:class:`Placer`, so they answer alike::

    Router.pick ─► pod      ─► routed to that pod (its address), counted there until the
                 │              next refresh reads the pod again
                 ├► shed     ─► 429, Retry-After
                 ├► queue    ─► held at the router; at every refresh of the pods the held
                 │              requests are offered again, least slack first
                 │              (:class:`~accelgen.core.routing.RouterQueue`); past its
                 │              first-token deadline (or ``max_queue_s``) a held one is shed
                 └► no pod   ─► 503

Decision times (the router's ``pick`` alone) are kept for the benchmark and ``/metrics``.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import time
from collections import Counter, deque
from collections.abc import Callable, Collection
from dataclasses import dataclass

from accelgen.core.routing import PodState, Router, RouteRequest, RouterQueue
from accelgen.gateway.pods import PodWatcher

ROUTED, SHED, NO_POD = 200, 429, 503


@dataclass(frozen=True, slots=True)
class Placement:
    """The answer for one request: ``pod`` to send it to (status 200), or a refusal."""

    status: int
    reason: str
    pod: PodState | None = None
    retry_after_s: float | None = None

    @property
    def address(self) -> str | None:
        return self.pod.address if self.pod is not None else None


@dataclass(frozen=True, slots=True)
class _Held:
    request: RouteRequest
    subset: Collection[str] | None
    give_up_s: float
    answer: asyncio.Future[Placement]


class Placer:
    """Places requests on ``watcher``'s pods with ``router``.

    Args:
        router: The routing policy.
        watcher: The pods and their state.
        clock: The clock requests' arrival times are on (``time.monotonic``).
        max_queue_s: The longest a request is held at the router, whatever its deadline.
    """

    def __init__(
        self,
        router: Router,
        watcher: PodWatcher,
        *,
        clock: Callable[[], float] = time.monotonic,
        max_queue_s: float = 30.0,
    ) -> None:
        self.router = router
        self.watcher = watcher
        self.clock = clock
        self.max_queue_s = max_queue_s
        self.decision_s: deque[float] = deque(maxlen=4096)  # the latest pick() durations
        self.outcomes: Counter[tuple[str, str]] = Counter()  # (outcome, pod or "") -> requests
        self._held: RouterQueue[_Held] = RouterQueue()
        self._drainer: asyncio.Task[None] | None = None

    @property
    def num_held(self) -> int:
        return len(self._held)

    def try_place(self, request: RouteRequest, subset: Collection[str] | None = None) -> Placement | None:
        """Ask the router once: the placement, or None when it queues the request."""
        pods = self.watcher.pods
        if subset is not None:
            pods = tuple(p for p in pods if p.address in subset)
        start = time.perf_counter()
        decision = self.router.pick(request, pods, self.clock())
        self.decision_s.append(time.perf_counter() - start)
        if decision.pod is not None:
            pod = next((p for p in pods if p.name == decision.pod), None)
            if pod is None or not pod.ready:
                return self._count(Placement(NO_POD, f"router chose {decision.pod!r}, not a ready pod"))
            self.watcher.placed(pod.name, request)
            return self._count(Placement(ROUTED, decision.reason, pod=pod))
        if decision.shed:
            return self._count(Placement(SHED, decision.reason or "no pod can serve it in time", retry_after_s=1.0))
        if not decision.queue:
            return self._count(Placement(NO_POD, decision.reason or "no ready pod"))
        return None

    async def place(self, request: RouteRequest, *, subset: Collection[str] | None = None) -> Placement:
        """Where ``request`` goes. ``subset``: the only addresses it may go to (the gateway's hint)."""
        placement = self.try_place(request, subset)
        if placement is not None:
            return placement
        deadline = request.first_token_deadline_s
        give_up = min(deadline if deadline is not None else math.inf, request.arrival_s + self.max_queue_s)
        answer: asyncio.Future[Placement] = asyncio.get_running_loop().create_future()
        self._held.push(deadline, _Held(request, subset, give_up, answer))
        if self._drainer is None or self._drainer.done():
            self._drainer = asyncio.create_task(self._drain())
        return await answer  # cancelled with the client's stream: the drain skips it

    async def _drain(self) -> None:
        """Offer the held requests again at every refresh, least slack first, until none is held."""
        while len(self._held):
            # NOTE: a held request is shed within one refresh of its deadline passing.
            await self.watcher.wait_changed(max(0.01, 2 * self.watcher.refresh_s))
            for held in self._held.ordered():
                if held.answer.done():
                    continue
                if self.clock() >= held.give_up_s:
                    reason = "held at the router past its first-token deadline"
                    held.answer.set_result(self._count(Placement(SHED, reason, retry_after_s=1.0)))
                    continue
                placement = self.try_place(held.request, held.subset)
                if placement is None:
                    self._held.push(held.request.first_token_deadline_s, held)
                else:
                    held.answer.set_result(placement)

    async def close(self) -> None:
        if self._drainer is not None:
            self._drainer.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._drainer

    def _count(self, placement: Placement) -> Placement:
        outcome = {ROUTED: "routed", SHED: "shed"}.get(placement.status, "no_pod")
        self.outcomes[(outcome, placement.pod.name if placement.pod else "")] += 1
        return placement
