"""One iteration of the simulated engine, shared by the discrete-event and the real-time runs.

Every step::

    plan      policy.plan(now)       a core policy decides the batch and allocates its KV
    time      model.predict_s(shape) the engine's true duration (x seeded log-normal noise)
    emit      policy.update(plan)    every sequence whose chunk completes emits a token
    finish    policy.finish(...)     a request that reached its output length frees its KV

The caller owns the clock: :func:`accelgen.sim.engine.simulate` advances simulated time
by the step's duration, :class:`accelgen.sim.realtime.RealtimeEngine` sleeps it (scaled).
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np

from accelgen.core.latency import LatencyModel
from accelgen.core.plan import IterationPlan
from accelgen.core.policy import Policy
from accelgen.core.request import Request


@dataclass(frozen=True, slots=True)
class Step:
    """A planned iteration: the plan, its true duration and the planner's own time."""

    plan: IterationPlan
    duration_s: float  # 0 for an empty plan
    planner_s: float  # wall time of policy.plan(), on this machine


@dataclass(frozen=True, slots=True)
class StepResult:
    """What an iteration produced, in the policy's order."""

    emitted: list[Request]  # produced one output token each
    finished: list[Request]  # reached their output length (KV freed)


class _Noise:
    """Seeded multiplicative noise, drawn in blocks (one draw per non-empty step)."""

    def __init__(self, sigma: float, seed: int) -> None:
        self.sigma = sigma
        self._rng = np.random.default_rng(seed)
        self._factors: Iterator[float] = iter(())

    def factor(self) -> float:
        try:
            return next(self._factors)
        except StopIteration:
            self._factors = iter(self._rng.lognormal(0.0, self.sigma, 4096).tolist())
            return next(self._factors)


class EngineCore:
    """A core policy on a simulated engine whose steps last as ``model`` says.

    Args:
        policy: A fresh policy (it owns the queue and the KV accounting).
        model: The engine's true timing (the policy may plan with another model).
        latency_noise: σ of log-normal noise on each step's duration; 0: exact.
        seed: Seeds the noise.
    """

    def __init__(self, policy: Policy, model: LatencyModel, *, latency_noise: float = 0.0, seed: int = 0) -> None:
        self.policy = policy
        self.model = model
        self._noise = _Noise(latency_noise, seed) if latency_noise > 0 else None
        self._output_tokens: dict[str, int] = {}

    def add(self, request: Request, *, output_tokens: int | None = None) -> None:
        """Queue ``request``; it finishes after ``output_tokens`` (default its max_tokens)."""
        self._output_tokens[request.request_id] = request.max_tokens if output_tokens is None else output_tokens
        self.policy.add_request(request)

    def abort(self, request_id: str) -> None:
        """Forget a request wherever it is (its KV freed); unknown ids are ignored."""
        self._output_tokens.pop(request_id, None)
        self.policy.abort(request_id)

    def plan(self, now: float) -> Step:
        """Plan the next iteration at ``now`` and time it (an empty plan takes no time)."""
        started_s = time.perf_counter()
        plan = self.policy.plan(now)
        planner_s = time.perf_counter() - started_s
        if plan.is_empty:
            return Step(plan, 0.0, planner_s)
        duration_s = self.model.predict_s(plan.shape)
        if self._noise is not None:
            duration_s *= self._noise.factor()
        return Step(plan, duration_s, planner_s)

    def complete(self, step: Step, *, now: float) -> StepResult:
        """Apply a finished iteration at ``now``: emit tokens, finish requests that are done."""
        emitted = self.policy.update(step.plan, now=now)
        finished = []
        for request in emitted:
            if request.num_output_tokens >= self._output_tokens[request.request_id]:
                self.policy.finish(request, now=now)
                del self._output_tokens[request.request_id]
                finished.append(request)
        return StepResult(emitted, finished)
