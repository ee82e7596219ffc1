"""``accelgen bench vllm WORKLOAD.yaml``: the workload replayed on real vLLM engines.

One vLLM OpenAI server per configuration, started by this command on 127.0.0.1, one
after another, each fed the identical request sequence at its arrival times:

* ``vllm-fcfs``      stock vLLM, untouched (``--scheduling-policy fcfs``);
* ``vllm-priority``  stock vLLM with ``--scheduling-policy priority``; each request's
                     body carries ``priority`` = its tier's ``priority``;
* ``accelgen``       ``--scheduler-cls accelgen.vllm.AccelGenScheduler`` with the
                     workload's tiers; the tier travels in ``vllm_xargs``.

Every request streams (``/v1/completions``, the prompt is that many random token ids of
the model's vocabulary, ``max_tokens = min_tokens`` = its output length,
``ignore_eos``); ``continuous_usage_stats`` gives the token count of every chunk, so each
token is stamped with the time its chunk arrived (the replay: :mod:`accelgen.bench.replay`).
Token times go into the simulator's :class:`~accelgen.sim.metrics.Recorder`, so the JSON
report has the shape of ``accelgen bench sim``'s. ``--calibrated OUT.json`` saves the latency model the AccelGen
engine fitted online and runs the simulator on the same requests with it, reporting how
far simulator and engine agree.

A workload with a ``sizing:`` section (:mod:`accelgen.bench.sizing`) is first sized on
this engine: one measurement engine (AccelGen's scheduler class, policy ``vllm-stock``)
runs the probe (:mod:`accelgen.bench.probe`) and is stopped; the derived absolute values
and the measured numbers are printed and reported (``sizing``), and the probe's fit is
every AccelGen engine's starting calibration. ``--measure-only`` stops there.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import os
import shutil
import signal
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING, Any

from accelgen.argtypes import non_negative_float, positive_float, positive_int
from accelgen.core.errors import ConfigError

if TYPE_CHECKING:
    from accelgen.bench.probe import ProbeResult
    from accelgen.bench.replay import Outcome
    from accelgen.launch import VllmServerConfig
    from accelgen.sim.metrics import Recorder
    from accelgen.sim.traces import Trace
    from accelgen.sim.workload import SimRequest, Workload

CONFIGS = ("accelgen", "vllm-fcfs", "vllm-priority")
# The simulator's metrics compared between engine and simulator (--calibrated).
AGREEMENT_KEYS = ("throughput_rps", "goodput_rps", "attainment", "token_attainment", "ttft_p50_s", "tbt_p99_s")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("workload", type=Path, help="workload YAML file (e.g. workloads/mixed-cpu.yaml)")
    parser.add_argument("--json", type=Path, metavar="OUT.json", help="write the report as JSON")
    parser.add_argument("--duration-s", type=positive_float, metavar="S", help="replay only arrivals before S seconds")
    parser.add_argument(
        "--configs",
        default=",".join(CONFIGS),
        help=f"comma-separated engine configurations, run in this order (default: {','.join(CONFIGS)})",
    )
    parser.add_argument(
        "--calibrated",
        type=Path,
        metavar="OUT.json",
        help="save the AccelGen engine's fitted latency model here and compare with the simulator on it",
    )
    parser.add_argument("--model", type=Path, help="model directory (default: a tiny model built in the work dir)")
    parser.add_argument(
        "--workdir", type=Path, help="engine logs, stats and tier files (default: a temporary folder, removed)"
    )
    parser.add_argument(
        "--drain-s",
        type=non_negative_float,
        default=120.0,
        help="wait at most this long after the last arrival (default 120)",
    )
    parser.add_argument(
        "--repeats",
        type=positive_int,
        default=1,
        help="replay every configuration this many times, the order reversed each round; each "
        "configuration reports its median-goodput replay, and all replays' goodputs (default 1)",
    )
    parser.add_argument(
        "--data-dir",
        type=Path,
        help="folder with traces/ (default: $ACCELGEN_DATA_DIR or ../shared/data)",
    )
    parser.add_argument(
        "--judge",
        action="store_true",
        help="after each configuration's replay, load the same engine with vLLM's own benchmark client "
        "(one stream per tier, the replay's counts, rates and mean lengths) and judge it by the same rule",
    )
    parser.add_argument(
        "--measure-only",
        action="store_true",
        help="measure the engine (the probe), size the workload on it, print what was derived; no replays",
    )


def _server_config(
    name: str, workload: Workload, model_dir: Path, workdir: Path, calibration: Path | None, *, tag: str
) -> VllmServerConfig:
    from accelgen.launch import VllmServerConfig

    e = workload.engine
    common: dict[str, Any] = {
        "model_dir": model_dir,
        "max_num_batched_tokens": e.max_num_batched_tokens,
        "max_num_seqs": e.max_num_seqs,
        "num_gpu_blocks": e.num_kv_blocks,
        "kv_cache_memory_bytes": 1 << 30,
        "extra_args": ("--block-size", str(e.block_size_tokens), "--seed", str(workload.seed)),
        "log_file": workdir / f"{tag}-server.log",
    }
    if name == "vllm-fcfs":
        return VllmServerConfig(scheduler_cls=None, policy=None, scheduling_policy="fcfs", **common)
    if name == "vllm-priority":
        return VllmServerConfig(scheduler_cls=None, policy=None, scheduling_policy="priority", **common)
    return VllmServerConfig(
        policy=name,
        tiers_file=workdir / "tiers.yaml",
        scheduler_config=workdir / "scheduler.yaml",
        stats_file=workdir / f"{tag}-stats.json",
        step_log=workdir / f"{tag}-steps.jsonl",
        calibration_file=calibration,
        **common,
    )


def _preemptions_from_metrics(base_url: str) -> int | None:
    """vLLM's own preemption counter from its Prometheus endpoint."""
    import urllib.request

    from accelgen.server.engine_state import metric_samples

    try:
        with urllib.request.urlopen(base_url + "/metrics", timeout=10) as r:
            text = r.read().decode()
    except OSError:
        return None
    samples = metric_samples(text, ("vllm:num_preemptions_total", "vllm:num_preemptions"))
    return int(sum(s.value for s in samples)) if samples else None


