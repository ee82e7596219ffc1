"""One contract, every registered policy: the same checks run over each of them."""

from __future__ import annotations

import random

import pytest

from accelgen.core.errors import ConfigError
from accelgen.core.plan import IterationPlan
from accelgen.core.policies import make_policy, policy_names
from accelgen.core.policy import Policy
from accelgen.core.request import Request, blocks_for
from tests.support.factories import (
    linear_model,
    make_limits,
    make_planner,
    make_request,
    make_tiers,
    place_running,
    run_until_done,
)

ALL = policy_names()


def check_plan_invariants(policy: Policy) -> None:
    held = sum(r.num_blocks for r in policy.running)
    assert policy.free_blocks == policy.limits.num_kv_blocks - held >= 0
    assert all(r.num_blocks == 0 for r in policy.waiting())
    assert len(policy.running) <= policy.limits.max_num_seqs


def check_plan(policy: Policy, plan: IterationPlan, now: float, before: dict[Request, float | None]) -> None:
    """The contract of every plan: KV accounting, batch limits, each chunk's size and blocks."""
    check_plan_invariants(policy)
    ids = [c.request.request_id for c in plan.chunks]
    assert len(ids) == len(set(ids)), "a request scheduled twice in one iteration"
    assert plan.num_tokens <= policy.limits.max_num_batched_tokens or len(plan.chunks) == 1
    for c in plan.chunks:
        assert 0 < c.num_tokens <= c.request.num_new_tokens
        assert c.request.num_blocks >= blocks_for(c.context_tokens + c.num_tokens, policy.limits.block_size_tokens)


def drive(policy: Policy, requests: list[Request], *, outputs: dict[str, int]) -> float:
    """The real loop with the contract checked after every plan; returns the end time."""
    return run_until_done(policy, requests, output_tokens=outputs, check=check_plan, max_iterations=20_000)


def workload(seed: int, n: int = 40) -> tuple[list[Request], dict[str, int]]:
    rng = random.Random(seed)
    tiers = make_tiers()
    names = ["tight", "loose", "batch"]
    reqs, outs = [], {}
    for k in range(n):
        r = make_request(
            f"r{k}",
            tier=tiers.get(rng.choice(names)),
            prompt=rng.randint(1, 1500),
            arrival_s=rng.uniform(0, 4),
            max_tokens=64,
        )
        reqs.append(r)
        outs[r.request_id] = rng.randint(1, 40)
    return reqs, outs


@pytest.mark.parametrize("name", ALL)
def test_every_request_completes_under_light_load(name: str) -> None:
    reqs, outs = workload(seed=1)
    policy = make_planner(name, limits=make_limits(blocks=400, max_batched=2048))
    drive(policy, reqs, outputs=outs)
    if name != "oracle":  # the oracle may drop hopeless requests, nobody else may
        assert all(r.finished and r.num_output_tokens == outs[r.request_id] for r in reqs)
    assert policy.free_blocks == policy.limits.num_kv_blocks


@pytest.mark.parametrize("name", ALL)
def test_survives_kv_pressure_with_preemption(name: str) -> None:
    """A cache that holds only a few requests at once: preempt, recompute, finish."""
    reqs, outs = workload(seed=2, n=25)
    policy = make_planner(name, limits=make_limits(blocks=120, max_batched=1024))
    drive(policy, reqs, outputs=outs)
    assert policy.free_blocks == 120


@pytest.mark.parametrize("name", ALL)
def test_abort_frees_kv_wherever_the_request_is(name: str) -> None:
    tiers = make_tiers()
    policy = make_planner(name)
    running = make_request("run", tier=tiers.get("tight"), prompt=300)
    waiting = make_request("wait", tier=tiers.get("batch"), prompt=300, arrival_s=1.0)
    policy.add_request(running)
    plan = policy.plan(now=0.0)
    policy.update(plan, now=0.05)
    policy.add_request(waiting)
    assert policy.abort("wait") is waiting
    assert policy.abort("run") is running
    assert policy.abort("nobody") is None
    assert policy.num_unfinished == 0 and policy.free_blocks == policy.limits.num_kv_blocks


@pytest.mark.parametrize("name", ALL)
def test_max_tokens_finishes_the_request(name: str) -> None:
    tiers = make_tiers()
    policy = make_planner(name)
    r = make_request("r", tier=tiers.get("loose"), prompt=10, max_tokens=3)
    policy.add_request(r)
    now = 0.0
    while not r.finished:
        plan = policy.plan(now)
        now += 0.01
        policy.update(plan, now=now)
    assert r.num_output_tokens == 3 and policy.free_blocks == policy.limits.num_kv_blocks


def test_unknown_policy_is_a_config_error() -> None:
    with pytest.raises(ConfigError, match="unknown policy 'fifo'"):
        make_policy("fifo", tiers=make_tiers(), latency_model=make_planner().model, limits=make_limits())


@pytest.mark.parametrize("name", ALL)
def test_a_new_latency_model_changes_the_plan(name: str) -> None:
    """After set_latency_model a policy budgets with the new model (AccelGen's S_b, Sarathi's chunk)."""
    tiers = make_tiers()
    plans = []
    for model in (None, linear_model(per_token_s=0.0002)):  # default: 0.0001 s per token
        policy = make_planner(name)
        if model is not None:
            policy.set_latency_model(model)
        place_running(policy, make_request("d", tier=tiers.get("tight"), prompt=50), outputs=3, last_token_s=0.0)
        policy.add_request(make_request("p", tier=tiers.get("loose"), prompt=3000))
        plans.append(policy.plan(0.0))
    before, after = plans
    if name in ("accelgen", "accelgen-no-ordering", "accelgen-no-bestfit", "oracle", "sarathi"):
        assert after.num_tokens < before.num_tokens  # twice the cost per token: a smaller batch
    else:  # fixed budgets do not depend on the model
        assert after.num_tokens == before.num_tokens
