"""Per-tier queues, admission and release to the engine (the request-level half of AccelGen).

A request waits in the sidecar until the engine has room, so it never just queues
inside vLLM where the sidecar could no longer reorder or shed it::

    arrive ──feasible?──► tier queue ──(engine has room, least slack first)──► engine
              │ no: 429 now      │ TTFT already lost / pushed out by a tighter tier: 503 (shed)

Order key: the latest time the request may start, ``deadline − predicted prefill``
(for offline tiers ``deadline − predicted service``): least slack first. When the
queues are full, the queued request with the most slack (a looser tier) is shed to make
room for a tighter one, so looser tiers shed first.
"""

from __future__ import annotations

import asyncio
import heapq
import itertools
import time
from collections.abc import Callable

from accelgen.core.tiers import SLOTier
from accelgen.server.engine_state import EngineState
from accelgen.server.errors import ApiError
from accelgen.server.rate import CompletionRate
from accelgen.server.speed import Speed
from accelgen.server.tickets import AdmissionConfig, Ticket, looseness


class Admission:
    """Admits, queues, sheds and releases requests.

    A handler calls :meth:`make_ticket`, :meth:`admit` (may raise 429), awaits
    :meth:`wait` (may raise 503 if shed), and calls :meth:`leave` when done.
    """

    def __init__(
        self,
        config: AdmissionConfig,
        speed: Speed,
        engine: EngineState,
        *,
        on_shed: Callable[[Ticket], None],
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.config = config
        self.speed = speed
        self.engine = engine
        self.on_shed = on_shed
        self.clock = clock
        self.in_flight = 0
        self.depth: dict[str, int] = {}
        self._heap: list[tuple[float, int, Ticket]] = []
        self._seq = itertools.count()
        self._last_release_s = -1e9
        self.rate = CompletionRate(speed, slots=config.max_in_flight)
        # Set when a request is queued; the shedding tick sleeps while nothing is.
        self.nonempty = asyncio.Event()

    def queued(self) -> int:
        return sum(self.depth.values())

    def _ahead(self, key_s: float) -> list[Ticket]:
        return [t for k, _, t in self._heap if t.waiting and k <= key_s]

    def _predicted_wait_s(self, num_ahead: int, now_s: float) -> float:
        free = self.config.max_in_flight - self.in_flight
        return max(0, num_ahead + 1 - free) / self.rate.per_s(now_s)

    def make_ticket(self, tier: SLOTier, num_prompt_tokens: int, max_tokens: int) -> Ticket:
        now_s = self.clock()
        running = max(1, self.in_flight)
        self.rate.asked(num_prompt_tokens, max_tokens)
        if tier.is_offline:
            deadline_s = now_s + (tier.deadline_s or 0.0)
            need_s = self.speed.service_s(num_prompt_tokens, max_tokens, num_running=running)
        else:
            deadline_s = now_s + (tier.ttft_slo_s or 0.0)
            need_s = self.speed.prefill_s(num_prompt_tokens, num_running=running)
        return Ticket(
            tier=tier,
            arrival_s=now_s,
            num_prompt_tokens=num_prompt_tokens,
            max_tokens=max_tokens,
            deadline_s=deadline_s,
            key_s=deadline_s - need_s,
            seq=next(self._seq),
            released=asyncio.get_running_loop().create_future(),
        )

    def admit(self, ticket: Ticket) -> None:
        """Queue ``ticket``, or raise the ApiError (429) that rejects it at once.

        If its target is infeasible only because of looser-tier requests queued ahead
        of it, enough of those are shed (loosest first) to make it feasible. A request
        that would miss its target even on an idle engine (a prompt too long for its
        tier) is served best-effort when the engine is idle, and refused otherwise.
        """
        now_s = ticket.arrival_s
        ahead = self._ahead(ticket.key_s)
        wait_s = self._predicted_wait_s(len(ahead), now_s)
        usable_s = (ticket.key_s - now_s) * self.config.slack_use
        idle = not ahead and self.in_flight < self.config.max_in_flight
        if ticket.key_s < now_s and not idle:
            raise ApiError(
                429,
                f"tier {ticket.tier.name!r}: this request cannot meet its target even on "
                "an idle engine, and the engine is busy; retry later",
                code="slo_infeasible",
                retry_after_s=max(1.0, wait_s),
            )
        if ticket.key_s >= now_s and wait_s > usable_s:
            free = self.config.max_in_flight - self.in_flight
            allowed = int(usable_s * self.rate.per_s(now_s)) + free - 1
            looser = sorted(
                (t for t in ahead if looseness(t.tier) > looseness(ticket.tier)),
                key=lambda t: (looseness(t.tier), t.key_s),
                reverse=True,
            )
            excess = len(ahead) - max(0, allowed)
            if allowed < 0 or excess > len(looser):
                raise ApiError(
                    429,
                    f"tier {ticket.tier.name!r}: its target cannot be met now "
                    f"(predicted wait {wait_s:.3f}s); retry later",
                    code="slo_infeasible",
                    retry_after_s=wait_s,
                )
            for victim in looser[:excess]:
                self._shed(victim, "a tighter tier needed its place")
        name = ticket.tier.name
        full_tier = self.depth.get(name, 0) >= self.config.max_queue_per_tier
        if full_tier or self.queued() >= self.config.max_queue_total:
            loosest = self._loosest(name if full_tier else None)
            if loosest is None or loosest.key_s <= ticket.key_s:
                raise ApiError(
                    429,
                    f"tier {name!r}: queue full; retry later",
                    code="queue_full",
                    retry_after_s=max(1.0, wait_s),
                )
            self._shed(loosest, "pushed out by a tighter request")
        self.depth[name] = self.depth.get(name, 0) + 1
        heapq.heappush(self._heap, (ticket.key_s, ticket.seq, ticket))
        self.nonempty.set()

    def _loosest(self, tier: str | None) -> Ticket | None:
        live = [t for _, _, t in self._heap if t.waiting and (tier is None or t.tier.name == tier)]
        return max(live, key=lambda t: (t.key_s, t.seq), default=None)

    def _dequeue(self, ticket: Ticket) -> None:
        if ticket.queued:
            ticket.queued = False
            self.depth[ticket.tier.name] -= 1

    def _shed(self, ticket: Ticket, why: str) -> None:
        self._dequeue(ticket)
        self.on_shed(ticket)
        if not ticket.released.done():
            ticket.released.set_exception(
                ApiError(
                    503,
                    f"tier {ticket.tier.name!r}: request shed ({why}); retry later",
                    code="shed",
                    retry_after_s=1.0,
                )
            )

    async def wait(self, ticket: Ticket) -> None:
        """Wait until released to the engine; ApiError(503) if shed meanwhile.

        The caller must call :meth:`leave` once it is done with the engine (released
        tickets only). A cancelled waiter leaves the queue.
        """
        self.pump()
        try:
            await ticket.released
        except asyncio.CancelledError:
            self._dequeue(ticket)
            if ticket.released.done() and not ticket.released.cancelled() and ticket.released.exception() is None:
                self.leave(ticket)  # released at the very moment it was cancelled
            raise

    def leave(self, ticket: Ticket) -> None:
        """A released request has finished with the engine (any outcome)."""
        self.in_flight -= 1
        self.rate.finished(self.clock())
        self.pump()

    def _has_room(self, now_s: float) -> bool:
        cfg, eng = self.config, self.engine
        if self.in_flight >= cfg.max_in_flight:
            return False
        if (eng.kv_usage >= cfg.kv_high_watermark or eng.preempting) and self.in_flight > 0:
            return False  # KV is short: more requests would only be preempted or wait
        settled = eng.updated_s - self._last_release_s >= cfg.settle_s
        # NOTE: requests wait in vLLM for a step boundary anyway; only a queue seen in two
        # polls in a row means the engine is saturated.
        queued = min(eng.waiting, eng.waiting_before) >= cfg.waiting_limit
        return not (settled and queued and self.in_flight > 0)

    def pump(self) -> None:
        """Shed what is already lost, then release least-slack-first while there is room."""
        now_s = self.clock()
        while self._heap:
            _, _, head = self._heap[0]
            if not head.waiting:  # left, shed, or its client gave up (see Ticket.waiting)
                heapq.heappop(self._heap)
                self._dequeue(head)
                continue
            # Only what queueing cost its target is shed, not what was lost on arrival.
            lost = now_s > (head.deadline_s if head.tier.is_offline else head.key_s)
            if self.config.shed_late and lost and head.key_s >= head.arrival_s:
                heapq.heappop(self._heap)
                self._shed(head, "its deadline passed while queued")
                continue
            if not self._has_room(now_s):
                break
            heapq.heappop(self._heap)
            self._dequeue(head)
            self.in_flight += 1
            self._last_release_s = now_s
            head.released.set_result(None)
