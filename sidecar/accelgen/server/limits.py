"""Per-tenant rate (token bucket) and concurrency limits; the caller passes the clock."""

from __future__ import annotations

from dataclasses import dataclass, field

from accelgen.server.tenants import Tenant


@dataclass(slots=True)
class _Usage:
    tokens: float
    updated_s: float
    in_flight: int = 0


@dataclass(slots=True)
class TenantLimiter:
    """Admits a tenant's request or says how long until it could be admitted.

    The bucket holds ``max(1, rate_rps)`` requests, so short bursts up to a second's
    worth pass and the sustained rate is ``rate_rps``.
    """

    _usage: dict[str, _Usage] = field(default_factory=dict)

    def try_acquire(self, tenant: Tenant, now_s: float) -> float | None:
        """None if admitted (and counted in flight), else seconds to wait before retrying."""
        burst = max(1.0, tenant.rate_rps or 1.0)
        usage = self._usage.setdefault(tenant.name, _Usage(tokens=burst, updated_s=now_s))
        if tenant.max_concurrency is not None and usage.in_flight >= tenant.max_concurrency:
            return 1.0
        if tenant.rate_rps is not None:
            elapsed = max(0.0, now_s - usage.updated_s)
            usage.tokens = min(burst, usage.tokens + elapsed * tenant.rate_rps)
            usage.updated_s = now_s
            if usage.tokens < 1.0:
                return (1.0 - usage.tokens) / tenant.rate_rps
            usage.tokens -= 1.0
        usage.in_flight += 1
        return None

    def release(self, tenant: Tenant) -> None:
        """The request acquired for ``tenant`` has ended (any outcome)."""
        usage = self._usage.get(tenant.name)
        if usage is not None and usage.in_flight > 0:
            usage.in_flight -= 1
