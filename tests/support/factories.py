"""Shared factories for tests (as vLLM's tests/v1/core/utils.py): tiers, requests, planners.

The default latency model is linear with round numbers so expected budgets can be
worked out by hand: an iteration costs 10 ms + 0.1 ms per token (attention free).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Iterable, Mapping

from accelgen.core.config import PolicyConfig
from accelgen.core.latency import FittedLatencyModel
from accelgen.core.plan import EngineLimits, IterationPlan
from accelgen.core.policies import make_policy
from accelgen.core.policy import Policy
from accelgen.core.request import Request
from accelgen.core.tiers import SLOTier, TierSet, parse_tiers
from accelgen.wire import EngineStatsFile, EngineStatsRecorder

INTERCEPT_S = 0.010
PER_TOKEN_S = 0.0001


def linear_model(intercept_s: float = INTERCEPT_S, per_token_s: float = PER_TOKEN_S) -> FittedLatencyModel:
    return FittedLatencyModel(coefficients=(intercept_s, per_token_s, 0.0, 0.0, 0.0), name="linear-test")


def make_tiers(*, attainment_target: float = 0.9) -> TierSet:
    """tight (the default): TTFT 0.5 s / TBT 50 ms; loose: 5 s / 500 ms; batch: 60 s deadline.

    Priorities 0, 1, 2 in that order; every tier has ``attainment_target``.
    """
    tiers = [
        {"name": "tight", "ttft_ms": 500, "tbt_ms": 50, "priority": 0},
        {"name": "loose", "ttft_ms": 5000, "tbt_ms": 500, "priority": 1},
        {"name": "batch", "deadline_s": 60, "priority": 2},
    ]
    return parse_tiers(
        {"default_tier": "tight", "tiers": [{**t, "attainment_target": attainment_target} for t in tiers]}
    )


def make_request(
    request_id: str,
    *,
    tier: SLOTier,
    prompt: int = 100,
    arrival_s: float = 0.0,
    max_tokens: int = 64,
    expected_output: int | None = None,
) -> Request:
    return Request(
        request_id=request_id,
        arrival_s=arrival_s,
        num_prompt_tokens=prompt,
        max_tokens=max_tokens,
        tier=tier,
        expected_output_tokens=expected_output,
    )


def make_requests(specs: Iterable[tuple[str, int, float]], tiers: TierSet | None = None) -> list[Request]:
    """Requests from (tier name, prompt tokens, arrival s) triples, ids r0, r1, ..."""
    tiers = tiers or make_tiers()
    return [make_request(f"r{i}", tier=tiers.get(t), prompt=p, arrival_s=a) for i, (t, p, a) in enumerate(specs)]


def make_limits(
    *, blocks: int = 1000, block_size: int = 16, max_batched: int = 4096, max_seqs: int = 256
) -> EngineLimits:
    return EngineLimits(
        num_kv_blocks=blocks, block_size_tokens=block_size, max_num_batched_tokens=max_batched, max_num_seqs=max_seqs
    )


def make_planner(
    name: str = "accelgen",
    *,
    tiers: TierSet | None = None,
    limits: EngineLimits | None = None,
    config: PolicyConfig | None = None,
    model: FittedLatencyModel | None = None,
) -> Policy:
    return make_policy(
        name,
        tiers=tiers or make_tiers(),
        latency_model=model or linear_model(),
        limits=limits or make_limits(),
        config=config,
    )


#: A check run after every plan: the policy, its plan, the time, and each running
#: request's last token time from before the plan.
PlanCheck = Callable[[Policy, IterationPlan, float, dict[Request, float | None]], None]


def run_until_done(
    policy: Policy,
    requests: list[Request],
    *,
    output_tokens: int | Mapping[str, int],
    check: PlanCheck | None = None,
    max_iterations: int = 100_000,
) -> float:
    """Drive the real loop (plan → fake engine step → update) until all finish; returns end time.

    ``output_tokens`` is every request's true output length, or each one's by request id.
    """
    now = 0.0
    pending = sorted(requests, key=lambda r: r.arrival_s)
    i = 0
    for _ in range(max_iterations):
        while i < len(pending) and pending[i].arrival_s <= now:
            policy.add_request(pending[i])
            i += 1
        if policy.num_unfinished == 0:
            if i == len(pending):
                return now
            now = pending[i].arrival_s
            continue
        before = {r: r.last_token_s for r in policy.running}
        plan = policy.plan(now)
        if check is not None:
            check(policy, plan, now, before)
        if plan.is_empty:
            assert i < len(pending), f"{policy.name}: nothing runnable and nothing to wait for"
            now = pending[i].arrival_s
            continue
        now += policy.model.predict_s(plan.shape)
        for r in policy.update(plan, now=now):
            wanted = output_tokens if isinstance(output_tokens, int) else output_tokens[r.request_id]
            if r.num_output_tokens >= wanted:
                policy.finish(r, now=now)
    raise AssertionError(f"{policy.name}: requests did not finish in {max_iterations} iterations")


def place_running(policy: Policy, request: Request, *, outputs: int, last_token_s: float | None) -> Request:
    """Put ``request`` in ``policy`` as if it had run: prompt computed, ``outputs`` emitted.

    A decoding request has computed every token but the last sampled one.
    """
    from accelgen.core.request import blocks_for

    request.num_output_tokens = outputs
    request.num_computed_tokens = request.num_tokens - (1 if outputs else 0)
    request.last_token_s = last_token_s
    request.num_blocks = blocks_for(request.num_computed_tokens, policy.limits.block_size_tokens)
    policy.free_blocks -= request.num_blocks
    assert policy.free_blocks >= 0
    policy.running.append(request)
    return request


def make_engine_stats(**changes: object) -> EngineStatsFile:
    """An engine stats file as the real writer makes it (no step yet), with ``changes``."""
    return dataclasses.replace(EngineStatsRecorder(policy="test").snapshot(), **changes)  # type: ignore[arg-type]


# A small mixed workload (chat, documents, batch) for the simulator's tests.
SMALL_WORKLOAD = """\
name: small
seed: 3
duration_s: 20
arrivals: {process: poisson, rate_rps: 3.0}
sources:
  - {trace: azure_conv_2023.csv, weight: 0.65, tier: interactive}
  - {trace: arxiv_summarization_lengths.csv, weight: 0.35, tiers: {summarize: 0.7, batch: 0.3}}
tiers:
  default_tier: interactive
  tiers:
    - {name: interactive, ttft_ms: 1000, tbt_ms: 100}
    - {name: summarize, ttft_ms: 5000, tbt_ms: 250, priority: 1}
    - {name: batch, deadline_s: 300, priority: 2}
engine: {latency_model: h100-llama-2-7b, num_kv_blocks: auto, latency_noise: 0.05}
policies: [accelgen, sarathi, vllm-fcfs, oracle]
"""
