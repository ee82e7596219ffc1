"""Per-tier queues, admission and release to the engine (the request-level half of AccelGen).

A request waits in admission until the engine has room, so it never just queues inside
the engine where admission could no longer reorder or shed it::

    arrive ──feasible?──► tier queue ──(engine has room, least slack first)──► engine
              │ no: refused now   │ TTFT already lost / pushed out by a tighter tier: shed

Order key: the latest time the request may start, ``deadline − predicted prefill``
(for offline tiers ``deadline − predicted service``): least slack first. When the
queues are full, the queued request with the most slack (a looser tier) is shed to make
room for a tighter one, so looser tiers shed first.

A request's predicted wait is the longer of two estimates, each of what is ahead of it
(an order key no later than its own: the engine orders by slack too):

- slots: requests queued ahead beyond the free in-flight slots, at the engine's
  completion rate (:class:`~accelgen.core.admission.rate.CompletionRate`);
- prefill: the prompt tokens not yet prefilled ahead of it — queued, and released but
  without a first token (the caller's ``unstarted``) — at the rate the engine prefills
  beside its decodes within the tightest TBT seen
  (:func:`accelgen.core.routing.estimate.prefill_rate_tokens_per_s`, as a pool's router
  predicts a pod's TTFT). Without it, a queue that releases up to twice what the
  engine batches hands an overload to the engine's own waiting queue, where every
  request loses its target instead of the excess being refused at arrival.

Sans I/O: the clock is given, the engine's state is a snapshot someone else keeps
fresh, a refusal is a return value, and what happens to a released or shed ticket is
the subclass's business (:meth:`AdmissionQueue._settle`).
"""

from __future__ import annotations

import heapq
import itertools
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any, Generic, Protocol, TypeVar

from accelgen.core.admission.rate import CompletionRate
from accelgen.core.admission.speed import Speed
from accelgen.core.admission.tickets import AdmissionConfig, Ticket, looseness
from accelgen.core.routing.estimate import prefill_rate_tokens_per_s
from accelgen.core.tiers import SLOTier


class EngineView(Protocol):
    """What admission reads of the engine's latest snapshot (its clock is admission's)."""

    kv_usage: float  # fraction of KV blocks in use
    preempting: bool  # preemptions grew since the previous snapshot: KV is short
    waiting: int  # requests waiting inside the engine, in this snapshot...
    waiting_before: int  # ...and in the one before
    updated_s: float  # when this snapshot was taken


@dataclass(frozen=True, slots=True)
class Refusal:
    """Why a request is refused at arrival (the sidecar answers 429 with Retry-After)."""

    code: str  # slo_infeasible | queue_full
    message: str
    retry_after_s: float


T = TypeVar("T", bound=Ticket)


