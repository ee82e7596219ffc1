"""One configuration of ``accelgen bench vllm``: its engine started, the workload replayed, its result.

    start the engine (:func:`~accelgen.bench.vllm_engines.server_config`)
      └─► replay the requests (:func:`accelgen.bench.replay.replay`), the machine's load
          before and after └─► vLLM's preemption counter └─► (judge: vLLM's own client)
    stop it └─► the request log └─► the result entry: the recorder's summary, then the
                                    engine's figures, then the client's

The result has the shape of ``accelgen bench sim``'s per-policy entries, plus what only
a real engine and client report.
"""

from __future__ import annotations

import asyncio
import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from accelgen.bench.judge import TierStream, run_judge, streams_for
from accelgen.bench.replay import Outcome, replay, write_request_log
from accelgen.bench.vllm_engines import engine_stats, preemptions_from_metrics, server_config
from accelgen.launch import VllmServer
from accelgen.sim.metrics import Recorder
from accelgen.sim.workload import SimRequest, Workload


@dataclass(frozen=True, slots=True)
class RunSetup:
    """What every configuration's run shares: the model, the work dir and the replay's limits."""

    model_dir: Path
    workdir: Path
    vocab: int
    drain_s: float
    judge: bool = False


def run_config(
    name: str, workload: Workload, requests: list[SimRequest], setup: RunSetup, *, calibration: Path | None, tag: str
) -> dict[str, Any]:
    """Start ``name``'s engine, replay ``requests`` against it, stop it; its result.

    Its files in the work dir are named ``{tag}-*`` (server log, stats, step log, requests).
    With ``setup.judge``, vLLM's benchmark client then loads the same engine
    (:func:`judge_engine`); its verdict is under the result's ``judge``.
    """
    cfg = server_config(name, workload, setup.model_dir, setup.workdir, calibration, tag=tag)
    recorder = Recorder(requests, workload.tiers)
    print(f"[{name}] starting vLLM ...", flush=True)
    with VllmServer(cfg, start_timeout_s=420.0) as server:
        print(f"[{name}] healthy after {server.start_s:.0f} s; replaying {len(requests)} requests", flush=True)
        outcome, load_avg_1m = _timed_replay(server.base_url, name, workload, requests, recorder, setup)
        metric_preemptions = preemptions_from_metrics(server.base_url)
        judged = judge_engine(name, server.base_url, workload, requests, setup, tag=tag) if setup.judge else None
        start_s, port = server.start_s, server.port
    write_request_log(setup.workdir / f"{tag}-requests.jsonl", recorder, outcome)
    result = recorder.summary()
    result.update(_engine_figures(engine_stats(cfg.stats_file), metric_preemptions))
    result.update(outcome.client_figures())
    result.update(
        # The machine's 1-minute load average before and after the replay: other work on
        # the same cores shows up here (and in the client's lags), not in the engine.
        load_avg_1m=load_avg_1m,
        engine_start_s=start_s,
        engine_port=port,
        replay_wall_s=outcome.wall_s,
    )
    if judged is not None:
        result["judge"] = judged
    print(
        f"[{name}] done in {outcome.wall_s:.0f} s: {result['completed']} completed, "
        f"{len(outcome.failed)} failed, {len(outcome.unfinished)} unfinished",
        flush=True,
    )
    return result


def _timed_replay(
    base_url: str, name: str, workload: Workload, requests: list[SimRequest], recorder: Recorder, setup: RunSetup
) -> tuple[Outcome, list[float]]:
    """The replay and the machine's load before and after it."""
    load_before = os.getloadavg()[0]
    outcome = asyncio.run(
        replay(
            base_url,
            name,
            requests,
            recorder,
            workload.tiers,
            vocab=setup.vocab,
            seed=workload.seed,
            drain_s=setup.drain_s,
        )
    )
    load_after = os.getloadavg()[0]
    return outcome, [round(load_before, 2), round(load_after, 2)]


def _engine_figures(stats: dict[str, Any], metric_preemptions: int | None) -> dict[str, Any]:
    """The engine's side of a result: preemptions, planner time, steps, calibration."""
    by_tier = stats.get("preemptions_by_tier") or {}
    preemptions = sum(by_tier.values()) if stats else (metric_preemptions or 0)
    planner = (stats.get("planner_s") or {}).get("mean") or 0.0
    return {
        "preemptions": int(preemptions),
        "preemptions_by_tier": by_tier,
        "engine_preemptions_by_tier": stats.get("engine_preemptions_by_tier") or {},
        "vllm_preemptions_metric": metric_preemptions,
        "plan_time_per_iteration_s": float(planner),
        "iterations": stats.get("num_steps"),
        "schedule_s": stats.get("schedule_s"),
        "calibration": stats.get("calibration"),
    }


def judge_engine(
    name: str, base_url: str, workload: Workload, requests: list[SimRequest], setup: RunSetup, *, tag: str
) -> dict[str, Any]:
    """vLLM's benchmark client on the running engine: the replay's load per tier, judged (files in ``{tag}-judge``)."""
    tiers = workload.tiers

    def extra_body(tier: str) -> dict[str, Any]:
        if name == "vllm-fcfs":
            return {}
        if name == "vllm-priority":
            return {"priority": tiers.get(tier).priority}
        return {"vllm_xargs": {"slo_tier": tier}}

    duration_s = max([1.0, *(r.arrival_s for r in requests)])
    streams = streams_for(requests, tiers, duration_s=duration_s, extra_body=extra_body)
    warmup = TierStream(tiers.default, 4, math.inf, 64, 16, extra_body=extra_body(tiers.default))
    print(f"[{name}] judge: vLLM's benchmark client, {len(streams)} streams", flush=True)
    return run_judge(
        base_url=base_url,
        model="model",
        tokenizer=setup.model_dir,
        streams=streams,
        tiers=tiers,
        workdir=setup.workdir / f"{tag}-judge",
        seed=workload.seed,
        timeout_s=3 * duration_s + 600.0,
        warmup=warmup,
    )
