"""Capacity: the highest Poisson rate at which every tier meets its own attainment target.

Below saturation every policy's goodput equals the arrival rate, so the comparison
that matters is where each policy stops keeping up. Capacity is found by bisection on
the rate, assuming attainment falls as the rate grows::

    lo (every tier meets its target) ────── mid ────── hi (some tier misses)
    mid meets: lo = mid; misses: hi = mid; until hi − lo ≤ precision × (hi + lo)

The answer, (lo + hi) / 2, is then within ±precision of every rate in [lo, hi]. A
range whose top still meets every target, or whose bottom already misses one, has no
capacity inside it: that is reported as such ("above" / "below"), never as a number.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from accelgen.core.latency import LatencyModel
from accelgen.core.plan import EngineLimits
from accelgen.sim.bound import BoundResult, capacity_bound
from accelgen.sim.metrics import Recorder
from accelgen.sim.runner import resolve_engine, run_policy
from accelgen.sim.system import admission_config
from accelgen.sim.traces import Trace
from accelgen.sim.workload import SimRequest, Workload, generate_requests, load_source_traces


@dataclass(frozen=True, slots=True)
class Capacity:
    """The outcome of one bisection.

    ``status`` is ``"found"`` (``capacity_rps`` within ±precision), ``"above"`` (even
    the highest rate tried met every target: capacity > ``hi_rps``) or ``"below"``
    (the lowest rate tried missed: capacity < ``lo_rps``).
    """

    status: str
    lo_rps: float
    hi_rps: float
    capacity_rps: float | None
    tried_rps: tuple[float, ...]

    def describe(self) -> str:
        if self.status == "above":
            return f"capacity > highest rate tried ({self.hi_rps:g} req/s)"
        if self.status == "below":
            return f"capacity < lowest rate tried ({self.lo_rps:g} req/s)"
        return f"{self.capacity_rps:.3f} req/s"


def bisect_capacity(meets: Callable[[float], bool], lo_rps: float, hi_rps: float, *, precision: float) -> Capacity:
    """The highest rate in [``lo_rps``, ``hi_rps``] at which ``meets(rate)``, to ±``precision``.

    Args:
        meets: Whether every tier meets its target at a rate (assumed to hold below
            some threshold and fail above it).
        lo_rps: The lowest rate to try (> 0).
        hi_rps: The highest (> lo_rps).
        precision: Relative half-width of the answer (0.02: ±2 %).
    """
    tried = [hi_rps]
    if meets(hi_rps):
        return Capacity("above", lo_rps, hi_rps, None, tuple(tried))
    tried.append(lo_rps)
    if not meets(lo_rps):
        return Capacity("below", lo_rps, hi_rps, None, tuple(tried))
    lo, hi = lo_rps, hi_rps
    while hi - lo > precision * (hi + lo):
        mid = (lo + hi) / 2
        tried.append(mid)
        if meets(mid):
            lo = mid
        else:
            hi = mid
    return Capacity("found", lo, hi, (lo + hi) / 2, tuple(tried))


def meets_targets(result: dict[str, Any], workload: Workload) -> bool:
    """Every tier with requests met its own ``attainment_target`` in a run's summary."""
    tiers = result["tiers"]
    return all(
        tiers[t.name]["attainment"] >= t.attainment_target for t in workload.tiers if tiers[t.name]["requests"] > 0
    )


@dataclass(frozen=True, slots=True)
class Variant:
    """What one bisection runs: a policy, with or without admission in front, and how
    AccelGen predicts output lengths (``None``: the workload's ``scheduler:`` choice).

    Args:
        label: Its name in reports (a policy's own name, or an ablation's).
        policy: The registered policy.
        admission: The sidecar's admission in front (the full system).
        output_lengths: ``mean`` or ``learned`` in place of the workload's.
    """

    label: str
    policy: str
    admission: bool
    output_lengths: str | None = None


def ablations(workload: Workload) -> tuple[Variant, ...]:
    """AccelGen's full system and each thing taken out of it, one at a time.

    The reference is the full system (admission in front); "no admission" is the engine
    policy alone; the output lengths are the other of ``mean`` and ``learned``.
    """
    other = "mean" if workload.scheduler.output_lengths == "learned" else "learned"
    return (
        Variant("full system", "accelgen", True),
        Variant("no chunking", "accelgen-no-chunking", True),
        Variant("no ordering", "accelgen-no-ordering", True),
        Variant("no best fit", "accelgen-no-bestfit", True),
        Variant("no admission (engine only)", "accelgen", False),
        Variant(f"{other} output lengths", "accelgen", True, other),
    )


def arrival_window_s(workload: Workload, requests: list[SimRequest]) -> float:
    """The span of the arrival process: the workload's duration, else its last arrival."""
    if workload.duration_s is not None:
        return float(workload.duration_s)
    return max((r.arrival_s for r in requests), default=0.0)