class AdmissionQueue(Generic[T]):
    """Admits, queues, sheds and releases requests.

    A caller makes a ticket with :meth:`make_ticket`, offers it to :meth:`admit` (a
    :class:`Refusal`, or None: queued), calls :meth:`pump` whenever time passes or the
    engine changes, and :meth:`leave` when a released request is done with the engine.

    Args:
        config: Bounds and watermarks.
        speed: The engine's predicted speed.
        engine: The engine's latest snapshot, kept fresh by the caller.
        on_shed: Called with every ticket shed from the queue.
        clock: Now, in seconds (monotonic or simulated).
        unstarted: The released tickets whose first token has not come back yet (none
            by default: then only the queue counts as prefill ahead).
    """

    def __init__(
        self,
        config: AdmissionConfig,
        speed: Speed,
        engine: EngineView,
        *,
        on_shed: Callable[[T], None],
        clock: Callable[[], float],
        unstarted: Callable[[], Iterable[T]] = lambda: (),
    ) -> None:
        self.config = config
        self.speed = speed
        self.engine = engine
        self.on_shed = on_shed
        self.clock = clock
        self.unstarted = unstarted
        self._tightest_tbt_s: float | None = None  # of the tiers seen (prefill's share of a step)
        self.in_flight = 0
        # Released tickets by tier looseness, for the pressure holds (see _has_room).
        self._loosest_out: dict[tuple[bool, float, int], int] = {}
        self.depth: dict[str, int] = {}
        self._heap: list[tuple[float, int, T]] = []
        self._seq = itertools.count()
        self._last_release_s = -1e9
        self.rate = CompletionRate(speed, slots=config.max_in_flight)

    # ----------------------------------------------------------------- for subclasses

    def _new_ticket(self, **fields: Any) -> T:
        """A ticket of the subclass's type with these fields."""
        raise NotImplementedError

    def _settle(self, ticket: T, outcome: str, why: str) -> None:
        """``ticket`` was released (``outcome`` "released") or shed ("shed", with ``why``)."""
        ticket.outcome = outcome

    # ----------------------------------------------------------------- the contract

    def queued(self) -> int:
        return sum(self.depth.values())

    def make_ticket(self, tier: SLOTier, num_prompt_tokens: int, max_tokens: int) -> T:
        """The ticket of a request arriving now: its deadline and its order key."""
        now_s = self.clock()
        running = max(1, self.in_flight)
        self.rate.asked(num_prompt_tokens, max_tokens)
        if tier.tbt_slo_s is not None and (self._tightest_tbt_s is None or tier.tbt_slo_s < self._tightest_tbt_s):
            self._tightest_tbt_s = tier.tbt_slo_s
        if tier.is_offline:
            deadline_s = now_s + (tier.deadline_s or 0.0)
            need_s = self.speed.service_s(num_prompt_tokens, max_tokens, num_running=running)
        else:
            deadline_s = now_s + (tier.ttft_slo_s or 0.0)
            need_s = self.speed.prefill_s(num_prompt_tokens, num_running=running)
        return self._new_ticket(
            tier=tier,
            arrival_s=now_s,
            num_prompt_tokens=num_prompt_tokens,
            max_tokens=max_tokens,
            deadline_s=deadline_s,
            key_s=deadline_s - need_s,
            seq=next(self._seq),
        )

    def admit(self, ticket: T) -> Refusal | None:
        """Queue ``ticket`` (None), or the Refusal that rejects it at once.

        If its target is infeasible only because of looser-tier requests queued ahead
        of it, enough of those are shed (loosest first) to make it feasible. A request
        that would miss its target even on an idle engine (a prompt too long for its
        tier) is served best-effort when the engine is idle, and refused otherwise.
        """
        ahead = self._ahead(ticket.key_s)
        backlog = _Backlog(self, ticket, ahead)
        wait_s = backlog.wait_s()
        refusal = self._make_feasible(ticket, ahead, backlog)
        if refusal is None:
            refusal = self._make_room(ticket, wait_s)
        if refusal is not None:
            return refusal
        name = ticket.tier.name
        self.depth[name] = self.depth.get(name, 0) + 1
        heapq.heappush(self._heap, (ticket.key_s, ticket.seq, ticket))
        return None

    def leave(self, ticket: T) -> None:
        """A released request has finished with the engine (any outcome)."""
        self.in_flight -= 1
        rank = looseness(ticket.tier)
        if self._loosest_out.get(rank, 0) > 0:
            self._loosest_out[rank] -= 1
        self.rate.finished(self.clock())
        self.pump()

    def follow(self, speed: Speed) -> None:
        """Predict with ``speed`` from now on (the engine refitted its latency model)."""
        self.speed = speed
        self.rate.speed = speed

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
            if not self._has_room(now_s, head):
                break
            heapq.heappop(self._heap)
            self._dequeue(head)
            self.in_flight += 1
            rank = looseness(head.tier)
            self._loosest_out[rank] = self._loosest_out.get(rank, 0) + 1
            self._last_release_s = now_s
            self._settle(head, "released", "")

    # ----------------------------------------------------------------- the decisions

    def _ahead(self, key_s: float) -> list[T]:
        return [t for k, _, t in self._heap if t.waiting and k <= key_s]

    def _make_feasible(self, ticket: T, ahead: list[T], backlog: _Backlog) -> Refusal | None:
        """Refuse a ticket whose target the queue ahead makes infeasible, or shed looser ones."""
        now_s = ticket.arrival_s
        usable_s = (ticket.key_s - now_s) * self.config.slack_use
        idle = not ahead and self.in_flight < self.config.max_in_flight
        wait_s = backlog.wait_s()
        if ticket.key_s < now_s and not idle:
            return Refusal(
                "slo_infeasible",
                f"tier {ticket.tier.name!r}: this request cannot meet its target even on "
                "an idle engine, and the engine is busy; retry later",
                max(1.0, wait_s),
            )
        if ticket.key_s < now_s or wait_s <= usable_s:
            return None
        looser = sorted(
            (t for t in ahead if looseness(t.tier) > looseness(ticket.tier)),
            key=lambda t: (looseness(t.tier), t.key_s),
            reverse=True,
        )
        victims = 0
        while victims < len(looser) and backlog.wait_s() > usable_s:
            backlog.remove(looser[victims])
            victims += 1
        if backlog.wait_s() > usable_s:
            return Refusal(
                "slo_infeasible",
                f"tier {ticket.tier.name!r}: its target cannot be met now (predicted wait {wait_s:.3f}s); retry later",
                wait_s,
            )
        for victim in looser[:victims]:
            self._shed(victim, "a tighter tier needed its place")
        return None

    def _make_room(self, ticket: T, wait_s: float) -> Refusal | None:
        """Refuse a ticket the full queues have no room for, or push out a looser one."""
        name = ticket.tier.name
        full_tier = self.depth.get(name, 0) >= self.config.max_queue_per_tier
        if not full_tier and self.queued() < self.config.max_queue_total:
            return None
        loosest = self._loosest(name if full_tier else None)
        if loosest is None or loosest.key_s <= ticket.key_s:
            return Refusal("queue_full", f"tier {name!r}: queue full; retry later", max(1.0, wait_s))
        self._shed(loosest, "pushed out by a tighter request")
        return None

    def _loosest(self, tier: str | None) -> T | None:
        live = [t for _, _, t in self._heap if t.waiting and (tier is None or t.tier.name == tier)]
        return max(live, key=lambda t: (t.key_s, t.seq), default=None)

    def _dequeue(self, ticket: T) -> None:
        if ticket.queued:
            ticket.queued = False
            self.depth[ticket.tier.name] -= 1

    def _shed(self, ticket: T, why: str) -> None:
        self._dequeue(ticket)
        self.on_shed(ticket)
        self._settle(ticket, "shed", why)

    def _has_room(self, now_s: float, ticket: T) -> bool:
        cfg, eng = self.config, self.engine
        if self.in_flight >= cfg.max_in_flight:
            return False
        rank = looseness(ticket.tier)
        if any(n > 0 and r > rank for r, n in self._loosest_out.items()):
            # NOTE: the engine holds looser work than this ticket: a slack-ordering engine
            # runs the ticket first and defers or preempts that work, so the engine's
            # pressure (its KV, its queue) is no reason to keep the ticket here.
            return True
        if (eng.kv_usage >= cfg.kv_high_watermark or eng.preempting) and self.in_flight > 0:
            return False  # KV is short: more requests would only be preempted or wait
        settled = eng.updated_s - self._last_release_s >= cfg.settle_s
        # NOTE: requests wait in the engine for a step boundary anyway; only a queue seen
        # in two snapshots in a row means the engine is saturated.
        queued = min(eng.waiting, eng.waiting_before) >= cfg.waiting_limit
        return not (settled and queued and self.in_flight > 0)


