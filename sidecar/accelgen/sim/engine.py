"""The discrete-event run of the simulated engine: one replica, iteration by iteration.

Simulated time jumps from one iteration's end to the next (and over idle gaps to the
next arrival); each iteration is one :class:`~accelgen.sim.step.EngineCore` step: the
policy plans (allocating KV), the latency model times the batch (optionally with seeded
noise, so the planner's model is not exact), every sequence whose chunk completes emits
a token, and requests that reach their true output length finish and free their KV.
Preempted requests recompute later, as the policy decided. Deterministic for a seed.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Protocol

from accelgen.core.latency import LatencyModel
from accelgen.core.policy import Policy
from accelgen.core.request import Request
from accelgen.core.tiers import SLOTier, TierSet
from accelgen.sim.metrics import Recorder
from accelgen.sim.step import EngineCore, Step
from accelgen.sim.workload import SimRequest


@dataclass(slots=True)
class SimStats:
    """Engine-side counters of one run."""

    iterations: int = 0
    busy_s: float = 0.0
    plan_time_s: float = 0.0
    plan_times_s: list[float] = field(default_factory=list)
    budgets_tokens: list[int] = field(default_factory=list)
    end_s: float = 0.0

    def planned(self, step: Step) -> None:
        self.plan_time_s += step.planner_s
        self.plan_times_s.append(step.planner_s)

    def ran(self, step: Step) -> None:
        self.iterations += 1
        self.busy_s += step.duration_s
        self.budgets_tokens.append(step.plan.budget_tokens)


class Front(Protocol):
    """What stands in front of the engine and hands it requests as time passes.

    :func:`simulate`'s is the bare arrivals; :mod:`accelgen.sim.system` puts the
    sidecar's admission there.
    """

    @property
    def done(self) -> bool:
        """Nothing will ever enter the engine again."""

    @property
    def next_s(self) -> float:
        """When the front next has something to do (while not done)."""

    def advance(self, core: EngineCore, now: float) -> None:
        """Do what happens before ``now``, while the engine's step runs."""

    def admit(self, core: EngineCore, now: float) -> None:
        """Do what happens by ``now``, the engine between steps; add what enters it."""

    def left(self, requests: Sequence[Request], now: float) -> None:
        """``requests`` left the engine at ``now`` (finished, or dropped by its policy)."""


def engine_request(s: SimRequest, tier: SLOTier, *, arrival_s: float, max_tokens: int, clairvoyant: bool) -> Request:
    """The engine's request for ``s``, arrived at ``arrival_s`` (the oracle knows its output)."""
    return Request(
        request_id=s.request_id,
        arrival_s=arrival_s,
        num_prompt_tokens=s.prompt_tokens,
        max_tokens=max(max_tokens, s.output_tokens),
        tier=tier,
        expected_output_tokens=s.output_tokens if clairvoyant else None,
    )


@dataclass(slots=True)
class _Arrivals:
    """The workload's requests in arrival order, handed to the engine as time passes."""

    requests: Sequence[SimRequest]
    tiers: TierSet
    max_tokens: int
    clairvoyant: bool
    next_index: int = 0

    @property
    def done(self) -> bool:
        return self.next_index >= len(self.requests)

    @property
    def next_s(self) -> float:
        return self.requests[self.next_index].arrival_s

    def advance(self, core: EngineCore, now: float) -> None:
        pass  # requests enter the engine between steps only

    def admit(self, core: EngineCore, now: float) -> None:
        """Add every request that has arrived by ``now``."""
        while not self.done and self.next_s <= now:
            s = self.requests[self.next_index]
            tier = self.tiers.get(s.tier)
            request = engine_request(
                s, tier, arrival_s=s.arrival_s, max_tokens=self.max_tokens, clairvoyant=self.clairvoyant
            )
            core.add(request, output_tokens=s.output_tokens)
            self.next_index += 1

    def left(self, requests: Sequence[Request], now: float) -> None:
        pass


def _planned(recorder: Recorder, stats: SimStats, front: Front, step: Step, now: float) -> None:
    """Note a plan (run or empty): the planner's time, the requests it dropped."""
    stats.planned(step)
    for request in step.plan.dropped:
        recorder.dropped(request.request_id)
    if step.plan.dropped:
        front.left(step.plan.dropped, now)


def _record(recorder: Recorder, core: EngineCore, front: Front, step: Step, now: float) -> None:
    """Complete ``step`` at ``now`` and note what it did."""
    result = core.complete(step, now=now)
    for request in result.emitted:
        recorder.token(request.request_id, now)
    for request in result.finished:
        recorder.finished(request.request_id, now)
    for request in step.plan.preempted:
        recorder.preempted(request.request_id)
    if result.finished:
        front.left(result.finished, now)


def simulate(
    policy: Policy,
    requests: Sequence[SimRequest],
    *,
    tiers: TierSet,
    model: LatencyModel,
    max_tokens: int,
    clairvoyant: bool = False,
    latency_noise: float = 0.0,
    seed: int = 0,
    drain_s: float = 600.0,
    progress: Callable[[float], None] | None = None,
) -> tuple[Recorder, SimStats]:
    """Run ``requests`` (sorted by arrival) through ``policy`` on the simulated engine.

    Args:
        policy: A fresh policy.
        requests: The workload.
        tiers: Tier names in ``requests`` resolve here.
        model: The engine's *true* timing (the policy may hold another model).
        max_tokens: The ``max_tokens`` every request asks for (≥ its true output).
        clairvoyant: Tell the policy true output lengths (the oracle).
        latency_noise: σ of log-normal noise on each iteration's duration.
        seed: Seeds the noise.
        drain_s: Stop this long after the last arrival; unfinished requests count as
            not completed.
        progress: Called with simulated time now and then.
    """
    core = EngineCore(policy, model, latency_noise=latency_noise, seed=seed)
    arrivals = _Arrivals(requests, tiers, max_tokens, clairvoyant)
    recorder = Recorder(requests, tiers)
    return recorder, run_engine(core, arrivals, recorder, requests=requests, drain_s=drain_s, progress=progress)


def run_engine(
    core: EngineCore,
    front: Front,
    recorder: Recorder,
    *,
    requests: Sequence[SimRequest],
    drain_s: float,
    progress: Callable[[float], None] | None = None,
) -> SimStats:
    """The discrete-event loop: ``front`` feeds ``core`` as simulated time passes.

    Args:
        core: The engine (a fresh policy inside).
        front: Hands it requests.
        recorder: Notes tokens, finishes, drops and preemptions.
        requests: The workload (its first and last arrival bound the run).
        drain_s: Stop this long after the last arrival.
        progress: Called with simulated time now and then.
    """
    policy, stats = core.policy, SimStats()
    now = next_progress = requests[0].arrival_s if requests else 0.0
    stop_at = (requests[-1].arrival_s if requests else 0.0) + drain_s
    while True:
        front.admit(core, now)
        if policy.num_unfinished == 0:
            if front.done:
                break
            now = front.next_s
            continue
        if now > stop_at:
            break
        step = core.plan(now)
        _planned(recorder, stats, front, step, now)
        if step.plan.is_empty:
            if front.done:
                break  # nothing can ever run (cannot happen with a correct policy)
            now = max(now, front.next_s)  # nothing runnable until more work arrives
            continue
        now += step.duration_s
        stats.ran(step)
        front.advance(core, now)
        _record(recorder, core, front, step, now)
        if progress is not None and now >= next_progress:
            progress(now)
            next_progress = now + 5.0
    stats.end_s = now
    if progress is not None:
        progress(math.inf)
    return stats
