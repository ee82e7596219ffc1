"""Run a workload under each of its policies on the identical request sequence."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from accelgen.core.admission import AdmissionConfig
from accelgen.core.errors import ConfigError
from accelgen.core.latency import LatencyModel
from accelgen.core.plan import EngineLimits
from accelgen.core.policies import get_spec, make_policy
from accelgen.core.policies.oracle import goodput_upper_bound
from accelgen.sim.engine import simulate
from accelgen.sim.metrics import Recorder
from accelgen.sim.profiles import load_latency_model, named_model
from accelgen.sim.system import admission_config, simulate_system
from accelgen.sim.workload import SimRequest, Workload, engine_limits, generate_requests, load_source_traces

ProgressFactory = Callable[[str, float], Callable[[float], None]]


def resolve_engine(workload: Workload, data_dir: Path) -> tuple[LatencyModel, EngineLimits]:
    """The workload's latency model and engine limits (KV 'auto' sized from GPU memory)."""
    spec = workload.engine
    try:
        model = load_latency_model(spec.latency_model, data_dir=data_dir)
    except ConfigError as err:
        raise err.within(prefix=None if err.field else "engine.latency_model") from None
    blocks = spec.num_kv_blocks
    if blocks is None:
        if spec.latency_model.endswith(".json"):
            raise ConfigError("give num_kv_blocks with a fitted latency model", field="engine.num_kv_blocks")
        blocks = named_model(spec.latency_model, data_dir).kv_capacity_blocks(spec.block_size_tokens)
    return model, engine_limits(workload, num_kv_blocks=blocks)


def build_requests(workload: Workload, data_dir: Path, limits: EngineLimits) -> list[SimRequest]:
    traces = load_source_traces(workload, data_dir)
    # A request larger than the whole KV cache could never run: clip it to fit.
    capacity = limits.num_kv_blocks * limits.block_size_tokens
    return generate_requests(workload, traces, max_request_tokens=capacity)


def run_policy(
    workload: Workload,
    name: str,
    requests: list[SimRequest],
    *,
    model: LatencyModel,
    limits: EngineLimits,
    admission: AdmissionConfig | None = None,
    progress: Callable[[float], None] | None = None,
    recorder_out: list[Recorder] | None = None,
) -> dict[str, Any]:
    """One policy of ``workload`` on ``requests``: its metrics and engine counters.

    With ``admission``, the sidecar's admission runs in front of the engine
    (:mod:`accelgen.sim.system`): the full system. ``recorder_out`` receives the run's
    recorder (every request's record), for measures the summary does not hold.
    """
    spec = get_spec(name)
    policy = make_policy(name, tiers=workload.tiers, latency_model=model, limits=limits, config=workload.scheduler)
    common: dict[str, Any] = {
        "tiers": workload.tiers,
        "model": model,
        "max_tokens": workload.max_tokens,
        "clairvoyant": spec.clairvoyant,
        "latency_noise": workload.engine.latency_noise,
        "seed": workload.seed,
        "progress": progress,
    }
    if admission is None:
        recorder, stats = simulate(policy, requests, **common)
    else:
        recorder, stats = simulate_system(policy, requests, admission=admission, **common)
    if recorder_out is not None:
        recorder_out.append(recorder)
    result = recorder.summary()
    plan_times = stats.plan_times_s or [0.0]
    result.update(
        preemptions=policy.num_preemptions,
        iterations=stats.iterations,
        plan_time_per_iteration_s=stats.plan_time_s / max(stats.iterations, 1),
        plan_time_p99_s=float(np.percentile(plan_times, 99)),
        budget_mean_tokens=float(np.mean(stats.budgets_tokens)) if stats.budgets_tokens else 0.0,
    )
    return result


def upper_bound(
    workload: Workload, requests: list[SimRequest], model: LatencyModel, limits: EngineLimits
) -> dict[str, Any]:
    """The analytic goodput upper bound of ``requests`` (the report's ``upper_bound``)."""
    bound = goodput_upper_bound(
        [
            (
                r.arrival_s,
                r.prompt_tokens,
                r.output_tokens,
                workload.tiers.get(r.tier).ttft_slo_s,
                workload.tiers.get(r.tier).tbt_slo_s,
            )
            for r in requests
        ],
        model,
        limits,
    )
    return {
        "goodput_rps": bound.goodput_rps,
        "feasible_requests": bound.feasible_requests,
        "busy_s": bound.busy_s,
        "span_s": bound.span_s,
    }


def run_workload(
    workload: Workload,
    *,
    data_dir: Path,
    admission: bool = False,
    progress: ProgressFactory | None = None,
) -> dict[str, Any]:
    """Every policy of ``workload`` on the same requests; the ``--json`` report shape.

    With ``admission``, each policy runs behind the sidecar's admission (its defaults,
    :func:`accelgen.sim.system.admission_config`).
    """
    model, limits = resolve_engine(workload, data_dir)
    requests = build_requests(workload, data_dir, limits)
    if not requests:
        raise ConfigError("the workload generates no requests", field="duration_s")
    end = requests[-1].arrival_s
    report: dict[str, Any] = {
        "workload": workload.name,
        "rate_rps": workload.rate_rps,
        "num_requests": len(requests),
        "engine": {
            "latency_model": workload.engine.latency_model,
            "num_kv_blocks": limits.num_kv_blocks,
            "max_num_batched_tokens": limits.max_num_batched_tokens,
        },
        "policies": {},
    }
    front = admission_config(limits, len(workload.tiers)) if admission else None
    if front is not None:
        report["admission"] = dataclasses.asdict(front)
    for name in workload.policies:
        on_progress = progress(name, end) if progress else None
        report["policies"][name] = run_policy(
            workload, name, requests, model=model, limits=limits, admission=front, progress=on_progress
        )
    report["upper_bound"] = upper_bound(workload, requests, model, limits)
    return report