def _run_config(
    name: str,
    workload: Workload,
    requests: list[SimRequest],
    *,
    model_dir: Path,
    workdir: Path,
    vocab: int,
    drain_s: float,
    calibration: Path | None,
    tag: str,
    judge: bool = False,
) -> dict[str, Any]:
    """Start ``name``'s engine, replay ``requests`` against it, stop it; its result.

    Its files in ``workdir`` are named ``{tag}-*`` (server log, stats, step log, requests).
    With ``judge``, vLLM's benchmark client then loads the same engine (:func:`_judge`);
    its verdict is under the result's ``judge``.
    """
    from accelgen.bench.replay import write_request_log
    from accelgen.launch import VllmServer
    from accelgen.sim.metrics import Recorder

    cfg = _server_config(name, workload, model_dir, workdir, calibration, tag=tag)
    recorder = Recorder(requests, workload.tiers)
    print(f"[{name}] starting vLLM ...", flush=True)
    with VllmServer(cfg, start_timeout_s=420.0) as server:
        print(f"[{name}] healthy after {server.start_s:.0f} s; replaying {len(requests)} requests", flush=True)
        outcome, load_avg_1m = _timed_replay(
            server.base_url, name, workload, requests, recorder, vocab=vocab, drain_s=drain_s
        )
        metric_preemptions = _preemptions_from_metrics(server.base_url)
        judged = (
            _judge(name, server.base_url, workload, requests, model_dir, workdir / f"{tag}-judge") if judge else None
        )
        start_s = server.start_s
        port = server.port
    write_request_log(workdir / f"{tag}-requests.jsonl", recorder, outcome)
    result = _config_result(
        recorder,
        outcome,
        stats=_engine_stats(cfg.stats_file),
        metric_preemptions=metric_preemptions,
        load_avg_1m=load_avg_1m,
        engine_start_s=start_s,
        engine_port=port,
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
    base_url: str,
    name: str,
    workload: Workload,
    requests: list[SimRequest],
    recorder: Recorder,
    *,
    vocab: int,
    drain_s: float,
) -> tuple[Outcome, list[float]]:
    """The replay (:func:`accelgen.bench.replay.replay`) and the machine's load before and after it."""
    import asyncio

    from accelgen.bench.replay import replay

    load_before = os.getloadavg()[0]
    outcome = asyncio.run(
        replay(base_url, name, requests, recorder, workload.tiers, vocab=vocab, seed=workload.seed, drain_s=drain_s)
    )
    load_after = os.getloadavg()[0]
    return outcome, [round(load_before, 2), round(load_after, 2)]


