"""``bench vllm --calibrated``: the simulator on the engine's own fitted model, and how far the two agree.

The AccelGen engine fits its latency model online; saved, that fit times the simulator
on the very requests the engines were given, and each configuration's headline metrics
are set side by side (``agreement``: per configuration, per metric, engine and sim).
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

from accelgen.bench.report import print_report
from accelgen.sim.profiles import load_latency_model
from accelgen.sim.runner import run_policy
from accelgen.sim.workload import SimRequest, Workload, engine_limits

# The simulator's metrics compared between engine and simulator.
AGREEMENT_KEYS = ("throughput_rps", "goodput_rps", "attainment", "token_attainment", "ttft_p50_s", "tbt_p99_s")


def simulate(workload: Workload, requests: list[SimRequest], fit_path: Path, names: list[str]) -> dict[str, Any]:
    """The simulator on the same requests, timed by the engine's fitted model."""
    model = load_latency_model(str(fit_path))
    assert workload.engine.num_kv_blocks is not None
    limits = engine_limits(workload, num_kv_blocks=workload.engine.num_kv_blocks)
    return {name: run_policy(workload, name, requests, model=model, limits=limits) for name in names}


def agreement(engine: dict[str, Any], sim: dict[str, Any]) -> dict[str, Any]:
    """Per configuration, each of :data:`AGREEMENT_KEYS` as the engine and the simulator measured it."""
    out: dict[str, Any] = {}
    for name, sim_result in sim.items():
        eng = engine[name]
        out[name] = {k: {"engine": eng[k], "sim": sim_result[k]} for k in AGREEMENT_KEYS}
    return out


def compare_with_simulator(report: dict[str, Any], workload: Workload, requests: list[SimRequest], fit: Path) -> None:
    """The simulator on ``report``'s configurations, timed by the engine's saved ``fit``: into the report, printed."""
    engine = dataclasses.replace(workload.engine, latency_model=str(fit))
    sim = simulate(dataclasses.replace(workload, engine=engine), requests, fit, list(report["policies"]))
    sim_report = dict(report, policies=sim)
    sim_report["workload"] = f"{workload.name} (simulator, {fit})"
    print_report(sim_report)
    report["simulator"] = {"latency_model": str(fit), "policies": sim}
    report["agreement"] = agreement(report["policies"], sim)
    for name, keys in report["agreement"].items():
        print(f"  {name}: " + ", ".join(f"{k} engine {v['engine']:.3g} / sim {v['sim']:.3g}" for k, v in keys.items()))
