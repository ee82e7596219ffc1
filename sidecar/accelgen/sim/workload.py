"""Workload files: what to simulate, on which engine, with which policies.

A workload is a YAML file users write (see ``workloads/mixed.yaml``)::

    name: mixed
    seed: 42
    duration_s: 600            # or num_requests: N
    arrivals: {process: poisson, rate_rps: 5.0}   # or {process: replay, time_scale: 1.0}
    sources:
      - {trace: azure_conv_2023.csv, weight: 0.65, tier: interactive}
      - {trace: arxiv_summarization_lengths.csv, weight: 0.35,
         tiers: {summarize: 0.7, batch: 0.3}}
    tiers: {default_tier: interactive, tiers: [...]}     # the core's tier format
    engine: {latency_model: h100-llama-2-7b, num_kv_blocks: auto, block_size_tokens: 16,
             max_num_batched_tokens: 8192, max_num_seqs: 256, latency_noise: 0.0}
    scheduler: {gamma_s: 0.75}                           # PolicyConfig fields
    policies: [accelgen, sarathi, vllm-fcfs]
    sweep: {rate_rps: [2, 4, 6]}                         # optional

Trace paths are relative to ``<data dir>/traces`` unless absolute.

Relative sizing (optional; ``accelgen bench vllm`` measures the engine first, see
:mod:`accelgen.bench.sizing`)::

    sizing:
      tight_tbt_decode_steps: 8  # the tightest tier's TBT = 8 x the engine's decode step;
                                 # every time in tiers: and scheduler: scales by the
                                 # same factor (the written values give the proportions)
      load: 0.7                  # Poisson rate = 0.7 x the engine's throughput capacity
                                 # (then leave out arrivals.rate_rps)
    sources:
      - {trace: arxiv_summarization_lengths.csv, tier: summarize,
         max_prompt_tbts: 3}     # prompts capped so their prefill alone costs 3 x
                                 # the tightest TBT (instead of max_prompt_tokens)

Each relative field is optional, and ``max_prompt_tbts`` needs a ``sizing:`` section
(``sizing: {}`` when TBT and rate stay absolute). Such a workload generates requests
only after sizing has made every value absolute.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from accelgen.core.config import PolicyConfig, parse_policy_config
from accelgen.core.errors import ConfigError
from accelgen.core.plan import EngineLimits
from accelgen.core.policies import get_spec
from accelgen.core.tiers import TierSet, parse_tiers
from accelgen.sim.traces import Trace, read_trace


@dataclass(frozen=True, slots=True)
class Source:
    trace: str
    weight: float
    tiers: tuple[tuple[str, float], ...]  # (tier name, probability)
    max_prompt_tokens: int | None = None
    max_prompt_tbts: float | None = None  # relative cap: one prefill costs this many tight TBTs


@dataclass(frozen=True, slots=True)
class Sizing:
    """The ``sizing:`` section: values relative to the engine, resolved before a run."""

    tight_tbt_decode_steps: float | None = None
    load: float | None = None


@dataclass(frozen=True, slots=True)
class EngineSpec:
    latency_model: str
    num_kv_blocks: int | None  # None = derive from the model and GPU memory
    block_size_tokens: int = 16
    max_num_batched_tokens: int = 8192
    max_num_seqs: int = 256
    latency_noise: float = 0.0


@dataclass(frozen=True, slots=True)
class Workload:
    name: str
    seed: int
    duration_s: float | None
    num_requests: int | None
    process: str  # poisson | replay
    rate_rps: float | None
    time_scale: float
    sources: tuple[Source, ...]
    tiers: TierSet
    engine: EngineSpec
    scheduler: PolicyConfig
    policies: tuple[str, ...]
    sweep_rates: tuple[float, ...] = ()
    max_tokens: int = 2048
    sizing: Sizing | None = None  # None: every value is absolute

    def with_rate(self, rate_rps: float) -> Workload:
        return dataclasses.replace(self, rate_rps=rate_rps, process="poisson")


@dataclass(frozen=True, slots=True)
class SimRequest:
    """One request of a generated workload (lengths are the truth the simulator uses)."""

    request_id: str
    arrival_s: float
    prompt_tokens: int
    output_tokens: int
    tier: str


class _Reader:
    """Pops typed fields from a mapping, naming the field in every error."""

    def __init__(self, raw: object, path: str) -> None:
        if not isinstance(raw, Mapping):
            raise ConfigError("must be a mapping", field=path or None)
        self.raw = dict(raw)
        self.path = path

    def field(self, key: str) -> str:
        return f"{self.path}.{key}" if self.path else key

    def get(self, key: str, kind: type | tuple[type, ...], default: Any = ..., *, positive: bool = False) -> Any:
        if key not in self.raw:
            if default is ...:
                raise ConfigError("missing required field", field=self.field(key))
            return default
        value = self.raw.pop(key)
        if isinstance(value, bool) and bool not in (kind if isinstance(kind, tuple) else (kind,)):
            raise ConfigError(f"expected {_kind_name(kind)}, got {value!r}", field=self.field(key))
        if not isinstance(value, kind):
            raise ConfigError(f"expected {_kind_name(kind)}, got {value!r}", field=self.field(key))
        if positive and not (isinstance(value, int | float) and value > 0):
            raise ConfigError(f"must be positive, got {value!r}", field=self.field(key))
        return value

    def done(self) -> None:
        if self.raw:
            key = sorted(map(str, self.raw))[0]
            raise ConfigError("unknown field", field=self.field(key))


def _kind_name(kind: type | tuple[type, ...]) -> str:
    kinds = kind if isinstance(kind, tuple) else (kind,)
    return " or ".join(
        {"int": "integer", "float": "number", "str": "string"}.get(k.__name__, k.__name__) for k in kinds
    )


_NUM = (int, float)


@dataclass(frozen=True, slots=True)
class _Arrivals:
    """The ``arrivals:`` and ``sizing:`` sections, checked against each other."""

    process: str
    rate_rps: float | None
    time_scale: float
    sizing: Sizing | None


def parse_workload(raw: object) -> Workload:
    """Validate a workload mapping; ConfigError names the offending field."""
    # NOTE: the sections are read in this order, so a file with several faults names the same first one.
    top = _Reader(raw, "")
    name = top.get("name", str, "workload")
    seed = top.get("seed", int, 0)
    duration_s, num_requests = _parse_length(top)
    max_tokens = top.get("max_tokens", int, 2048, positive=True)
    arrivals = _parse_arrivals(top)
    tiers = _parse_tier_set(top)
    sources = _parse_sources(top.get("sources", list), tiers)
    _check_relative(arrivals.sizing, sources, tiers)
    engine = _parse_engine(top.get("engine", dict))
    scheduler = _parse_scheduler(top)
    policies = _parse_policies(top.get("policies", list))
    sweep_rates = _parse_sweep(top)
    top.done()
    return Workload(
        name=name,
        seed=seed,
        duration_s=duration_s,
        num_requests=num_requests,
        process=arrivals.process,
        rate_rps=arrivals.rate_rps,
        time_scale=arrivals.time_scale,
        sources=sources,
        tiers=tiers,
        engine=engine,
        scheduler=scheduler,
        policies=policies,
        sweep_rates=sweep_rates,
        max_tokens=max_tokens,
        sizing=arrivals.sizing,
    )


def _parse_length(top: _Reader) -> tuple[float | None, int | None]:
    """``duration_s`` or ``num_requests``: exactly one of them says how long the workload runs."""
    duration_s = top.get("duration_s", _NUM, None, positive=True)
    num_requests = top.get("num_requests", int, None, positive=True)
    if (duration_s is None) == (num_requests is None):
        raise ConfigError("give exactly one of duration_s and num_requests", field="duration_s")
    return None if duration_s is None else float(duration_s), num_requests


def _parse_arrivals(top: _Reader) -> _Arrivals:
    """The arrival process and its rate, absolute or relative to the engine (``sizing.load``)."""
    arr = _Reader(top.get("arrivals", dict), "arrivals")
    process = arr.get("process", str, "poisson")
    if process not in ("poisson", "replay"):
        raise ConfigError(f"must be poisson or replay, got {process!r}", field="arrivals.process")
    rate = arr.get("rate_rps", _NUM, None, positive=True)
    time_scale = float(arr.get("time_scale", _NUM, 1.0, positive=True))
    arr.done()
    sizing = _parse_sizing(top.get("sizing", dict, None))
    relative_rate = sizing is not None and sizing.load is not None
    if relative_rate and process != "poisson":
        raise ConfigError("a load relative to the engine needs poisson arrivals", field="sizing.load")
    if relative_rate and rate is not None:
        raise ConfigError("give one of arrivals.rate_rps and sizing.load", field="sizing.load")
    if process == "poisson" and rate is None and not relative_rate:
        raise ConfigError("poisson arrivals need rate_rps", field="arrivals.rate_rps")
    return _Arrivals(process, None if rate is None else float(rate), time_scale, sizing)


def _parse_tier_set(top: _Reader) -> TierSet:
    """The ``tiers:`` section in the core's tier format, its errors located under ``tiers``."""
    try:
        return parse_tiers(top.get("tiers", dict))
    except ConfigError as err:
        raise err.within(prefix="tiers") from None


