"""Workloads sized relative to the engine they run on: a workload's ``sizing:`` section.

Absolute SLOs, prompt caps and rates mean different things on different machines: on a
CPU several times faster a workload tuned elsewhere has no contention at all. A relative
workload states them in units of the engine, which :mod:`accelgen.bench.probe` measures
(a latency model fitted on the engine's own steps); :func:`size_workload` turns them
into absolute values, from predictions of that model only:

=================================  ==================================================
``sizing.tight_tbt_decode_steps``  the tightest tier's TBT = this x the engine's decode
                                   step (:data:`REFERENCE_DECODES` decodes at
                                   :data:`REFERENCE_CONTEXT_TOKENS` tokens of context).
                                   Every time in ``tiers:`` (TTFT, TBT, deadline) and in
                                   ``scheduler:`` (``gamma_s``, ``safety_margin_s``,
                                   written or default) scales by the same factor: the
                                   file's values give the proportions.
``sources[i].max_prompt_tbts``     the source's prompts are capped where their prefill,
                                   run alone as the engine runs it, costs this x the
                                   tightest TBT: one unchunked step up to
                                   ``max_num_batched_tokens``; past it, steps of that
                                   many tokens, each after the context of the ones
                                   before (:func:`chunked_prefill_s`). A faster
                                   engine's documents are longer in tokens, never
                                   refused for outgrowing one step.
``sizing.load``                    Poisson rate = this x the engine's throughput
                                   capacity (below).
=================================  ==================================================

Throughput capacity [ours]: :data:`CAPACITY_REQUESTS` requests of the (sized) workload
all arrive at once, and the simulator (:func:`accelgen.sim.engine.simulate`) runs them
under ``vllm-fcfs`` on the measured model; the capacity is their completion rate between
the 10th and the 90th percentile completion: the steady state of a full engine, without
the ramp-up (nothing completes yet) and the drain (fewer and fewer running). It ignores
SLOs: it is what the engine can do, not what any policy attains.

A relative size that cannot be met is a :class:`~accelgen.core.errors.ConfigError`
naming the field and the measured value (exit code 2 on the command line). Pure: no I/O.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from accelgen.core.errors import ConfigError
from accelgen.core.latency import BatchShape, LatencyModel, max_prefill_tokens_within
from accelgen.core.plan import EngineLimits
from accelgen.core.policies import make_policy
from accelgen.core.tiers import SLOTier, TierSet
from accelgen.sim.engine import simulate
from accelgen.sim.traces import Trace
from accelgen.sim.workload import Source, Workload, capped_outputs, generate_requests

#: The decode step a TBT is counted in: a few requests at a short context.
REFERENCE_DECODES = 4
REFERENCE_CONTEXT_TOKENS = 128
#: The longest prompt a source is sized to when the engine's length is not given.
MAX_PROMPT_TOKENS = 1 << 17
#: Requests of the workload the throughput capacity is simulated on.
CAPACITY_REQUESTS = 400


@dataclass(frozen=True, slots=True)
class EngineMeasurement:
    """What the probe measured, as predictions of the engine's fitted model.

    Args:
        decode_step_s: One step of :data:`REFERENCE_DECODES` decodes at
            :data:`REFERENCE_CONTEXT_TOKENS` tokens of context.
        decode_request_s: What one more such decode adds to that step.
        prefill_token_s: Seconds per prompt token of an unchunked prefill (from one
            token to ``max_num_batched_tokens``).
        prefill_context_token_s: What one token of context before a chunk of
            ``max_num_batched_tokens`` adds to that chunk's step.
        full_prefill_s: One unchunked prefill of ``max_num_batched_tokens`` tokens.
        max_num_batched_tokens: The engine's largest step.
    """

    decode_step_s: float
    decode_request_s: float
    prefill_token_s: float
    prefill_context_token_s: float
    full_prefill_s: float
    max_num_batched_tokens: int

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def decode_step_s(model: LatencyModel, num_decodes: int, *, context_tokens: int) -> float:
    """One step of ``num_decodes`` decodes, each after ``context_tokens`` tokens."""
    shape = BatchShape()
    for _ in range(num_decodes):
        shape = shape.plus_decode(context_tokens=context_tokens)
    return model.predict_s(shape)


def prefill_s(model: LatencyModel, num_tokens: int, *, context_tokens: int = 0) -> float:
    """One step that prefills ``num_tokens`` after ``context_tokens``, and nothing else."""
    return model.predict_s(BatchShape().plus_prefill(num_tokens, context_tokens=context_tokens))


def chunked_prefill_s(model: LatencyModel, num_tokens: int, *, cap: int) -> float:
    """A prompt of ``num_tokens`` prefilled alone in steps of at most ``cap`` tokens, each
    after the context of the ones before it (as vLLM's chunked prefill runs it)."""
    total, done = 0.0, 0
    while done < num_tokens:
        chunk = min(cap, num_tokens - done)
        total += prefill_s(model, chunk, context_tokens=done)
        done += chunk
    return total


def max_prompt_tokens_within(model: LatencyModel, budget_s: float, *, cap: int, limit: int) -> int:
    """The longest prompt, at most ``limit`` tokens, whose :func:`chunked_prefill_s` fits
    ``budget_s`` (0 when not one token does)."""
    done, spent = 0, 0.0
    while done < limit:
        step = min(cap, limit - done)
        step_s = prefill_s(model, step, context_tokens=done)
        if spent + step_s > budget_s:
            rest = max_prefill_tokens_within(
                model, budget_s - spent, base=BatchShape(), context_tokens=done, cap_tokens=step
            )
            return done + rest
        spent += step_s
        done += step
    return limit


def measure_engine(model: LatencyModel, *, max_num_batched_tokens: int) -> EngineMeasurement:
    """The :class:`EngineMeasurement` of ``model`` (predictions only)."""
    cap = max_num_batched_tokens
    step = decode_step_s(model, REFERENCE_DECODES, context_tokens=REFERENCE_CONTEXT_TOKENS)
    full = prefill_s(model, cap)
    return EngineMeasurement(
        decode_step_s=step,
        decode_request_s=decode_step_s(model, REFERENCE_DECODES + 1, context_tokens=REFERENCE_CONTEXT_TOKENS) - step,
        prefill_token_s=(full - prefill_s(model, 1)) / max(cap - 1, 1),
        prefill_context_token_s=(prefill_s(model, cap, context_tokens=cap) - full) / cap,
        full_prefill_s=full,
        max_num_batched_tokens=cap,
    )


def size_workload(
    workload: Workload,
    model: LatencyModel,
    limits: EngineLimits,
    *,
    traces: Sequence[Trace],
    max_request_tokens: int | None = None,
) -> tuple[Workload, dict[str, Any]]:
    """``workload`` with every relative value made absolute for the engine ``model`` times.

    Args:
        workload: A parsed workload; one without ``sizing:`` is returned as it is.
        model: The engine's latency model (the probe's fit).
        limits: The engine's limits (the capacity simulation runs within them).
        traces: One trace per source, in order (for the capacity simulation).
        max_request_tokens: Prompt + output clip, as for the run's own requests.

    Returns:
        The absolute workload (``sizing`` None), and every derived value with the
        measured numbers it came from (the ``sizing`` entry of a report).
    """
    sizing = workload.sizing
    if sizing is None:
        return workload, {}
    measured = measure_engine(model, max_num_batched_tokens=limits.max_num_batched_tokens)
    factor = _time_factor(workload, measured)
    longest = MAX_PROMPT_TOKENS if max_request_tokens is None else max_request_tokens - workload.max_tokens
    sized = _scaled_workload(workload, model, factor, cap=limits.max_num_batched_tokens, longest=longest)
    derived = _derived(workload, sized, model, measured, factor, cap=limits.max_num_batched_tokens)
    if sizing.load is not None:
        capacity = capacity_rps(sized, model, limits, traces=traces, max_request_tokens=max_request_tokens)
        rate = _rate(sizing.load, capacity, workload.duration_s)
        sized = sized.with_rate(rate)
        derived.update(capacity_rps=capacity, capacity_requests=CAPACITY_REQUESTS, rate_rps=rate)
    return sized, derived


def _scaled_workload(workload: Workload, model: LatencyModel, factor: float, *, cap: int, longest: int) -> Workload:
    """``workload`` with its times scaled by ``factor`` and its prompt caps in tokens (rate untouched)."""
    tiers = _scaled_tiers(workload.tiers, factor)
    scheduler = workload.scheduler.replace(
        gamma_s=workload.scheduler.gamma_s * factor, safety_margin_s=workload.scheduler.safety_margin_s * factor
    )
    tight_tbt_s = tiers.tightest_tbt_s
    sources = tuple(
        _sized_source(source, f"sources[{i}]", model, tight_tbt_s, cap=cap, longest=longest)
        for i, source in enumerate(workload.sources)
    )
    return dataclasses.replace(workload, tiers=tiers, scheduler=scheduler, sources=sources, sizing=None)


def _derived(
    workload: Workload, sized: Workload, model: LatencyModel, measured: EngineMeasurement, factor: float, *, cap: int
) -> dict[str, Any]:
    """The report's ``sizing`` entry: the relative values, what was measured and what they became."""
    assert workload.sizing is not None
    return {
        "relative": dataclasses.asdict(workload.sizing)
        | {
            f"sources[{i}].max_prompt_tbts": s.max_prompt_tbts
            for i, s in enumerate(workload.sources)
            if s.max_prompt_tbts
        },
        "measured": measured.to_dict(),
        "reference_decode": {"num_decodes": REFERENCE_DECODES, "context_tokens": REFERENCE_CONTEXT_TOKENS},
        "time_factor": factor,
        "tight_tbt_s": sized.tiers.tightest_tbt_s,
        "tiers": {
            t.name: {"ttft_s": t.ttft_slo_s, "tbt_s": t.tbt_slo_s, "deadline_s": t.deadline_s} for t in sized.tiers
        },
        "scheduler": {"gamma_s": sized.scheduler.gamma_s, "safety_margin_s": sized.scheduler.safety_margin_s},
        "sources": [
            {
                "trace": s.trace,
                "max_prompt_tokens": s.max_prompt_tokens,
                "prefill_s": None
                if s.max_prompt_tokens is None
                else chunked_prefill_s(model, s.max_prompt_tokens, cap=cap),
            }
            for s in sized.sources
        ],
        "rate_rps": sized.rate_rps,
    }


def _time_factor(workload: Workload, measured: EngineMeasurement) -> float:
    """What every time of the file is multiplied by (1 when TBTs stay absolute)."""
    steps = workload.sizing.tight_tbt_decode_steps if workload.sizing else None
    written = workload.tiers.tightest_tbt_s
    if steps is None or written is None:
        return 1.0
    tbt_s = steps * measured.decode_step_s
    if steps < 1:
        raise ConfigError(
            f"{steps:g} gives a TBT of {tbt_s * 1e3:.1f} ms, below one decode step "
            f"({measured.decode_step_s * 1e3:.1f} ms measured)",
            field="sizing.tight_tbt_decode_steps",
        )
    return tbt_s / written


def _scaled_tiers(tiers: TierSet, factor: float) -> TierSet:
    def scaled(value: float | None) -> float | None:
        return None if value is None else value * factor

    return TierSet(
        tiers=tuple(
            SLOTier(
                name=t.name,
                ttft_slo_s=scaled(t.ttft_slo_s),
                tbt_slo_s=scaled(t.tbt_slo_s),
                deadline_s=scaled(t.deadline_s),
                priority=t.priority,
                attainment_target=t.attainment_target,
            )
            for t in tiers
        ),
        default=tiers.default,
    )


def _sized_source(
    source: Source, path: str, model: LatencyModel, tight_tbt_s: float | None, *, cap: int, longest: int
) -> Source:
    """``source`` with its relative prompt cap made a token count."""
    tbts = source.max_prompt_tbts
    if tbts is None:
        return source
    assert tight_tbt_s is not None  # parse_workload checked that a tier has a TBT
    field = f"{path}.max_prompt_tbts"
    budget_s = tbts * tight_tbt_s
    one_s = prefill_s(model, 1)
    if budget_s < one_s:
        raise ConfigError(
            f"{tbts:g} gives a prefill of {budget_s * 1e3:.1f} ms, below a one-token prefill "
            f"({one_s * 1e3:.1f} ms measured)",
            field=field,
        )
    tokens = max_prompt_tokens_within(model, budget_s, cap=cap, limit=longest + 1)
    if tokens > longest:
        raise ConfigError(
            f"{tbts:g} gives a prefill of {budget_s * 1e3:.1f} ms, more than a prompt of the longest "
            f"a request may be ({longest} tokens, the engine's length less max_tokens: "
            f"{chunked_prefill_s(model, longest, cap=cap) * 1e3:.1f} ms measured)",
            field=field,
        )
    return dataclasses.replace(source, max_prompt_tokens=tokens, max_prompt_tbts=None)


def capacity_rps(
    workload: Workload,
    model: LatencyModel,
    limits: EngineLimits,
    *,
    traces: Sequence[Trace],
    max_request_tokens: int | None = None,
) -> float:
    """The engine's throughput capacity for ``workload``'s requests (module docstring)."""
    burst = dataclasses.replace(
        workload, duration_s=None, num_requests=CAPACITY_REQUESTS, process="poisson", rate_rps=1.0, sizing=None
    )
    generated = generate_requests(burst, traces, max_request_tokens=max_request_tokens)
    requests = [dataclasses.replace(r, arrival_s=0.0) for r in capped_outputs(burst, generated)]
    policy = make_policy("vllm-fcfs", tiers=workload.tiers, latency_model=model, limits=limits)
    recorder, _ = simulate(
        policy, requests, tiers=workload.tiers, model=model, max_tokens=workload.max_tokens, drain_s=24 * 3600.0
    )
    ends = sorted(r.finish_s for r in recorder.records.values() if r.finish_s is not None)
    lo, hi = len(requests) // 10, len(requests) - len(requests) // 10 - 1
    if len(ends) <= hi or ends[hi] <= ends[lo]:
        return len(ends) / ends[-1] if ends and ends[-1] > 0 else 0.0
    return (hi - lo) / (ends[hi] - ends[lo])


def _rate(load: float, capacity: float, duration_s: float | None) -> float:
    if capacity <= 0 or not math.isfinite(capacity):
        raise ConfigError(
            f"the engine completes no request in the simulator (capacity {capacity:g})", field="sizing.load"
        )
    rate = load * capacity
    if duration_s is not None and rate * duration_s < 1:
        raise ConfigError(
            f"{load:g} gives {rate:.3g} req/s ({capacity:.3g} req/s capacity measured): "
            f"not one arrival expected in {duration_s:g} s",
            field="sizing.load",
        )
    return rate


def describe(derived: dict[str, Any]) -> list[str]:
    """The derived values as lines for people (``derived`` from :func:`size_workload`)."""
    m = derived["measured"]
    ref = derived["reference_decode"]
    lines = [
        f"engine: decode step {m['decode_step_s'] * 1e3:.2f} ms ({ref['num_decodes']} decodes at "
        f"{ref['context_tokens']} tokens; +{m['decode_request_s'] * 1e3:.3f} ms per decode), "
        f"prefill {m['prefill_token_s'] * 1e3:.3f} ms/token (+{m['prefill_context_token_s'] * 1e6:.3f} us "
        f"per token of context), one unchunked prefill of {m['max_num_batched_tokens']} tokens "
        f"{m['full_prefill_s'] * 1e3:.0f} ms",
        f"sized: times x{derived['time_factor']:.4g} (tightest TBT {_ms(derived['tight_tbt_s'])})",
    ]
    for name, t in derived["tiers"].items():
        if t["deadline_s"] is not None:
            lines.append(f"  tier {name}: deadline {t['deadline_s']:.3g} s")
        else:
            lines.append(f"  tier {name}: TTFT {_ms(t['ttft_s'])}, TBT {_ms(t['tbt_s'])}")
    s = derived["scheduler"]
    lines.append(f"  scheduler: gamma {_ms(s['gamma_s'])}, safety margin {_ms(s['safety_margin_s'])}")
    for i, src in enumerate(derived["sources"]):
        if src["max_prompt_tokens"] is not None:
            lines.append(
                f"  sources[{i}] {src['trace']}: prompts <= {src['max_prompt_tokens']} tokens "
                f"(prefill {_ms(src['prefill_s'])})"
            )
    if "capacity_rps" in derived:
        lines.append(
            f"  rate {derived['rate_rps']:.3g} req/s = {derived['relative']['load']:g} x capacity "
            f"{derived['capacity_rps']:.3g} req/s (vllm-fcfs, {derived['capacity_requests']} requests at once)"
        )
    return lines


def _ms(value_s: float | None) -> str:
    return "-" if value_s is None else f"{value_s * 1e3:.1f} ms"
