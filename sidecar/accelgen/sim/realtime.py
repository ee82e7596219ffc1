"""The simulated engine in scaled real time: a core policy's steps, slept, streamed to clients.

The same :class:`~accelgen.sim.step.EngineCore` as the discrete-event run, driven by an
asyncio task instead of a simulated clock: each step is planned at ``time.monotonic()``,
lasts the latency model's prediction x ``time_scale`` (an ``asyncio.sleep``), and then
emits its tokens to the generations waiting on them. The policy is any core policy by
name (AccelGen by default) and plans with the same scaled model, the engine's truth.

Like AccelGen's scheduler inside vLLM, it keeps the in-engine stats
(:class:`accelgen.wire.EngineStatsRecorder`, written with a path): the planner's budget
and planner time per step, and the report of a
:class:`~accelgen.core.calibration.Calibrator` fed with the wall time of each step's
sleep, so the sidecar's engine gauges and latency-model panels have data without vLLM.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import cast

from accelgen.core.calibration import TINY_CPU_PRIOR, Calibrator
from accelgen.core.config import PolicyConfig
from accelgen.core.latency import LatencyModel
from accelgen.core.plan import EngineLimits
from accelgen.core.policies import get_spec, make_policy
from accelgen.core.request import Request
from accelgen.core.tiers import SLOTier, TierSet
from accelgen.sim.profiles import ScaledLatencyModel
from accelgen.sim.step import EngineCore, Step
from accelgen.wire import EngineStatsRecorder


@dataclass(frozen=True, slots=True)
class SimEngineConfig:
    """Capacity, speed and policy of the simulated engine (capacity names as vLLM's flags)."""

    max_num_seqs: int = 32
    max_num_batched_tokens: int = 2048
    max_model_len: int = 4096
    num_kv_blocks: int = 4096
    block_size_tokens: int = 16
    time_scale: float = 1.0  # > 1 slows every step down (e.g. for overload tests)
    policy: str = "accelgen"

    @property
    def limits(self) -> EngineLimits:
        return EngineLimits(
            num_kv_blocks=self.num_kv_blocks,
            block_size_tokens=self.block_size_tokens,
            max_num_batched_tokens=self.max_num_batched_tokens,
            max_num_seqs=self.max_num_seqs,
        )


@dataclass(eq=False, slots=True)
class Generation:
    """One client request in the engine: ``n`` sequences of up to ``max_tokens`` each.

    ``events`` carries ``(choice index, its token count so far)`` per emitted token and
    ``None`` once every sequence is done (finished, dropped or aborted).
    """

    num_prompt_tokens: int
    max_tokens: int
    tier: SLOTier
    n: int = 1
    sequences: list[Request] = field(default_factory=list)
    num_done: int = 0
    events: asyncio.Queue[tuple[int, int] | None] = field(default_factory=asyncio.Queue)

    @property
    def done(self) -> bool:
        return self.num_done >= self.n

    @property
    def num_output_tokens(self) -> int:
        return sum(r.num_output_tokens for r in self.sequences)

    def sequence_done(self) -> None:
        self.num_done += 1
        if self.done:
            self.events.put_nowait(None)


class RealtimeEngine:
    """The engine loop (:meth:`run`, a background task); :meth:`submit` generations to it.

    Args:
        model: The engine's latency model (before ``config.time_scale``).
        config: Capacity, speed and policy.
        tiers: The tiers the policy plans for.
        stats_path: Where the in-engine stats file goes; None: kept in memory only.
        policy_config: The policy's tuning; None: its defaults.
    """

    def __init__(
        self,
        model: LatencyModel,
        config: SimEngineConfig,
        *,
        tiers: TierSet,
        stats_path: Path | None = None,
        policy_config: PolicyConfig | None = None,
    ) -> None:
        self.config = config
        self.tiers = tiers
        step_model = model
        if config.time_scale != 1.0:
            step_model = cast(LatencyModel, ScaledLatencyModel(model, config.time_scale))
        self.policy = make_policy(
            config.policy, tiers=tiers, latency_model=step_model, limits=config.limits, config=policy_config
        )
        self.clairvoyant = get_spec(config.policy).clairvoyant  # a generation's length is known here
        self.core = EngineCore(self.policy, step_model)
        self.stats = EngineStatsRecorder(policy=config.policy, path=stats_path)
        self.calibrator = Calibrator(prior=TINY_CPU_PRIOR)
        self.num_prompt_tokens_total = 0
        self.num_generation_tokens_total = 0
        self.num_finished_total = 0
        self._owners: dict[str, tuple[Generation, int]] = {}  # request id -> (generation, choice)
        self._ids = itertools.count()
        self._wake = asyncio.Event()
        self._in_flight: Step | None = None
        self._aborted: list[Generation] = []  # during a step: applied once it completes
        self._written_s, self._written_steps = -1e9, -1  # -1: not even the empty file yet

    @property
    def running(self) -> list[Request]:
        return self.policy.running

    @property
    def waiting(self) -> list[Request]:
        return list(self.policy.waiting())

    @property
    def free_blocks(self) -> int:
        return self.policy.free_blocks

    @property
    def kv_usage(self) -> float:
        return 1.0 - self.policy.free_blocks / self.config.num_kv_blocks

    def submit(self, generation: Generation) -> None:
        """Queue ``generation``'s sequences (one core request each, as vLLM forks ``n``)."""
        now = time.monotonic()
        for choice in range(generation.n):
            request = Request(
                request_id=f"sim-{next(self._ids)}",
                arrival_s=now,
                num_prompt_tokens=generation.num_prompt_tokens,
                max_tokens=generation.max_tokens,
                tier=generation.tier,
                expected_output_tokens=generation.max_tokens if self.clairvoyant else None,
            )
            generation.sequences.append(request)
            self._owners[request.request_id] = (generation, choice)
            self.core.add(request)
            self.stats.requests_by_tier[generation.tier.name] += 1
        self._wake.set()

    def abort(self, generation: Generation) -> None:
        """Stop generating for ``generation`` and free its KV (the client went away)."""
        if self._in_flight is not None:
            self._aborted.append(generation)  # its requests may be in the step now running
            return
        for request in generation.sequences:
            if self._owners.pop(request.request_id, None) is not None:
                self.core.abort(request.request_id)
        self._wake.set()

    async def run(self) -> None:
        """The engine loop; the stats file is written at exit too."""
        try:
            while True:
                if self.policy.num_unfinished == 0 or not await self._step():
                    await self._idle()
        finally:
            if self.stats.path is not None:
                self._write_stats()

    async def _idle(self) -> None:
        """Wait for work; a quiet spell of ``interval_s`` writes steps not in the file yet."""
        self._wake.clear()
        if self.stats.path is not None and self._written_steps != self.stats.num_steps:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), self.stats.interval_s)
            if not self._wake.is_set():
                self._write_stats()
            return
        await self._wake.wait()

    async def _step(self) -> bool:
        """Plan, sleep and complete one step; False when the plan was empty."""
        step = self.core.plan(time.monotonic())
        self._drop(step)
        if step.plan.is_empty:
            self.stats.num_empty_plans += 1
            return False
        self._record(step)
        self._in_flight = step
        started_s = time.perf_counter()
        try:
            await asyncio.sleep(step.duration_s)
        finally:
            self._in_flight = None
        measured_s = time.perf_counter() - started_s
        if self.config.time_scale > 0:  # at scale 0 steps take no time: nothing to calibrate
            self.calibrator.add(step.plan.shape, measured_s)
            self.stats.record_timing(predicted_s=step.duration_s, measured_s=measured_s)
        self._complete(step)
        for generation in self._aborted:
            self.abort(generation)
        self._aborted.clear()
        return True

    def _drop(self, step: Step) -> None:
        for request in step.plan.dropped:
            owner = self._owners.pop(request.request_id, None)
            if owner is not None:
                owner[0].sequence_done()

    def _complete(self, step: Step) -> None:
        for chunk in step.plan.chunks:  # the prompt's share of each chunk (recomputes too)
            prompt_left = chunk.request.num_prompt_tokens - chunk.context_tokens
            self.num_prompt_tokens_total += max(0, min(chunk.num_tokens, prompt_left))
        result = self.core.complete(step, now=time.monotonic())
        for request in result.emitted:
            owner = self._owners.get(request.request_id)
            if owner is not None:
                self.num_generation_tokens_total += 1
                owner[0].events.put_nowait((owner[1], request.num_output_tokens))
        for request in result.finished:
            owner = self._owners.pop(request.request_id, None)
            if owner is not None:
                owner[0].sequence_done()
                if owner[0].done:
                    self.num_finished_total += 1
        for request in step.plan.preempted:
            self.stats.preemptions_by_tier[request.tier.name] += 1

    def _record(self, step: Step) -> None:
        self.stats.num_steps += 1
        self.stats.last_budget_tokens = step.plan.budget_tokens
        self.stats.budget_tokens.append(step.plan.budget_tokens)
        self.stats.planner_s.append(step.planner_s)
        if self.stats.path is not None and time.monotonic() - self._written_s >= self.stats.interval_s:
            self._write_stats()

    def _write_stats(self) -> None:
        # A full window takes milliseconds, in the event loop that serves the clients too:
        # at most every interval_s while busy, and once when idle (see _idle).
        self.stats.calibration = self.calibrator.report()
        self.stats.maybe_write(force=True)
        self._written_s, self._written_steps = time.monotonic(), self.stats.num_steps