def _parse_sources(raw_sources: list[Any], tiers: TierSet) -> tuple[Source, ...]:
    """The ``sources:`` list: at least one, each naming tiers of ``tiers``."""
    if not raw_sources:
        raise ConfigError("needs at least one source", field="sources")
    return tuple(_parse_source(s, f"sources[{i}]", tiers) for i, s in enumerate(raw_sources))


def _parse_engine(raw: object) -> EngineSpec:
    """The ``engine:`` section; ``num_kv_blocks: auto`` becomes None."""
    eng = _Reader(raw, "engine")
    kv = eng.get("num_kv_blocks", (int, str), "auto")
    if (isinstance(kv, str) and kv != "auto") or (isinstance(kv, int) and kv <= 0):
        raise ConfigError(f"must be a positive integer or 'auto', got {kv!r}", field="engine.num_kv_blocks")
    engine = EngineSpec(
        latency_model=eng.get("latency_model", str),
        num_kv_blocks=None if kv == "auto" else kv,
        block_size_tokens=eng.get("block_size_tokens", int, 16, positive=True),
        max_num_batched_tokens=eng.get("max_num_batched_tokens", int, 8192, positive=True),
        max_num_seqs=eng.get("max_num_seqs", int, 256, positive=True),
        latency_noise=float(eng.get("latency_noise", _NUM, 0.0)),
    )
    eng.done()
    if not 0 <= engine.latency_noise < 1:
        raise ConfigError("must be in [0, 1)", field="engine.latency_noise")
    return engine


