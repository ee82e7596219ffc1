"""An upper bound on capacity: no scheduler sustains a higher Poisson rate on this engine.

Capacity is the highest arrival rate at which every tier meets its attainment target.
:func:`capacity_bound` bounds it from above by a relaxation of the engine whose every
step is a necessary condition of any schedule, so the bound is optimistic by
construction; it charges what the old analytic bound (``oracle.goodput_upper_bound``,
full batches whatever the TBT) lets go free: the iterations that TBT targets, the KV
cache and ``max_num_seqs`` force, each costing its fixed part.

The proof, for any schedule on one engine of latency model ``L`` and limits
``max_num_batched_tokens = M``, ``max_num_seqs``, ``C`` KV tokens:

1. Split ``L``. For every shape of ``n`` tokens (1 ≤ n ≤ M),
   ``L ≥ g(n) + a·pairs + b·kv + d·decodes`` with ``g`` the cost of ``n`` tokens and
   no attention (:func:`decompose`, exact for the profile and fitted models). For
   each edge of the lower convex hull of ``g`` on ``[1, M]`` with intercept α ≥ 0,
   ``g(n) ≥ α + β·n``. Summed over the iterations: busy time
   ``B ≥ α·I + β·N + A``, with ``I`` iterations, ``N`` tokens, and ``A`` the
   attention, which chunking does not change: a prompt of ``P`` costs ``a·P²/2``
   however it is cut (Σ chunk·(context + chunk/2) = P²/2), the decode after ``k``
   outputs reads ``P + k − 1`` KV tokens.
2. Tokens on time. A token's gap (its TTFT, for the first) is at least the duration
   of the iteration that emits it: the request's previous token ended before that
   iteration began. So an iteration holding an on-time decode of a request with
   target τ lasts ≤ τ, i.e. ``α + Σ over its decodes of (β + d + b·context) ≤ τ``;
   its decodes' KV fit in ``C`` and number at most ``max_num_seqs``. Give each decode
   its share of each such resource (demand ÷ the cap of *its own* tier: the caps grow
   with τ and an iteration's tightest on-time decode sets its cap, so an iteration's
   shares add up to ≤ 1); summed over decodes, the shares bound ``I`` from below. A
   request meeting its SLO has at most max(1, ⌈1 % of its outputs⌉) late tokens: the
   bound lets its largest-context decodes be those (TBT caps them not).
3. Choose the cheapest. Attainment asks only that a share ``a_t`` of tier ``t``
   meet its SLO; the others may be dropped unserved (cost 0). So per arriving request
   the engine needs at least ``s`` = Σ over tiers of the cost of the cheapest ``a_t``
   share of its requests (costs from 1 and 2, which are sums over requests), and
   requests no schedule can serve at all (a lone prefill past the TTFT, a lone decode
   past the TBT, a lone run past the deadline) are never among them.
4. Long run. Over a horizon ``H`` with ``λH`` arrivals the engine is busy at most
   ``H``: ``λ·s ≤ 1``. Each pair (busy-time line, iteration resource) gives its own
   ``s``; all are lower bounds, so the largest gives the bound ``1 / s``.

Durations drawn with log-normal noise (σ) average ≥ the model (E[e^X] ≥ 1, drawn
independently of the plan), so step 4 holds; the per-iteration caps of steps 2 and 3
allow the noise a factor e^{6σ} (an iteration runs faster than that once in 10⁹).

What it does not see (so a scheduler may stay well below it): queueing from Poisson
bursts, the prefill chunks that TBT limits while requests decode, KV held between a
request's own iterations, and a finite run's drain. It is a long-run rate bound: a
finite run with a long drain may pass a little above it by sampling.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import numpy as np

from accelgen.core.errors import ConfigError
from accelgen.core.latency import (
    REGIONS,
    BatchShape,
    FittedLatencyModel,
    LatencyModel,
    ProfileLatencyModel,
    QuantileLatencyModel,
)
from accelgen.core.plan import EngineLimits
from accelgen.core.policies.oracle import goodput_upper_bound
from accelgen.core.slo import late_tokens_allowed
from accelgen.core.tiers import TierSet
from accelgen.sim.profiles import ScaledLatencyModel
from accelgen.sim.workload import SimRequest, Workload

DESCRIPTION = (
    "upper bound on capacity: long-run engine time per request at TBT-feasible iterations "
    "(iterations forced by TBT, KV and max_num_seqs, each with its fixed cost), "
    "for the cheapest attainment share of each tier"
)
#: Noise allowance on per-iteration caps: factor e^(NOISE_SIGMAS·σ).
NOISE_SIGMAS = 6.0


@dataclass(frozen=True, slots=True)
class Costs:
    """A latency model split as the proof needs it: ``L ≥ g(n) + a·pairs + b·kv + d·decodes``.

    Args:
        token_s: ``g``: an iteration of ``n`` tokens with no attention.
        pair_s: ``a``, per prefill attention pair.
        kv_token_s: ``b``, per KV token a decode reads.
        decode_s: ``d``, extra per decode.
    """

    token_s: Callable[[int], float]
    pair_s: float
    kv_token_s: float
    decode_s: float

    def scaled(self, factor: float, offset_s: float = 0.0) -> Costs:
        inner = self.token_s
        return Costs(
            lambda n: inner(n) * factor + offset_s,
            self.pair_s * factor,
            self.kv_token_s * factor,
            self.decode_s * factor,
        )


def decompose(model: LatencyModel) -> Costs:
    """The split of ``model`` (exact for profile and fitted models); ConfigError for others."""
    if isinstance(model, ProfileLatencyModel):
        return Costs(
            lambda n: model.predict_s(BatchShape(num_prefill_tokens=n)),
            model.prefill_pair_s,
            model.decode_kv_token_s,
            0.0,
        )
    if isinstance(model, FittedLatencyModel):
        c = model.coefficients
        # NOTE: context pairs, cached-KV reads and per-chunk costs (c5..c7) are ≥ 0; left out.
        return Costs(lambda n: c[0] + c[1] * n, c[3], c[4], c[2])
    if isinstance(model, QuantileLatencyModel):
        least = min(model.offsets_s.get(r, model.default_offset_s) for r in REGIONS)
        return decompose(model.base).scaled(model.scale, least)
    if isinstance(model, ScaledLatencyModel):
        return decompose(model.inner).scaled(model.factor)
    raise ConfigError(f"no capacity bound for a {type(model).__name__} latency model", field="engine.latency_model")


def token_lines(costs: Costs, max_tokens: int) -> list[tuple[float, float]]:
    """Lines ``(α ≥ 0, β ≥ 0)`` with ``g(n) ≥ α + β·n`` for every ``1 ≤ n ≤ max_tokens``.

    Edges of the lower convex hull of ``g`` (those active at n = 1, 2, 4, …, and at
    ``max_tokens``), and the pure per-token share ``(0, min g(n)/n)``.
    """
    ns = np.arange(1, max_tokens + 1)
    g = np.array([costs.token_s(int(n)) for n in ns])
    hull: list[int] = []
    for i in range(len(ns)):
        while len(hull) >= 2:
            i0, i1 = hull[-2], hull[-1]
            # drop i1 if it lies on or above the chord i0 → i
            if (g[i1] - g[i0]) * (ns[i] - ns[i0]) >= (g[i] - g[i0]) * (ns[i1] - ns[i0]):
                hull.pop()
            else:
                break
        hull.append(i)
    lines = {(0.0, float((g / ns).min()))}
    wanted = sorted({min(2**k, max_tokens) for k in range(max_tokens.bit_length() + 1)})
    for j in range(len(hull) - 1):
        i0, i1 = hull[j], hull[j + 1]
        if any(ns[i0] <= w <= ns[i1] for w in wanted):
            beta = float((g[i1] - g[i0]) / (ns[i1] - ns[i0]))
            alpha = float(g[i0] - beta * ns[i0])
            if alpha >= 0 and beta >= 0:  # both multiply lower bounds (on I and N)
                lines.add((alpha, beta))
    if len(hull) == 1:
        lines.add((float(g[0]), 0.0))
    return sorted(lines)


@dataclass(frozen=True, slots=True)
class BoundResult:
    """The capacity bound of a workload on one engine.

    Args:
        rate_rps: No scheduler sustains a higher Poisson rate with every tier at its
            target (0.0 when some tier's target asks for requests no schedule can serve).
        per_request_s: Engine time per arriving request that the bound charges (1 / rate).
        binding: Which busy-time line and iteration resource gave the bound.
        loose_rate_rps: The old analytic bound made a rate the same way (step 3 over
            ``goodput_upper_bound``'s full-batch busy time per request): where the
            engine would be busy all the time at full batches, whatever the TBT.
        unservable: Per tier, the share of its requests no schedule can serve.
        description: What the bound is, in one line.
    """

    rate_rps: float
    per_request_s: float
    binding: str
    loose_rate_rps: float
    unservable: dict[str, float] = field(default_factory=dict)
    description: str = DESCRIPTION


@dataclass(frozen=True, slots=True)
class _Sample:
    """The requests as arrays, with their tiers' targets (noise allowance applied)."""

    prompt: np.ndarray
    output: np.ndarray
    tier: np.ndarray  # index into names
    names: tuple[str, ...]
    targets: np.ndarray
    ttft_s: np.ndarray  # per request; inf when offline
    tbt_s: np.ndarray  # per request; inf when offline
    deadline_s: np.ndarray  # per request; inf when online

    @classmethod
    def of(cls, requests: Sequence[SimRequest], tiers: TierSet, slack: float, attainment: float | None) -> _Sample:
        names = tuple(t.name for t in tiers)
        index = np.array([names.index(tiers.get(r.tier).name) for r in requests])
        per_tier = list(tiers)

        def target(attr: str) -> np.ndarray:
            values = [getattr(t, attr) for t in per_tier]
            per_request: np.ndarray = np.array([math.inf if v is None else v * slack for v in values])[index]
            return per_request

        return cls(
            prompt=np.array([r.prompt_tokens for r in requests], dtype=float),
            output=np.array([r.output_tokens for r in requests], dtype=float),
            tier=index,
            names=names,
            targets=np.array([t.attainment_target if attainment is None else attainment for t in per_tier]),
            ttft_s=target("ttft_slo_s"),
            tbt_s=target("tbt_slo_s"),
            deadline_s=target("deadline_s"),
        )


def _series(start: np.ndarray, count: np.ndarray) -> np.ndarray:
    """Σ_{k<count} (start + k): the KV tokens ``count`` decodes from context ``start`` read."""
    total: np.ndarray = count * start + count * (count - 1) / 2
    return total


def _demands(s: _Sample, costs: Costs, limits: EngineLimits, lines: list[tuple[float, float]]) -> dict[str, np.ndarray]:
    """Per request, its share of the iterations each resource forces (step 2 of the proof)."""
    decodes = np.maximum(s.output - 1, 0)
    late = np.minimum(np.array([late_tokens_allowed(int(o)) for o in s.output]), decodes)
    on_time = np.where(np.isfinite(s.tbt_s), decodes - late, 0)
    kv_all = _series(s.prompt, decodes)
    kv_on_time = _series(s.prompt, on_time)
    out = {
        "kv": kv_all / (limits.num_kv_blocks * limits.block_size_tokens),
        "seqs": decodes / limits.max_num_seqs,
        "tokens": (s.prompt + decodes) / limits.max_num_batched_tokens,
    }
    for alpha, beta in lines:
        room = s.tbt_s - alpha
        need = (beta + costs.decode_s) * on_time + costs.kv_token_s * kv_on_time
        with np.errstate(divide="ignore", invalid="ignore"):
            out[f"tbt(α={alpha * 1e3:.2f} ms)"] = np.where(on_time > 0, np.where(room > 0, need / room, np.inf), 0.0)
    # Every iteration holds each resource's shares to ≤ 1, so any weighted mean of two
    # resources' shares too: mixes count iterations that no single resource forces.
    pure = list(out)
    for i, first in enumerate(pure):
        for second in pure[i + 1 :]:
            for w in (0.25, 0.5, 0.75):
                out[f"{w:g}·{first} + {1 - w:g}·{second}"] = w * out[first] + (1 - w) * out[second]
    return out


def _servable(s: _Sample, costs: Costs, limits: EngineLimits, lines: list[tuple[float, float]]) -> np.ndarray:
    """Requests some schedule could serve on time on an otherwise idle engine."""
    prefill_iters = np.ceil(s.prompt / limits.max_num_batched_tokens)
    pairs = s.prompt * s.prompt / 2
    decodes = np.maximum(s.output - 1, 0)
    attention = costs.pair_s * pairs + costs.kv_token_s * _series(s.prompt, decodes) + costs.decode_s * decodes
    prefill = np.max([a * prefill_iters + b * s.prompt for a, b in lines], axis=0) + costs.pair_s * pairs
    lone_decode = max(a + b for a, b in lines) + costs.decode_s + costs.kv_token_s * s.prompt
    late = np.array([late_tokens_allowed(int(o)) for o in s.output])
    run = np.max([a * (prefill_iters + decodes) + b * (s.prompt + decodes) for a, b in lines], axis=0) + attention
    online_ok = (prefill <= s.ttft_s) & ((decodes <= late) | (lone_decode <= s.tbt_s))
    return np.where(np.isfinite(s.deadline_s), run <= s.deadline_s, online_ok)


def _cheapest(cost: np.ndarray, s: _Sample, ok: np.ndarray) -> float:
    """Σ over tiers of the cheapest target share of its requests' costs; inf if too few are servable."""
    total = 0.0
    for t in range(len(s.names)):
        mine = cost[(s.tier == t) & ok]
        need = math.ceil(s.targets[t] * np.count_nonzero(s.tier == t) - 1e-9)
        if need > len(mine):
            return math.inf
        total += float(np.sort(mine)[:need].sum())
    return total


def capacity_bound(
    workload: Workload,
    model: LatencyModel,
    limits: EngineLimits,
    *,
    requests: Sequence[SimRequest],
    attainment: float | None = None,
) -> BoundResult:
    """The highest Poisson rate any scheduler could sustain with every tier at its target.

    Args:
        workload: Its tiers (targets) and engine noise.
        model: The engine's true latency model.
        limits: Its capacities.
        requests: A sample of the workload's requests: their lengths and tiers stand in
            for the workload's distribution (arrival times are not used).
        attainment: One target for every tier instead of each tier's own.
    """
    if not requests:
        raise ConfigError("the workload generates no requests", field="duration_s")
    costs = decompose(model)
    lines = token_lines(costs, limits.max_num_batched_tokens)
    sample = _Sample.of(requests, workload.tiers, math.exp(NOISE_SIGMAS * workload.engine.latency_noise), attainment)
    ok = _servable(sample, costs, limits, lines)
    decodes = np.maximum(sample.output - 1, 0)
    tokens = sample.prompt + decodes
    attention = (
        costs.pair_s * sample.prompt**2 / 2
        + costs.kv_token_s * _series(sample.prompt, decodes)
        + costs.decode_s * decodes
    )
    best, binding = 0.0, "no request"
    for name, iterations in _demands(sample, costs, limits, lines).items():
        for alpha, beta in lines:
            with np.errstate(invalid="ignore"):  # 0·inf: an unservable request, masked out
                cost = np.where(ok, alpha * iterations + beta * tokens + attention, np.inf)
            per_request = _cheapest(cost, sample, ok) / len(requests)
            if per_request > best:
                best, binding = (
                    per_request,
                    f"{name}, busy ≥ {alpha * 1e3:.2f} ms/iteration + {beta * 1e6:.2f} µs/token",
                )
    unservable = {
        n: float(np.mean(~ok[sample.tier == t])) for t, n in enumerate(sample.names) if (sample.tier == t).any()
    }
    loose_s = _cheapest(_loose_costs(workload, requests, model, limits), sample, np.ones(len(requests), bool))
    loose = len(requests) / loose_s if loose_s > 0 else math.inf
    if math.isinf(best):
        return BoundResult(0.0, math.inf, "a tier's target needs requests no schedule can serve", loose, unservable)
    return BoundResult(1.0 / best if best > 0 else math.inf, best, binding, loose, unservable)


def _loose_costs(
    workload: Workload, requests: Sequence[SimRequest], model: LatencyModel, limits: EngineLimits
) -> np.ndarray:
    """Per request, the old analytic bound's busy time (full batches); inf where it finds it infeasible."""
    out = []
    for r in requests:
        tier = workload.tiers.get(r.tier)
        one = goodput_upper_bound(
            [(r.arrival_s, r.prompt_tokens, r.output_tokens, tier.ttft_slo_s, tier.tbt_slo_s)], model, limits
        )
        out.append(one.busy_s if one.feasible_requests else math.inf)
    return np.array(out)
