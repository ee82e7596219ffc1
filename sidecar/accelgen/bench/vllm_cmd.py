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
far simulator and engine agree (:mod:`accelgen.bench.vllm_agreement`).

A workload with a ``sizing:`` section (:mod:`accelgen.bench.sizing`) is first sized on
this engine: one measurement engine (AccelGen's scheduler class, policy ``vllm-stock``)
runs the probe (:mod:`accelgen.bench.probe`) and is stopped; the derived absolute values
and the measured numbers are printed and reported (``sizing``), and the probe's fit is
every AccelGen engine's starting calibration. ``--measure-only`` stops there.

This module is the command: its arguments and the run's steps. The engines' configurations
and files are :mod:`accelgen.bench.vllm_engines`; one configuration's run and result,
:mod:`accelgen.bench.vllm_run`.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import shutil
import signal
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING, Any

from accelgen.argtypes import non_negative_float, positive_float, positive_int
from accelgen.core.errors import ConfigError

if TYPE_CHECKING:
    from accelgen.bench.probe import ProbeResult
    from accelgen.sim.traces import Trace
    from accelgen.sim.workload import SimRequest, Workload

CONFIGS = ("accelgen", "vllm-fcfs", "vllm-priority")


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
    from accelgen.bench.vllm_engines import server_config
    from accelgen.sim.workload import engine_limits

    assert workload.engine.num_kv_blocks is not None
    # One block is vLLM's reserved null block.
    limits = engine_limits(workload, num_kv_blocks=workload.engine.num_kv_blocks - 1)
    cfg = server_config("vllm-stock", workload, model_dir, workdir, workdir / "probe-calibration.json", tag="probe")
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


def run(args: argparse.Namespace) -> int:
    """Size the workload if asked, replay it on every configuration, report and compare."""
    from accelgen.bench.vllm_engines import model_and_vocab, write_engine_files

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
        model_dir, vocab = model_and_vocab(args.model, workdir)
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
        write_engine_files(raw, workload, workdir)
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
    from accelgen.bench.vllm_engines import STOCK_CONFIGS
    from accelgen.bench.vllm_run import RunSetup, run_config

    setup = RunSetup(model_dir=model_dir, workdir=workdir, vocab=vocab, drain_s=args.drain_s, judge=args.judge)
    calibration = workdir / "calibration.json"
    runs: dict[str, list[dict[str, Any]]] = {name: [] for name in names}
    for round_no in range(args.repeats):
        # Reversed every other round: drift in the machine's load hits every configuration alike.
        for name in names if round_no % 2 == 0 else names[::-1]:
            tag = name if args.repeats == 1 else f"{name}-{round_no + 1}"
            fit = None if name in STOCK_CONFIGS else calibration
            runs[name].append(run_config(name, workload, requests, setup, calibration=fit, tag=tag))
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
    from accelgen.bench.vllm_agreement import compare_with_simulator

    fitted = workdir / "calibration.json"
    if not fitted.exists():
        print("no calibration file: the AccelGen engine did not run or never fitted")
        return
    args.calibrated.parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(fitted, args.calibrated)
    if own_workdir:
        shutil.rmtree(workdir, ignore_errors=True)
    print(f"wrote {args.calibrated} (the AccelGen engine's fitted latency model)")
    compare_with_simulator(report, workload, requests, args.calibrated)


def _add_goals(report: dict[str, Any], workload: Workload) -> None:
    """The cell's goals (:mod:`accelgen.bench.goals`) into the report, printed."""
    from accelgen.bench.goals import cell_goals, tight_tier
    from accelgen.bench.report import print_goals

    report["goals"] = cell_goals(report, tight=tight_tier(workload.tiers))
    print_goals(report["goals"])


def _write_json(path: Path, report: dict[str, Any]) -> None:
    """The report as indented JSON at ``path`` (its folder made)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(report, indent=2))
    print(f"wrote {path}")
