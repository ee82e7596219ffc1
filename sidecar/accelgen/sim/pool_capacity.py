"""A pool's capacity: :mod:`accelgen.sim.capacity`'s definition and bisection, on the cluster.

The pool's capacity for a routing policy and an engine policy is the highest Poisson
rate into the router at which every tier, over the whole pool, meets its own
``attainment_target`` (the same test, :func:`~accelgen.sim.capacity.meets_targets`, and
the same bisection, :func:`~accelgen.sim.capacity.bisect_capacity`, as one replica's).
One replica's capacity is measured by the same code with ``replicas=1``, so the
comparison with N × it differs in nothing but the pool.

Every rate and every policy of a seed runs the **same requests** (common random
numbers): the seed's Poisson stream is drawn once at 1 req/s over
``MAX_RATE_RPS`` × the duration and compressed in time to each rate (a Poisson process
at rate 1 with its times divided by ``r`` is one at rate ``r``), keeping the arrivals
within the duration::

    seed's stream at 1 req/s:  t0  t1  t2  t3 ...     (prompts, outputs, tiers: fixed)
    at rate r:                 t0/r t1/r t2/r ...     the first requests, same order

Drawing a fresh sample at each rate (as one replica's rate runner does) made the
bisection compare different request mixes at neighbouring rates: which rate "met the
targets" then depended on the sample as much as on the policy, and at 4 replicas every
routing policy ended on the same two neighbouring rates.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from accelgen.core.policies import get_spec, make_policy
from accelgen.core.policy import Policy
from accelgen.core.routing import make_router
from accelgen.sim.capacity import WorkloadSource, meets_targets
from accelgen.sim.cluster import simulate_cluster
from accelgen.sim.system import admission_config
from accelgen.sim.workload import SimRequest

#: The highest rate a pool is run at (the seed's stream is drawn for it).
MAX_RATE_RPS = 256.0

#: (routing policy, engine policy, replicas, seed, rate) of one run.
RunKey = tuple[str, str, int, int, float]


@dataclass(slots=True)
class PoolRunner(WorkloadSource):
    """Runs a workload on a pool at any rate, seed, size and pair of policies (cached).

    Args:
        workload: The workload (its rate and seed are replaced per run).
        data_dir: Where its traces and profiles are.
    """

    runs: dict[RunKey, dict[str, Any]] = field(default_factory=dict)
    _streams: dict[int, list[SimRequest]] = field(default_factory=dict)

    def requests_at(self, *, seed: int, rate_rps: float) -> list[SimRequest]:
        """The seed's requests at ``rate_rps``: its one stream, compressed in time (module docstring)."""
        workload = self.workload
        if workload.process != "poisson" or workload.duration_s is None:
            return self.requests(dataclasses.replace(workload.with_rate(rate_rps), seed=seed))
        if rate_rps > MAX_RATE_RPS:
            raise ValueError(f"a pool is run at most at {MAX_RATE_RPS:g} req/s, not {rate_rps:g}")
        stream = self._streams.get(seed)
        if stream is None:
            base = dataclasses.replace(
                workload.with_rate(1.0), seed=seed, duration_s=workload.duration_s * MAX_RATE_RPS, num_requests=None
            )
            stream = self._streams[seed] = self.requests(base)
        out = []
        for s in stream:
            arrival_s = s.arrival_s / rate_rps
            if arrival_s >= workload.duration_s:
                break
            out.append(dataclasses.replace(s, arrival_s=arrival_s))
        return out[: workload.num_requests] if workload.num_requests is not None else out

    def run(self, routing: str, policy: str, *, replicas: int, seed: int, rate_rps: float) -> dict[str, Any]:
        """The pool's summary (``accelgen bench sim``'s shape, plus the router's counters)."""
        key: RunKey = (routing, policy, replicas, seed, round(rate_rps, 9))
        if key not in self.runs:
            self.runs[key] = self._run(routing, policy, replicas=replicas, seed=seed, rate_rps=rate_rps)
        return self.runs[key]

    def _run(self, routing: str, policy: str, *, replicas: int, seed: int, rate_rps: float) -> dict[str, Any]:
        workload = dataclasses.replace(self.workload.with_rate(rate_rps), seed=seed)
        model, limits = self.engine()

        def fresh() -> Policy:
            return make_policy(
                policy, tiers=workload.tiers, latency_model=model, limits=limits, config=workload.scheduler
            )

        recorder, stats = simulate_cluster(
            fresh,
            self.requests_at(seed=seed, rate_rps=rate_rps),
            replicas=replicas,
            router=make_router(routing, seed=seed, tiers=workload.tiers),
            tiers=workload.tiers,
            model=model,
            max_tokens=workload.max_tokens,
            admission=admission_config(limits, len(workload.tiers)),
            clairvoyant=get_spec(policy).clairvoyant,
            latency_noise=workload.engine.latency_noise,
            seed=seed,
            long_prompt_tokens=workload.scheduler.long_prompt_tokens,
        )
        result = recorder.summary()
        times = stats.decision_times_s or [0.0]
        result["router"] = {
            "routed": stats.routed,
            "held": stats.held,
            "shed": stats.router_shed,
            "decision_p99_s": float(np.percentile(times, 99)),
        }
        return result

    def meets(self, routing: str, policy: str, *, replicas: int, seed: int) -> Callable[[float], bool]:
        """Whether the pool meets every tier's target at a rate (for ``bisect_capacity``)."""
        return lambda rate: meets_targets(
            self.run(routing, policy, replicas=replicas, seed=seed, rate_rps=rate), self.workload
        )
