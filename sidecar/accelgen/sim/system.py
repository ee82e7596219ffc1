"""The full system in simulated time: the sidecar's admission in front of the simulated engine.

The sidecar's decisions are :class:`accelgen.core.admission.AdmissionQueue`, the very
class :class:`accelgen.server.admission.Admission` runs on asyncio; here it runs on
the simulator's clock, in the events a sidecar sees::

    arrival ──make_ticket, admit──► refused (429: a miss, counted as rejected)
                 │ queued
                 ▼
    pump (after an arrival, a poll, a tick, a finish) ──► released: enters the engine
                 │ lost while queued / pushed out: shed (503: a miss, counted as shed)

    poll   every poll_interval_s: the engine's running/waiting/KV/preemptions snapshot
    tick   every tick_s while anything is queued (the sidecar's shedding tick)
    finish the engine finished or dropped a released request: admission's leave()

As in the product, the engine sees a request arrive when admission releases it; its
SLO is judged from when the client sent it.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

from accelgen.core.admission import AdmissionConfig, AdmissionQueue, Speed, Ticket
from accelgen.core.latency import LatencyModel
from accelgen.core.plan import EngineLimits
from accelgen.core.policy import Policy
from accelgen.core.request import Request
from accelgen.core.tiers import SLOTier, TierSet
from accelgen.sim.engine import SimStats, engine_request, run_engine
from accelgen.sim.metrics import Recorder
from accelgen.sim.step import EngineCore
from accelgen.sim.workload import SimRequest

#: The sidecar's engine poll and shedding tick (SidecarConfig.poll_interval_s, app._tick).
POLL_INTERVAL_S = 0.25
TICK_S = 0.02


def admission_config(limits: EngineLimits, num_tiers: int) -> AdmissionConfig:
    """The sidecar's defaults (``serve``'s), releasing up to twice what the engine batches.

    NOTE: twice, so that an engine that orders by slack always holds a queue of its own
    to choose from and to preempt for (with just what it batches, it has none).
    """
    return AdmissionConfig(
        max_queue_per_tier=256,
        max_queue_total=256 * max(1, num_tiers),
        max_in_flight=2 * limits.max_num_seqs,
    )


@dataclass(eq=False, slots=True)
class SimTicket(Ticket):
    """A ticket that knows its simulated request."""

    request: SimRequest = field(repr=False, kw_only=True)


@dataclass(slots=True)
class EngineSnapshot:
    """What the sidecar's poll last saw of the simulated engine (an EngineView)."""

    kv_usage: float = 0.0
    preempting: bool = False
    waiting: int = 0
    waiting_before: int = 0
    updated_s: float = -1e9
    preemptions: int = 0

    def poll(self, policy: Policy, now: float) -> None:
        """Take a snapshot of ``policy``'s engine at ``now``."""
        total = policy.limits.num_kv_blocks
        self.waiting_before, self.waiting = self.waiting, policy.num_waiting
        self.kv_usage = 1.0 - policy.free_blocks / total if total else 0.0
        self.preempting = policy.num_preemptions > self.preemptions
        self.preemptions = policy.num_preemptions
        self.updated_s = now


class SimAdmission(AdmissionQueue[SimTicket]):
    """The sidecar's admission on simulated time: a release adds the request to the engine."""

    def __init__(
        self,
        config: AdmissionConfig,
        speed: Speed,
        engine: EngineSnapshot,
        *,
        on_shed: Callable[[SimTicket], None],
        on_release: Callable[[SimTicket], None],
        clock: Callable[[], float],
        unstarted: Callable[[], Iterable[SimTicket]] = lambda: (),
    ) -> None:
        super().__init__(config, speed, engine, on_shed=on_shed, clock=clock, unstarted=unstarted)
        self.on_release = on_release
        self.request: SimRequest | None = None  # the one make_ticket is for

    def queued_tickets(self) -> list[SimTicket]:
        """The tickets waiting in the queues now (for a pool's router to read)."""
        return [t for _, _, t in self._heap if t.waiting]

    def _new_ticket(self, **fields: Any) -> SimTicket:
        assert self.request is not None
        return SimTicket(**fields, request=self.request)

    def _settle(self, ticket: SimTicket, outcome: str, why: str) -> None:
        super()._settle(ticket, outcome, why)
        if outcome == "released":
            self.on_release(ticket)