def _parse_scheduler(top: _Reader) -> PolicyConfig:
    """The optional ``scheduler:`` section (PolicyConfig fields), its errors under ``scheduler``."""
    try:
        return parse_policy_config(top.get("scheduler", dict, None))
    except ConfigError as err:
        raise err.within(prefix="scheduler") from None


def _parse_policies(policies: list[Any]) -> tuple[str, ...]:
    """The ``policies:`` list: at least one, each a registered policy's name."""
    for i, p in enumerate(policies):
        if not isinstance(p, str):
            raise ConfigError(f"expected a policy name, got {p!r}", field=f"policies[{i}]")
        try:
            get_spec(p)
        except ConfigError as err:
            raise err.within(prefix=f"policies[{i}]") from None
    if not policies:
        raise ConfigError("name at least one policy", field="policies")
    return tuple(policies)


def _parse_sweep(top: _Reader) -> tuple[float, ...]:
    """The optional ``sweep: {rate_rps: [...]}``: the rates to rerun the workload at."""
    if "sweep" not in top.raw:
        return ()
    sw = _Reader(top.get("sweep", dict), "sweep")
    rates = sw.get("rate_rps", list)
    if not rates or not all(isinstance(r, _NUM) and not isinstance(r, bool) and r > 0 for r in rates):
        raise ConfigError("must be a non-empty list of positive rates", field="sweep.rate_rps")
    sw.done()
    return tuple(float(r) for r in rates)


def _parse_sizing(raw: object) -> Sizing | None:
    if raw is None:
        return None
    sz = _Reader(raw, "sizing")
    steps = sz.get("tight_tbt_decode_steps", _NUM, None, positive=True)
    load = sz.get("load", _NUM, None, positive=True)
    sz.done()
    return Sizing(
        tight_tbt_decode_steps=None if steps is None else float(steps),
        load=None if load is None else float(load),
    )


def _check_relative(sizing: Sizing | None, sources: Sequence[Source], tiers: TierSet) -> None:
    """Relative TBTs and prompt caps need a TBT to be relative to, and a sizing section."""
    for i, source in enumerate(sources):
        if source.max_prompt_tbts is not None and sizing is None:
            raise ConfigError(
                "needs a sizing: section (sized on the measured engine)", field=f"sources[{i}].max_prompt_tbts"
            )
    relative = [f"sources[{i}].max_prompt_tbts" for i, s in enumerate(sources) if s.max_prompt_tbts is not None]
    if sizing is not None and sizing.tight_tbt_decode_steps is not None:
        relative.insert(0, "sizing.tight_tbt_decode_steps")
    if relative and tiers.tightest_tbt_s is None:
        raise ConfigError("relative to the tightest TBT, but no tier has tbt_ms", field=relative[0])