def _engine_stats(stats_file: Path | None) -> dict[str, Any]:
    """The AccelGen engine's stats file as JSON; ``{}`` when there is none or it cannot be read."""
    from accelgen.wire import read_engine_stats

    if stats_file is None or not stats_file.exists():
        return {}
    try:
        return read_engine_stats(stats_file).to_json()
    except (OSError, ValueError):
        return {}


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


def _client_figures(outcome: Outcome) -> dict[str, Any]:
    """The client's side of a result: failures, retries, and how late it sent and woke."""
    from accelgen.core.summary import quantile

    return {
        "failed": len(outcome.failed),
        "unfinished": len(outcome.unfinished),
        "retried": len(outcome.retried),
        "errors": dict(list(outcome.failed.items())[:5]),
        "send_lag_p99_s": quantile(outcome.late_sends_s, 0.99) or 0.0,
        "client_loop_lag_p99_s": quantile(outcome.loop_lags_s, 0.99) or 0.0,
        "client_loop_lag_max_s": max(outcome.loop_lags_s, default=0.0),
    }


def _config_result(
    recorder: Recorder,
    outcome: Outcome,
    *,
    stats: dict[str, Any],
    metric_preemptions: int | None,
    load_avg_1m: list[float],
    engine_start_s: float | None,
    engine_port: int,
) -> dict[str, Any]:
    """One replay's report entry: the recorder's summary, then the engine's and the client's figures."""
    result = recorder.summary()
    result.update(_engine_figures(stats, metric_preemptions))
    result.update(_client_figures(outcome))
    result.update(
        # The machine's 1-minute load average before and after the replay: other work on
        # the same cores shows up here (and in the client's lags), not in the engine.
        load_avg_1m=load_avg_1m,
        engine_start_s=engine_start_s,
        engine_port=engine_port,
        replay_wall_s=outcome.wall_s,
    )
    return result


def _judge(
    name: str, base_url: str, workload: Workload, requests: list[SimRequest], model_dir: Path, workdir: Path
) -> dict[str, Any]:
    """vLLM's benchmark client on the running engine: the replay's load per tier, judged."""
    from accelgen.bench.judge import TierStream, run_judge, streams_for

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
        tokenizer=model_dir,
        streams=streams,
        tiers=tiers,
        workdir=workdir,
        seed=workload.seed,
        timeout_s=3 * duration_s + 600.0,
        warmup=warmup,
    )


def _write_engine_files(raw: dict[str, Any], workload: Workload, workdir: Path) -> None:
    """The AccelGen engines' tier and scheduler files: the workload's (sized) values."""
    import yaml

    (workdir / "tiers.yaml").write_text(yaml.safe_dump(workload.tiers.to_config()), encoding="utf-8")
    scheduler = dict(raw.get("scheduler") or {})
    # The times sizing may have scaled (the rest stays as written).
    scheduler.update(gamma_s=workload.scheduler.gamma_s, safety_margin_s=workload.scheduler.safety_margin_s)
    scheduler["policy"] = "accelgen"
    (workdir / "scheduler.yaml").write_text(yaml.safe_dump(scheduler), encoding="utf-8")


def _measure_and_size(
    workload: Workload,
    traces: list[Trace],
    *,
    source: str,
    model_dir: Path,
    workdir: Path,
    vocab: int,
    max_request_tokens: int,
) -> tuple[Workload, dict[str, Any]]:
    """Probe a ``vllm-stock`` engine, size ``workload`` on its fit; the sized workload and
    the report's ``sizing``. The fit becomes the AccelGen engines' starting calibration."""
    from accelgen.bench.probe import measure
    from accelgen.bench.sizing import describe, size_workload
    from accelgen.sim.workload import engine_limits

    assert workload.engine.num_kv_blocks is not None
    # One block is vLLM's reserved null block.
    limits = engine_limits(workload, num_kv_blocks=workload.engine.num_kv_blocks - 1)
    cfg = _server_config("vllm-stock", workload, model_dir, workdir, workdir / "probe-calibration.json", tag="probe")
    cfg = dataclasses.replace(cfg, tiers_file=None, scheduler_config=None, step_log=None)
    print("[probe] starting the measurement engine (vllm-stock) ...", flush=True)
    probe = measure(cfg, limits, log_file=workdir / "probe-server.log", vocab=vocab, seed=workload.seed)
    print(_probe_line(probe), flush=True)
    try:
        sized, derived = size_workload(
            workload, probe.model, limits, traces=traces, max_request_tokens=max_request_tokens
        )
    except ConfigError as err:
        raise err.within(source=source) from None
    if derived:
        for line in describe(derived):
            print(line)
    shutil.copyfile(probe.calibration_file, workdir / "calibration.json")
    return sized, derived | {"probe": probe.to_dict()}


