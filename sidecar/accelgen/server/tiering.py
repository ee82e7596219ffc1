"""Which SLO tier a request belongs to, from its headers, its tenant and the defaults.

Order: ``x-accelgen-tier``; the inference gateway's ``x-llm-d-inference-objective``
(naming a tier); ``x-llm-d-slo-ttft-ms`` / ``x-llm-d-slo-tpot-ms`` (explicit targets);
the tenant's default tier; the global default tier.

Explicit targets pick the loosest online tier that is at least as tight as asked (so
the asked SLO is honoured at the least cost), or the tightest tier when none is; the
request then carries the asked targets themselves as its per-request targets.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping

from accelgen.core.tiers import SLOTier, TierSet
from accelgen.server.errors import ApiError
from accelgen.server.intake import shown
from accelgen.server.tenants import Tenant

TIER_HEADER = "x-accelgen-tier"
OBJECTIVE_HEADER = "x-llm-d-inference-objective"
TTFT_HEADER = "x-llm-d-slo-ttft-ms"
TPOT_HEADER = "x-llm-d-slo-tpot-ms"
# The pattern /openapi.json publishes for the target headers: digits and an optional
# fraction, nothing else (no sign, exponent, spaces, underscores, NaN or Infinity).
_DECIMAL = re.compile(r"[0-9]{1,8}(\.[0-9]{1,6})?")
_MIN_TARGET_MS, _MAX_TARGET_MS = 1.0, 86_400_000.0


def _target_s(headers: Mapping[str, str], name: str) -> float | None:
    raw = headers.get(name)
    if raw is None:
        return None
    if not _DECIMAL.fullmatch(raw):
        raise ApiError(
            400,
            f"header {name} must be a plain decimal number of milliseconds, got {shown(raw)}",
            code="bad_header",
            param=name,
        )
    value = float(raw)
    if not _MIN_TARGET_MS <= value <= _MAX_TARGET_MS:
        raise ApiError(
            400,
            f"header {name} must be between {_MIN_TARGET_MS:g} and {_MAX_TARGET_MS:g} ms, got {raw}",
            code="bad_header",
            param=name,
        )
    return value / 1000.0


def _named(tiers: TierSet, name: str, header: str) -> SLOTier:
    try:
        return tiers.get(name.strip())
    except KeyError:
        known = ", ".join(t.name for t in tiers)
        raise ApiError(
            400, f"unknown tier {shown(name)} (from {header}); known tiers: {known}", code="unknown_tier"
        ) from None


def _by_targets(tiers: TierSet, ttft_s: float | None, tbt_s: float | None) -> SLOTier:
    online = [t for t in tiers if not t.is_offline]
    if not online:
        return tiers.default_tier

    def fits(t: SLOTier) -> bool:
        return (ttft_s is None or (t.ttft_slo_s or math.inf) <= ttft_s) and (
            tbt_s is None or (t.tbt_slo_s or math.inf) <= tbt_s
        )

    def tightness(t: SLOTier) -> tuple[float, float]:
        return (t.tbt_slo_s or math.inf, t.ttft_slo_s or math.inf)

    fitting = [t for t in online if fits(t)]
    base = max(fitting, key=tightness) if fitting else min(online, key=tightness)
    return base.with_targets(ttft_slo_s=ttft_s, tbt_slo_s=tbt_s)


def resolve_tier(headers: Mapping[str, str], tiers: TierSet, tenant: Tenant | None) -> SLOTier:
    """The request's tier (with per-request targets when the gateway gave them).

    Raises:
        ApiError: 400 for an unknown tier or a malformed header, 403 for a tier the
            tenant may not use.
    """
    tier: SLOTier
    if headers.get(TIER_HEADER):
        tier = _named(tiers, headers[TIER_HEADER], TIER_HEADER)
    elif headers.get(OBJECTIVE_HEADER):
        tier = _named(tiers, headers[OBJECTIVE_HEADER], OBJECTIVE_HEADER)
    elif headers.get(TTFT_HEADER) or headers.get(TPOT_HEADER):
        tier = _by_targets(tiers, _target_s(headers, TTFT_HEADER), _target_s(headers, TPOT_HEADER))
    elif tenant is not None and tenant.default_tier is not None:
        tier = _named(tiers, tenant.default_tier, "the tenant's default_tier")
    elif tenant is not None and tenant.tiers and tiers.default not in tenant.tiers:
        # The global default is not the tenant's to use: its first allowed tier is.
        tier = _named(tiers, sorted(tenant.tiers)[0], "the tenant's tiers")
    else:
        tier = tiers.default_tier
    if tenant is not None and not tenant.may_use(tier.name):
        raise ApiError(403, f"tenant {tenant.name!r} may not use tier {tier.name!r}", code="tier_forbidden")
    return tier