class _Backlog:
    """What is ahead of one arriving ticket, as the two wait estimates (module docstring);
    :meth:`remove` takes a queued ticket out (one a tighter ticket would shed)."""

    def __init__(self, queue: AdmissionQueue[Any], ticket: Ticket, ahead: list[Any]) -> None:
        now_s = ticket.arrival_s
        unstarted = list(queue.unstarted())
        self.num_ahead = len(ahead)
        self.tokens_ahead = sum(t.num_prompt_tokens for t in ahead) + sum(
            t.num_prompt_tokens for t in unstarted if t.key_s <= ticket.key_s
        )
        self.free = queue.config.max_in_flight - queue.in_flight
        self.completions_per_s = queue.rate.per_s(now_s)
        decoding = max(0, queue.in_flight - len(unstarted))
        speed = queue.speed
        self.prefill_tokens_per_s = prefill_rate_tokens_per_s(
            decode_step_s=speed.decode_step_s(decoding) if decoding else 0.0,
            prefill_s_per_token=speed.prefill_token_s(num_running=decoding),
            tightest_tbt_s=queue._tightest_tbt_s,
        )

    def wait_s(self) -> float:
        slots_s = max(0, self.num_ahead + 1 - self.free) / self.completions_per_s
        rate = self.prefill_tokens_per_s
        return max(slots_s, self.tokens_ahead / rate if rate else 0.0)

    def remove(self, ticket: Ticket) -> None:
        self.num_ahead -= 1
        self.tokens_ahead -= ticket.num_prompt_tokens
