"""The public ``Policy`` contract an engine adapter uses when the engine overrides a plan."""

from __future__ import annotations

import pytest

from accelgen.core.policies import REGISTRY
from tests.support.factories import make_planner, make_request, make_tiers, place_running


@pytest.mark.parametrize("name", sorted(REGISTRY))
def test_requeue_returns_kv_and_queues_the_request(name: str) -> None:
    policy = make_planner(name)
    tiers = make_tiers()
    request = place_running(
        policy, make_request("r0", tier=tiers.default_tier, prompt=100), outputs=0, last_token_s=None
    )
    free_before = policy.free_blocks
    held = request.num_blocks
    assert held > 0

    policy.requeue(request, num_computed_tokens=32)

    assert request not in policy.running
    assert list(policy.waiting()) == [request]
    assert request.num_blocks == 0 and policy.free_blocks == free_before + held
    assert request.num_computed_tokens == 32
    assert policy.num_preemptions == 0


@pytest.mark.parametrize("name", sorted(REGISTRY))
def test_requeue_as_preemption_is_counted_and_recomputes(name: str) -> None:
    policy = make_planner(name)
    tiers = make_tiers()
    request = place_running(policy, make_request("r0", tier=tiers.default_tier), outputs=3, last_token_s=1.0)

    policy.requeue(request, preempted=True)

    assert request not in policy.running and list(policy.waiting()) == [request]
    assert request.num_computed_tokens == 0 and request.num_preemptions == 1
    assert policy.num_preemptions == 1
    # The next plan can run it again from scratch (its KV is free).
    plan = policy.plan(2.0)
    assert [c.request for c in plan.chunks] == [request]
    assert plan.chunks[0].context_tokens == 0
