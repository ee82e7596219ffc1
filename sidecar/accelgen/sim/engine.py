"""The simulated engine: one replica, iteration by iteration.

Each iteration the policy plans (allocating KV), the latency model times the batch
(optionally with seeded multiplicative noise, so the planner's model is not exact),
every sequence whose chunk completes emits a token, and requests that reach their true
output length finish and free their KV. Preempted requests recompute later, as the
policy decided. Deterministic for a seed.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field

import numpy as np

from accelgen.core.latency import LatencyModel
from accelgen.core.policy import Policy
from accelgen.core.request import Request
from accelgen.core.tiers import TierSet
from accelgen.sim.metrics import Recorder
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
    rng = np.random.default_rng(seed)
    noise: Iterator[float] = iter(())
    recorder = Recorder(requests, tiers)
    stats = SimStats()
    true_output = {}
    n = len(requests)
    arrivals = [r.arrival_s for r in requests]
    i = 0
    now = arrivals[0] if n else 0.0
    stop_at = (arrivals[-1] if n else 0.0) + drain_s
    next_progress = now
    perf = time.perf_counter
    while True:
        while i < n and arrivals[i] <= now:
            s = requests[i]
            req = Request(
                request_id=s.request_id,
                arrival_s=s.arrival_s,
                num_prompt_tokens=s.prompt_tokens,
                max_tokens=max(max_tokens, s.output_tokens),
                tier=tiers.get(s.tier),
                expected_output_tokens=s.output_tokens if clairvoyant else None,
            )
            true_output[req.request_id] = s.output_tokens
            policy.add_request(req)
            i += 1
        if policy.num_unfinished == 0:
            if i >= n:
                break
            now = arrivals[i]
            continue
        if now > stop_at:
            break
        t0 = perf()
        plan = policy.plan(now)
        dt = perf() - t0
        stats.plan_time_s += dt
        stats.plan_times_s.append(dt)
        for r in plan.dropped:
            recorder.dropped(r.request_id)
        if plan.is_empty:
            if i < n:  # nothing runnable until more work arrives
                now = max(now, arrivals[i])
                continue
            break  # nothing can ever run (cannot happen with a correct policy)
        duration = model.predict_s(plan.shape)
        if latency_noise > 0:
            try:
                factor = next(noise)
            except StopIteration:
                noise = iter(rng.lognormal(0.0, latency_noise, 4096).tolist())
                factor = next(noise)
            duration *= factor
        now += duration
        stats.iterations += 1
        stats.busy_s += duration
        stats.budgets_tokens.append(plan.budget_tokens)
        for req in policy.update(plan, now=now):
            recorder.token(req.request_id, now)
            if req.num_output_tokens >= true_output[req.request_id]:
                policy.finish(req, now=now)
                recorder.finished(req.request_id, now)
        for r in plan.preempted:
            recorder.preempted(r.request_id)
        if progress is not None and now >= next_progress:
            progress(now)
            next_progress = now + 5.0
    stats.end_s = now
    if progress is not None:
        progress(math.inf)
    return recorder, stats