def _parse_source(raw: object, path: str, tiers: TierSet) -> Source:
    src = _Reader(raw, path)
    trace = src.get("trace", str)
    weight = float(src.get("weight", _NUM, 1.0, positive=True))
    single = src.get("tier", str, None)
    mix = src.get("tiers", dict, None)
    max_prompt = src.get("max_prompt_tokens", int, None, positive=True)
    max_prompt_tbts = src.get("max_prompt_tbts", _NUM, None, positive=True)
    src.done()
    if max_prompt is not None and max_prompt_tbts is not None:
        raise ConfigError("give one of max_prompt_tokens and max_prompt_tbts", field=f"{path}.max_prompt_tbts")
    if (single is None) == (mix is None):
        raise ConfigError("give exactly one of tier and tiers", field=f"{path}.tier")
    pairs = [(single, 1.0)] if single is not None else list((mix or {}).items())
    total = 0.0
    for tier_name, share in pairs:
        if tier_name not in tiers:
            raise ConfigError(f"unknown tier {tier_name!r}; tiers: {[t.name for t in tiers]}", field=f"{path}.tier")
        if isinstance(share, bool) or not isinstance(share, _NUM) or share <= 0:
            raise ConfigError(f"share must be positive, got {share!r}", field=f"{path}.tiers.{tier_name}")
        total += share
    return Source(
        trace,
        weight,
        tuple((t, s / total) for t, s in pairs),
        max_prompt,
        None if max_prompt_tbts is None else float(max_prompt_tbts),
    )


def engine_limits(workload: Workload, *, num_kv_blocks: int) -> EngineLimits:
    e = workload.engine
    return EngineLimits(
        num_kv_blocks=num_kv_blocks,
        block_size_tokens=e.block_size_tokens,
        max_num_batched_tokens=e.max_num_batched_tokens,
        max_num_seqs=e.max_num_seqs,
    )


def generate_requests(
    workload: Workload, traces: Sequence[Trace], *, max_request_tokens: int | None = None
) -> list[SimRequest]:
    """The request sequence, identical for every policy (deterministic for the seed).

    Args:
        workload: The parsed workload.
        traces: One trace per source, in order.
        max_request_tokens: Clip prompt + output to this (the KV capacity).
    """
    if workload.sizing is not None:
        raise ConfigError(
            "sized relative to an engine: run it with `accelgen bench vllm`, which measures the engine first",
            field="sizing",
        )
    rng = np.random.default_rng(workload.seed)
    weights = np.array([s.weight for s in workload.sources])
    weights /= weights.sum()
    if workload.process == "replay":
        timed = next((t for t in traces if t.arrivals_s is not None), None)
        if timed is None:
            raise ConfigError("replay needs a source whose trace has arrived_at", field="arrivals.process")
        base = np.array(timed.arrivals_s) - timed.arrivals_s[0] if timed.arrivals_s else np.zeros(0)
        arrivals = base * workload.time_scale
    else:
        assert workload.rate_rps is not None
        expected = workload.num_requests or int(workload.rate_rps * (workload.duration_s or 0) * 1.2) + 16
        gaps = rng.exponential(1.0 / workload.rate_rps, size=expected)
        arrivals = np.cumsum(gaps) - gaps[0]
    if workload.duration_s is not None:
        arrivals = arrivals[arrivals < workload.duration_s]
    if workload.num_requests is not None:
        arrivals = arrivals[: workload.num_requests]
    which = rng.choice(len(traces), size=len(arrivals), p=weights)
    requests = []
    replay_row = 0
    for i, (t, k) in enumerate(zip(arrivals, which, strict=True)):
        source, trace = workload.sources[k], traces[k]
        if workload.process == "replay" and trace.arrivals_s is not None and len(workload.sources) == 1:
            row = replay_row % len(trace)  # exact replay of a single timed trace
            replay_row += 1
        else:
            row = int(rng.integers(len(trace)))
        prompt, output = trace.prompt_tokens[row], trace.output_tokens[row]
        if source.max_prompt_tokens is not None:
            prompt = min(prompt, source.max_prompt_tokens)
        if max_request_tokens is not None and prompt + output > max_request_tokens:
            prompt = max(max_request_tokens - output, 1)
            output = min(output, max_request_tokens - prompt)
        names = [n for n, _ in source.tiers]
        tier = names[0] if len(names) == 1 else names[int(rng.choice(len(names), p=[p for _, p in source.tiers]))]
        requests.append(SimRequest(f"r{i}", float(t), prompt, output, tier))
    return requests


def capped_outputs(workload: Workload, requests: Sequence[SimRequest]) -> list[SimRequest]:
    """``requests`` as a real engine runs them: a request asks for the workload's
    ``max_tokens``, so its output is capped there (the simulator lets outputs exceed it)."""
    cap = workload.max_tokens
    return [dataclasses.replace(r, output_tokens=max(1, min(r.output_tokens, cap))) for r in requests]


def load_source_traces(workload: Workload, data_dir: Path) -> list[Trace]:
    traces = []
    for i, source in enumerate(workload.sources):
        path = Path(source.trace)
        if not path.is_absolute():
            path = data_dir / "traces" / path
        try:
            traces.append(read_trace(path))
        except ConfigError as err:
            raise ConfigError(err.message, field=f"sources[{i}].trace", source=err.source) from None
    return traces
