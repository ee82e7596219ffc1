"""Which SLO tier a request belongs to, from its headers, its tenant and the defaults.

Order: the headers (:func:`accelgen.core.tier_headers.tier_from_headers`:
``x-accelgen-tier``, ``x-llm-d-inference-objective``, ``x-llm-d-slo-ttft-ms`` /
``x-llm-d-slo-tpot-ms``, the reading the gateway's endpoint picker shares); the tenant's
default tier; the global default tier.
"""

from __future__ import annotations

from collections.abc import Mapping

from accelgen.core.tier_headers import TierHeaderError, named_tier, tier_from_headers
from accelgen.core.tiers import SLOTier, TierSet
from accelgen.server.errors import ApiError
from accelgen.server.tenants import Tenant


def _resolve(headers: Mapping[str, str], tiers: TierSet, tenant: Tenant | None) -> SLOTier:
    tier = tier_from_headers(headers, tiers)
    if tier is not None:
        return tier
    if tenant is not None and tenant.default_tier is not None:
        return named_tier(tiers, tenant.default_tier, "the tenant's default_tier")
    if tenant is not None and tenant.tiers and tiers.default not in tenant.tiers:
        # The global default is not the tenant's to use: its first allowed tier is.
        return named_tier(tiers, sorted(tenant.tiers)[0], "the tenant's tiers")
    return tiers.default_tier


def resolve_tier(headers: Mapping[str, str], tiers: TierSet, tenant: Tenant | None) -> SLOTier:
    """The request's tier (with per-request targets when the gateway gave them).

    Raises:
        ApiError: 400 for an unknown tier or a malformed header, 403 for a tier the
            tenant may not use.
    """
    try:
        tier = _resolve(headers, tiers, tenant)
    except TierHeaderError as err:
        raise ApiError(400, err.message, code=err.code, param=err.param) from None
    if tenant is not None and not tenant.may_use(tier.name):
        raise ApiError(403, f"tenant {tenant.name!r} may not use tier {tier.name!r}", code="tier_forbidden")
    return tier