class SystemFront:
    """The arrivals through admission into the engine (a :class:`~accelgen.sim.engine.Front`)."""

    def __init__(
        self,
        requests: Sequence[SimRequest],
        *,
        tiers: TierSet,
        recorder: Recorder,
        speed: Speed,
        config: AdmissionConfig,
        max_tokens: int,
        clairvoyant: bool,
    ) -> None:
        self.requests, self.tiers, self.recorder = requests, tiers, recorder
        self.max_tokens, self.clairvoyant = max_tokens, clairvoyant
        self.now_s = requests[0].arrival_s if requests else 0.0
        self.snapshot = EngineSnapshot()
        self.admission = SimAdmission(
            config,
            speed,
            self.snapshot,
            on_shed=lambda t: recorder.refused(t.request.request_id, "shed"),
            on_release=self._release,
            clock=lambda: self.now_s,
            unstarted=self._unstarted,
        )
        self._tickets: dict[str, SimTicket] = {}
        # Per-request targets (a pool's router passes on what its queue left of them).
        self.tier_overrides: dict[str, SLOTier] = {}
        self._core: EngineCore | None = None
        self._next = 0  # the next arrival's index
        self._next_poll_s = self.now_s
        self._next_tick_s = math.inf

    @property
    def done(self) -> bool:
        return self._next >= len(self.requests) and self.admission.queued() == 0

    @property
    def next_s(self) -> float:
        arrival = self.requests[self._next].arrival_s if self._next < len(self.requests) else math.inf
        if self.admission.queued() == 0:
            return arrival
        return min(arrival, self._next_poll_s, self._next_tick_s)

    def advance(self, core: EngineCore, now: float) -> None:
        self._run_until(core, now, inclusive=False)

    def admit(self, core: EngineCore, now: float) -> None:
        self._run_until(core, now, inclusive=True)

    def left(self, requests: Sequence[Request], now: float) -> None:
        self.now_s = now
        for request in requests:
            self.admission.leave(self._tickets.pop(request.request_id))

    def _unstarted(self) -> Iterable[SimTicket]:
        """Released tickets whose first token has not come (the sidecar's view of its streams)."""
        records = self.recorder.records
        return (t for rid, t in self._tickets.items() if records[rid].first_token_s is None)

    def _release(self, ticket: SimTicket) -> None:
        assert self._core is not None
        s = ticket.request
        request = engine_request(
            s, ticket.tier, arrival_s=self.now_s, max_tokens=self.max_tokens, clairvoyant=self.clairvoyant
        )
        self._tickets[s.request_id] = ticket
        self._core.add(request, output_tokens=s.output_tokens)

    def _run_until(self, core: EngineCore, until: float, *, inclusive: bool) -> None:
        """Handle, in time order, every arrival, poll and tick before (or at) ``until``."""
        self._core = core
        while True:
            arrival = self.requests[self._next].arrival_s if self._next < len(self.requests) else math.inf
            if self.admission.in_flight == 0 and self.admission.queued() == 0 and self._next_poll_s < arrival:
                self._skip_idle_polls(core, min(arrival, until))
            when = min(arrival, self._next_poll_s, self._next_tick_s)
            if when > until or (when == until and not inclusive):
                return
            self.now_s = when
            if when == arrival:
                self._arrive(self.requests[self._next])
                self._next += 1
            elif when == self._next_poll_s:
                self.snapshot.poll(core.policy, when)
                self._next_poll_s += POLL_INTERVAL_S
                self.admission.pump()
            else:
                self.admission.pump()
                self._next_tick_s = when + TICK_S if self.admission.queued() else math.inf

    def _skip_idle_polls(self, core: EngineCore, until: float) -> None:
        """Polls of an empty engine see nothing new: jump to the last one before ``until``."""
        skipped = math.floor((until - self._next_poll_s) / POLL_INTERVAL_S)
        if skipped >= 2:
            self._next_poll_s += (skipped - 1) * POLL_INTERVAL_S
            self.snapshot.poll(core.policy, self._next_poll_s)  # an empty engine, twice
            self.snapshot.poll(core.policy, self._next_poll_s)
            self._next_poll_s += POLL_INTERVAL_S

    def _arrive(self, s: SimRequest) -> None:
        adm = self.admission
        adm.request = s
        tier = self.tier_overrides.pop(s.request_id, None) or self.tiers.get(s.tier)
        ticket = adm.make_ticket(tier, s.prompt_tokens, max(self.max_tokens, s.output_tokens))
        if adm.admit(ticket) is not None:
            self.recorder.refused(s.request_id, "rejected")
            return
        adm.pump()
        if adm.queued() and math.isinf(self._next_tick_s):
            self._next_tick_s = self.now_s + TICK_S


def simulate_system(
    policy: Policy,
    requests: Sequence[SimRequest],
    *,
    tiers: TierSet,
    model: LatencyModel,
    max_tokens: int,
    admission: AdmissionConfig,
    speed: Speed | None = None,
    clairvoyant: bool = False,
    latency_noise: float = 0.0,
    seed: int = 0,
    drain_s: float = 600.0,
    progress: Callable[[float], None] | None = None,
) -> tuple[Recorder, SimStats]:
    """:func:`accelgen.sim.engine.simulate` with the sidecar's admission in front.

    Args:
        admission: The sidecar's settings.
        speed: Admission's speed estimate (default: from ``model``, the engine's truth).
        Others: as :func:`~accelgen.sim.engine.simulate`.
    """
    core = EngineCore(policy, model, latency_noise=latency_noise, seed=seed)
    recorder = Recorder(requests, tiers, admission=True)
    front = SystemFront(
        requests,
        tiers=tiers,
        recorder=recorder,
        speed=speed or Speed(model),
        config=admission,
        max_tokens=max_tokens,
        clairvoyant=clairvoyant,
    )
    return recorder, run_engine(core, front, recorder, requests=requests, drain_s=drain_s, progress=progress)