def _probe_line(probe: ProbeResult) -> str:
    m = probe.measurement
    steps = f"{probe.num_steps} steps, " if probe.num_steps is not None else ""
    return (
        f"[probe] {probe.num_requests} requests, {steps}{probe.wall_s:.0f} s; fit on {probe.model.num_samples} "
        f"steps, error {probe.model.fit_error:.1%}; decode step {m.decode_step_s * 1e3:.2f} ms, "
        f"prefill of {m.max_num_batched_tokens} tokens {m.full_prefill_s * 1e3:.0f} ms"
    )


def _requests(workload: Workload, traces: list[Trace], max_request_tokens: int) -> list[SimRequest]:
    """The replayed requests; outputs capped at ``max_tokens`` (what a real request asks)."""
    from accelgen.sim.workload import capped_outputs, generate_requests

    requests = capped_outputs(workload, generate_requests(workload, traces, max_request_tokens=max_request_tokens))
    if not requests:
        raise ConfigError("the workload generates no requests", field="duration_s")
    return requests


def _finish_measure_only(args: argparse.Namespace, report: dict[str, Any], workdir: Path, *, own_workdir: bool) -> int:
    """``--measure-only``: the probe's fit to ``--calibrated``, the report to ``--json``."""
    fitted = workdir / "calibration.json"
    if args.calibrated and fitted.exists():
        args.calibrated.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(fitted, args.calibrated)
        print(f"wrote {args.calibrated} (the measurement engine's fitted latency model)")
    if own_workdir:
        shutil.rmtree(workdir, ignore_errors=True)
    if args.json:
        _write_json(args.json, report)
    return 0


def _simulate(workload: Workload, requests: list[SimRequest], fit_path: Path, names: list[str]) -> dict[str, Any]:
    """The simulator on the same requests, timed by the engine's fitted model."""
    from accelgen.sim.profiles import load_latency_model
    from accelgen.sim.runner import run_policy
    from accelgen.sim.workload import engine_limits

    model = load_latency_model(str(fit_path))
    assert workload.engine.num_kv_blocks is not None
    limits = engine_limits(workload, num_kv_blocks=workload.engine.num_kv_blocks)
    return {name: run_policy(workload, name, requests, model=model, limits=limits) for name in names}


