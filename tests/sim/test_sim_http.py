"""The simulated engine's HTTP face: how a request's body becomes the tier it is planned under."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest
import pytest_asyncio
from aiohttp.test_utils import TestClient, TestServer

from accelgen.core.tiers import ENGINE_DEFAULT_TIERS
from accelgen.sim.http import SIM_ENGINE, build_sim_app, request_tier
from accelgen.sim.profiles import DEFAULT_SIM_MODEL
from accelgen.sim.realtime import RealtimeEngine, SimEngineConfig


@pytest_asyncio.fixture
async def client() -> AsyncIterator[TestClient]:
    app = build_sim_app(DEFAULT_SIM_MODEL, SimEngineConfig(), tiers=ENGINE_DEFAULT_TIERS)
    async with TestClient(TestServer(app)) as client:
        yield client


def _engine(client: TestClient) -> RealtimeEngine:
    return client.server.app[SIM_ENGINE]


async def _complete(client: TestClient, **body: object) -> None:
    resp = await client.post(
        "/v1/completions", json={"model": "accelgen-sim", "prompt": [1] * 8, "max_tokens": 2, **body}
    )
    assert resp.status == 200, await resp.text()


@pytest.mark.asyncio
async def test_a_tier_the_engine_was_not_given_is_planned_with_the_targets_sent(client: TestClient) -> None:
    # The sidecar's tiers reach a standalone engine only through each request's fields.
    await _complete(client, vllm_xargs={"slo_tier": "gold", "ttft_ms": 300, "tbt_ms": 30})
    await _complete(client)
    engine = _engine(client)
    assert dict(engine.stats.requests_by_tier) == {"gold": 1, "default": 1}
    assert not engine.stats.slo_problems
    tier = request_tier({"vllm_xargs": {"slo_tier": "gold", "ttft_ms": 300, "tbt_ms": 30}}, engine)
    assert (tier.name, tier.ttft_slo_s, tier.tbt_slo_s, tier.priority) == ("gold", 0.3, 0.03, 0)


@pytest.mark.asyncio
async def test_unusable_slo_fields_plan_under_the_default_tier_and_are_counted(client: TestClient) -> None:
    await _complete(client, vllm_xargs={"slo_tier": "gold", "tbt_ms": -1})
    await _complete(client, vllm_xargs={"accelgen_slo_version": 9})
    engine = _engine(client)
    assert dict(engine.stats.requests_by_tier) == {"default": 2}
    assert sum(engine.stats.slo_problems.values()) == 2
    assert any("tbt_ms must be a positive number" in problem for problem in engine.stats.slo_problems)


@pytest.mark.asyncio
async def test_the_bodys_priority_overrides_the_tiers(client: TestClient) -> None:
    # vLLM's priority scheduling reads the body's priority; the tier's is the fallback.
    engine = _engine(client)
    assert request_tier({"priority": 7}, engine).priority == 7
    assert request_tier({"priority": 7, "vllm_xargs": {"deadline_s": 20}}, engine).priority == 7
    assert request_tier({"priority": "high"}, engine).priority == ENGINE_DEFAULT_TIERS.default_tier.priority
    assert request_tier({}, engine) == ENGINE_DEFAULT_TIERS.default_tier