def steady_goodput(recorder: Recorder, window_s: float) -> dict[str, Any]:
    """Goodput in a finite run's steady part, per second of arrivals.

    Per tier, the requests that met their SLO among those that arrived at least the
    tier's horizon before arrivals stopped, per second of that stretch; summed over the
    tiers. The horizon is how long a request may live and still meet its SLO: an offline
    tier's deadline, an online tier's TTFT plus TBT × its mean output. A request that
    arrives later lives partly in the drain after the last arrival, where the engine
    carries less than the offered load, a bonus no steady state has; one that arrives
    earlier competes only with arrivals of the run. A tier whose horizon is not shorter
    than the window is counted over the whole window (the bonus then stays in).

    ``goodput_window_rps`` counts every arrival's request per second of the window.
    """
    requests = {r.request_id: r for r in recorder.requests}
    met = {rid: rec.met() for rid, rec in recorder.records.items()}
    total = 0.0
    horizons: dict[str, float] = {}
    for tier in recorder.tiers:
        ids = [rid for rid, rec in recorder.records.items() if rec.tier.name == tier.name]
        if not ids:
            continue
        if tier.deadline_s is not None:
            horizon = tier.deadline_s
        else:
            mean_output = sum(requests[rid].output_tokens for rid in ids) / len(ids)
            horizon = (tier.ttft_slo_s or 0.0) + (tier.tbt_slo_s or 0.0) * mean_output
        span = window_s - horizon if horizon < window_s else window_s
        horizons[tier.name] = horizon
        counted = sum(met[rid] for rid in ids if recorder.records[rid].arrival_s <= span)
        total += counted / span if span > 0 else 0.0
    return {
        "goodput_steady_rps": total,
        "goodput_window_rps": sum(met.values()) / window_s if window_s > 0 else 0.0,
        "horizons_s": horizons,
    }


@dataclass(slots=True)
class WorkloadSource:
    """A workload's engine (latency model and limits) and its requests at any rate and
    seed; the engine is resolved and the traces read once.

    Args:
        workload: The workload (its rate and seed are replaced per run).
        data_dir: Where its traces and profiles are.
    """

    workload: Workload
    data_dir: Path
    _engine: tuple[LatencyModel, EngineLimits] | None = field(default=None, init=False, repr=False)
    _traces: list[Trace] | None = field(default=None, init=False, repr=False)

    def engine(self) -> tuple[LatencyModel, EngineLimits]:
        if self._engine is None:
            self._engine = resolve_engine(self.workload, self.data_dir)
        return self._engine

    def requests(self, workload: Workload) -> list[SimRequest]:
        if self._traces is None:
            self._traces = load_source_traces(self.workload, self.data_dir)
        _, limits = self.engine()
        return generate_requests(
            workload, self._traces, max_request_tokens=limits.num_kv_blocks * limits.block_size_tokens
        )


@dataclass(slots=True)
class RateRunner(WorkloadSource):
    """Runs one workload's policies at any Poisson rate and seed, remembering every run.

    Args:
        workload: The workload (its rate and seed are replaced per run).
        data_dir: Where its traces and profiles are.
        admission: Put the sidecar's admission in front of the engine (the full system).
    """

    admission: bool = False
    runs: dict[tuple[Variant, int, float], dict[str, Any]] = field(default_factory=dict)

    def variant(self, policy: str, admission: bool | None = None) -> Variant:
        """A plain policy in this runner's mode (or the one given)."""
        return Variant(policy, policy, self.admission if admission is None else admission)

    def run(self, variant: Variant, *, seed: int, rate_rps: float) -> dict[str, Any]:
        """The summary of ``variant`` at ``rate_rps`` with ``seed`` (cached).

        Beside the span-based goodput of every summary, the steady part's
        (:func:`steady_goodput`).
        """
        key = (variant, seed, round(rate_rps, 9))
        if key not in self.runs:
            workload = dataclasses.replace(self.workload.with_rate(rate_rps), seed=seed)
            if variant.output_lengths is not None:
                scheduler = dataclasses.replace(workload.scheduler, output_lengths=variant.output_lengths)
                workload = dataclasses.replace(workload, scheduler=scheduler)
            model, limits = self.engine()
            front = admission_config(limits, len(workload.tiers)) if variant.admission else None
            requests = self.requests(workload)
            recorders: list[Recorder] = []
            result = run_policy(
                workload, variant.policy, requests, model=model, limits=limits, admission=front, recorder_out=recorders
            )
            window = arrival_window_s(workload, requests)
            result.update(arrival_window_s=window, **steady_goodput(recorders[0], window))
            self.runs[key] = result
        return self.runs[key]

    def meets(self, variant: Variant, *, seed: int) -> Callable[[float], bool]:
        """Whether ``variant`` meets every tier's target at a rate, for :func:`bisect_capacity`."""
        return lambda rate: meets_targets(self.run(variant, seed=seed, rate_rps=rate), self.workload)

    def bound(self) -> BoundResult:
        """The capacity bound (:mod:`accelgen.sim.bound`) on a sample of the workload's requests."""
        model, limits = self.engine()
        return capacity_bound(self.workload, model, limits, requests=self.requests(self.workload))