def _agreement(engine: dict[str, Any], sim: dict[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for name, sim_result in sim.items():
        eng = engine[name]
        out[name] = {k: {"engine": eng[k], "sim": sim_result[k]} for k in AGREEMENT_KEYS}
    return out


def run(args: argparse.Namespace) -> int:
    """Size the workload if asked, replay it on every configuration, report and compare."""
    source = str(args.workload)
    raw, workload, names = _load(args, source=source)
    traces = _traces(args, workload, source=source)
    e = workload.engine
    assert e.num_kv_blocks is not None  # _load refuses 'auto'
    max_request_tokens = min((e.num_kv_blocks - 1) * e.block_size_tokens, 8192)
    # A sized workload has its requests only once the engine is measured.
    requests = [] if workload.sizing else _requests(workload, traces, max_request_tokens)

    own_workdir = args.workdir is None
    workdir = Path(tempfile.mkdtemp(prefix="accelgen-bench-vllm-")) if own_workdir else args.workdir
    workdir.mkdir(parents=True, exist_ok=True)
    previous = signal.getsignal(signal.SIGTERM)

    def on_term(signum: int, frame: object) -> None:
        raise KeyboardInterrupt  # leaves every `with VllmServer` block: engines stop

    signal.signal(signal.SIGTERM, on_term)
    try:
        model_dir, vocab = _model(args, workdir)
        sizing: dict[str, Any] | None = None
        if workload.sizing is not None or args.measure_only:
            workload, sizing = _measure_and_size(
                workload,
                traces,
                source=source,
                model_dir=model_dir,
                workdir=workdir,
                vocab=vocab,
                max_request_tokens=max_request_tokens,
            )
            requests = _requests(workload, traces, max_request_tokens)
        _write_engine_files(raw, workload, workdir)
        report = _report_head(workload, requests, model_dir, sizing)
        if args.measure_only:
            names = []
        runs = _replay_rounds(args, names, workload, requests, model_dir=model_dir, workdir=workdir, vocab=vocab)
        _add_medians(report, names, runs)
    finally:
        signal.signal(signal.SIGTERM, previous)
        if own_workdir and not (args.calibrated and (workdir / "calibration.json").exists()):
            shutil.rmtree(workdir, ignore_errors=True)

    if args.measure_only:
        return _finish_measure_only(args, report, workdir, own_workdir=own_workdir)
    _print_reports(report, workload)
    if args.calibrated:
        _compare_with_simulator(args, report, workload, requests, workdir, own_workdir=own_workdir)
    _add_goals(report, workload)
    if args.json:
        _write_json(args.json, report)
    return 0


def _load(args: argparse.Namespace, *, source: str) -> tuple[Any, Workload, list[str]]:
    """The workload file (as written, and parsed with ``--duration-s`` applied) and the configurations."""
    from accelgen.config import read_yaml
    from accelgen.core.policies import get_spec
    from accelgen.sim.workload import parse_workload

    raw = read_yaml(args.workload)
    try:
        workload = parse_workload(raw)
    except ConfigError as err:
        raise err.within(source=source) from None
    names = [c.strip() for c in args.configs.split(",") if c.strip()]
    if not names:
        raise ConfigError("name at least one configuration", field="--configs")
    for name in names:
        if name not in ("vllm-fcfs", "vllm-priority") and get_spec(name).clairvoyant:
            raise ConfigError(f"{name} needs true output lengths; no engine has them", field="--configs")
    if args.duration_s is not None:
        workload = dataclasses.replace(workload, duration_s=args.duration_s, num_requests=None)
    if workload.engine.num_kv_blocks is None:
        raise ConfigError("give the engine's num_kv_blocks (a real engine has no 'auto')", field="engine.num_kv_blocks")
    return raw, workload, names


def _traces(args: argparse.Namespace, workload: Workload, *, source: str) -> list[Trace]:
    """One trace per source, read from ``--data-dir`` (or the default data folder)."""
    from accelgen.sim.profiles import default_data_dir
    from accelgen.sim.workload import load_source_traces

    data_dir = args.data_dir or default_data_dir()
    try:
        return load_source_traces(workload, data_dir)
    except ConfigError as err:
        raise err.within(source=err.source or source) from None


def _model(args: argparse.Namespace, workdir: Path) -> tuple[Path, int]:
    """The model directory (``--model``, else a tiny model built in ``workdir``) and the vocabulary used."""
    model_dir = args.model
    if model_dir is None:
        from accelgen.vllm.tiny_model import build_tiny_model

        model_dir = build_tiny_model(workdir / "tiny-model")
    vocab = min(int(json.loads((Path(model_dir) / "config.json").read_text())["vocab_size"]), 32000)
    return Path(model_dir), vocab


def _report_head(
    workload: Workload, requests: list[SimRequest], model_dir: Path, sizing: dict[str, Any] | None
) -> dict[str, Any]:
    """The report before any replay: the workload, the engine and (if sized) how."""
    e = workload.engine
    report: dict[str, Any] = {
        "workload": workload.name,
        "rate_rps": workload.rate_rps,
        "num_requests": len(requests),
        "duration_s": workload.duration_s,
        "engine": {
            "kind": "vllm-cpu",
            "model": str(model_dir),
            "num_kv_blocks": e.num_kv_blocks,
            "block_size_tokens": e.block_size_tokens,
            "max_num_batched_tokens": e.max_num_batched_tokens,
            "max_num_seqs": e.max_num_seqs,
        },
        "policies": {},
    }
    if sizing is not None:
        report["sizing"] = sizing
    return report


def _replay_rounds(
    args: argparse.Namespace,
    names: list[str],
    workload: Workload,
    requests: list[SimRequest],
    *,
    model_dir: Path,
    workdir: Path,
    vocab: int,
) -> dict[str, list[dict[str, Any]]]:
    """Every configuration's results, ``--repeats`` rounds of one replay each."""
    calibration = workdir / "calibration.json"
    runs: dict[str, list[dict[str, Any]]] = {name: [] for name in names}
    for round_no in range(args.repeats):
        # Reversed every other round: drift in the machine's load hits every configuration alike.
        for name in names if round_no % 2 == 0 else names[::-1]:
            runs[name].append(
                _run_config(
                    name,
                    workload,
                    requests,
                    model_dir=model_dir,
                    workdir=workdir,
                    vocab=vocab,
                    drain_s=args.drain_s,
                    calibration=calibration if name not in ("vllm-fcfs", "vllm-priority") else None,
                    tag=name if args.repeats == 1 else f"{name}-{round_no + 1}",
                    judge=args.judge,
                )
            )
    return runs


def _add_medians(report: dict[str, Any], names: list[str], runs: dict[str, list[dict[str, Any]]]) -> None:
    """Each configuration's median-goodput replay into the report, its judge's verdict beside."""
    for name in names:
        ranked = sorted(runs[name], key=lambda r: r["goodput_rps"])
        result = ranked[(len(ranked) - 1) // 2]  # the median replay (the lower one of an even count)
        result["replays_goodput_rps"] = [r["goodput_rps"] for r in runs[name]]
        judged = result.pop("judge", None)
        if judged is not None:
            report.setdefault("judge", {"policies": {}})["policies"][name] = judged
        report["policies"][name] = result


def _print_reports(report: dict[str, Any], workload: Workload) -> None:
    """The replays' table, and the judge's when it ran."""
    from accelgen.bench.report import print_report

    print_report(report)
    if "judge" in report:
        print_report(dict(report, workload=f"{workload.name} (judged from vLLM's benchmark client)", **report["judge"]))


def _compare_with_simulator(
    args: argparse.Namespace,
    report: dict[str, Any],
    workload: Workload,
    requests: list[SimRequest],
    workdir: Path,
    *,
    own_workdir: bool,
) -> None:
    """``--calibrated``: save the engine's fit, run the simulator on it, report how far they agree."""
    from accelgen.bench.report import print_report

    fitted = workdir / "calibration.json"
    if not fitted.exists():
        print("no calibration file: the AccelGen engine did not run or never fitted")
        return
    args.calibrated.parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(fitted, args.calibrated)
    if own_workdir:
        shutil.rmtree(workdir, ignore_errors=True)
    print(f"wrote {args.calibrated} (the AccelGen engine's fitted latency model)")
    engine = dataclasses.replace(workload.engine, latency_model=str(args.calibrated))
    sim = _simulate(dataclasses.replace(workload, engine=engine), requests, args.calibrated, list(report["policies"]))
    sim_report = dict(report, policies=sim)
    sim_report["workload"] = f"{workload.name} (simulator, {args.calibrated})"
    print_report(sim_report)
    report["simulator"] = {"latency_model": str(args.calibrated), "policies": sim}
    report["agreement"] = _agreement(report["policies"], sim)
    for name, keys in report["agreement"].items():
        print(f"  {name}: " + ", ".join(f"{k} engine {v['engine']:.3g} / sim {v['sim']:.3g}" for k, v in keys.items()))


def _add_goals(report: dict[str, Any], workload: Workload) -> None:
    """The cell's goals (:mod:`accelgen.bench.goals`) into the report, printed."""
    from accelgen.bench.goals import cell_goals, tight_tier

    report["goals"] = cell_goals(report, tight=tight_tier(workload.tiers))
    _print_goals(report["goals"])


def _write_json(path: Path, report: dict[str, Any]) -> None:
    """The report as indented JSON at ``path`` (its folder made)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(report, indent=2))
    print(f"wrote {path}")


def _print_goals(goals: dict[str, Any]) -> None:
    """One line per goal: its value, what it must be, met or not (unknown: not measured)."""
    print(f"goals (tight tier {goals['tight_tier']!r}, best stock {goals.get('best_stock', '-')}):")
    for key, goal in goals.items():
        if isinstance(goal, dict) and "met" in goal:
            value = goal["value"]
            shown = "-" if value is None else (f"{value:.3g}" if isinstance(value, float) else str(value))
            state = {True: "met", False: "MISSED", None: "not measured"}[goal["met"]]
            print(f"  {key}: {shown} ({goal['goal']}): {state}")
    print(f"  all goals: {'met' if goals['met'] else 'not met'}")
