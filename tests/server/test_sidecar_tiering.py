"""Tier resolution order and explicit gateway targets (pure: no server)."""

from __future__ import annotations

import pytest

from accelgen.server.errors import ApiError
from accelgen.server.tenants import Tenant, hash_key
from accelgen.server.tiering import resolve_tier
from tests.support.sidecar import TIERS

TENANT = Tenant(name="t", key_sha256=hash_key("k"), tiers=frozenset({"interactive", "batch"}), default_tier="batch")


@pytest.mark.parametrize(
    ("headers", "tenant", "expected"),
    [
        ({}, None, "standard"),
        ({}, TENANT, "batch"),  # the tenant's default beats the global default
        ({"x-llm-d-inference-objective": "interactive"}, TENANT, "interactive"),
        ({"x-accelgen-tier": "batch", "x-llm-d-inference-objective": "interactive"}, None, "batch"),
        ({"x-llm-d-inference-objective": "standard", "x-llm-d-slo-ttft-ms": "100"}, None, "standard"),
        ({"x-accelgen-tier": " interactive "}, None, "interactive"),
    ],
)
def test_resolution_order(headers: dict[str, str], tenant: Tenant | None, expected: str) -> None:
    assert resolve_tier(headers, TIERS, tenant).name == expected


def test_explicit_targets_pick_the_loosest_tier_that_honours_them() -> None:
    tier = resolve_tier({"x-llm-d-slo-ttft-ms": "3000", "x-llm-d-slo-tpot-ms": "300"}, TIERS, None)
    assert tier.name == "standard"
    assert (tier.ttft_slo_s, tier.tbt_slo_s) == (3.0, 0.3)  # carried as per-request targets
    tier = resolve_tier({"x-llm-d-slo-tpot-ms": "150"}, TIERS, None)
    assert tier.name == "interactive" and tier.tbt_slo_s == 0.15 and tier.ttft_slo_s == 0.5
    # Tighter than every tier: the tightest tier, with the asked targets.
    tier = resolve_tier({"x-llm-d-slo-ttft-ms": "50", "x-llm-d-slo-tpot-ms": "10"}, TIERS, None)
    assert tier.name == "interactive" and (tier.ttft_slo_s, tier.tbt_slo_s) == (0.05, 0.01)


def test_tenant_without_default_and_without_the_global_default_gets_an_allowed_tier() -> None:
    tenant = Tenant(name="u", key_sha256=hash_key("u"), tiers=frozenset({"batch"}))
    assert resolve_tier({}, TIERS, tenant).name == "batch"


@pytest.mark.parametrize(
    ("headers", "status"),
    [
        ({"x-accelgen-tier": "gold"}, 400),
        ({"x-llm-d-inference-objective": "gold"}, 400),
        ({"x-llm-d-slo-ttft-ms": "0"}, 400),
        ({"x-llm-d-slo-tpot-ms": "inf"}, 400),
        ({"x-accelgen-tier": "standard"}, 403),
    ],
)
def test_errors(headers: dict[str, str], status: int) -> None:
    with pytest.raises(ApiError) as err:
        resolve_tier(headers, TIERS, TENANT)
    assert err.value.status == status
