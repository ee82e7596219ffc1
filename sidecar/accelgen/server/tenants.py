"""Tenants and their API keys, read from a keys file (e.g. a mounted Kubernetes Secret).

The file holds SHA-256 hashes, never keys::

    tenants:
      - name: team-a
        key_sha256: 9f86d081884c7d65...   # sha256(key) in hex: `printf %s KEY | sha256sum`
        tiers: [interactive, standard]     # optional: tiers it may use (default: all)
        default_tier: interactive          # optional
        max_concurrency: 8                 # optional: requests in flight at once
        rate_rps: 5                        # optional: sustained requests per second

A presented key is hashed and compared with every tenant's hash in constant time
(``hmac.compare_digest``, no early exit), so timing says nothing about which byte or
which tenant differed. Keys are never stored, logged or echoed.
"""

from __future__ import annotations

import hashlib
import hmac
import math
import re
from dataclasses import dataclass
from pathlib import Path

from accelgen.config import read_yaml
from accelgen.core.errors import ConfigError

_HEX64 = re.compile(r"^[0-9a-f]{64}$")
_KEYS = {"name", "key_sha256", "tiers", "default_tier", "max_concurrency", "rate_rps"}


@dataclass(frozen=True, slots=True)
class Tenant:
    """One API key's owner and its limits (``None``: unlimited / all tiers)."""

    name: str
    key_sha256: bytes
    tiers: frozenset[str] | None = None
    default_tier: str | None = None
    max_concurrency: int | None = None
    rate_rps: float | None = None

    def may_use(self, tier: str) -> bool:
        return self.tiers is None or tier in self.tiers


def hash_key(key: str) -> bytes:
    """The SHA-256 digest a keys file stores (as hex) for ``key``."""
    return hashlib.sha256(key.encode("utf-8")).digest()


class KeyStore:
    """Authenticates ``Authorization: Bearer`` keys against the tenants of a keys file."""

    def __init__(self, tenants: tuple[Tenant, ...]) -> None:
        self.tenants = tenants

    def authenticate(self, key: str) -> Tenant | None:
        """The tenant whose key this is, or None; time does not depend on where it matched."""
        digest = hash_key(key)
        found: Tenant | None = None
        for tenant in self.tenants:
            # NOTE: no break: every tenant is compared so the loop's time is constant.
            if hmac.compare_digest(digest, tenant.key_sha256):
                found = tenant
        return found


def _tenant(raw: object, where: str) -> Tenant:
    if not isinstance(raw, dict):
        raise ConfigError("a tenant must be a mapping", field=where)
    unknown = sorted(set(raw) - _KEYS)
    if unknown:
        raise ConfigError(f"unknown key(s) {', '.join(map(str, unknown))}", field=where)
    name = raw.get("name")
    if not isinstance(name, str) or not name:
        raise ConfigError("needs a non-empty string name", field=f"{where}.name")
    digest = raw.get("key_sha256")
    if not isinstance(digest, str) or not _HEX64.match(digest.lower()):
        raise ConfigError("must be 64 hex digits (sha256 of the key)", field=f"{where}.key_sha256")
    tiers = raw.get("tiers")
    if tiers is not None and (not isinstance(tiers, list) or not all(isinstance(t, str) for t in tiers)):
        raise ConfigError("must be a list of tier names", field=f"{where}.tiers")
    default = raw.get("default_tier")
    if default is not None and not isinstance(default, str):
        raise ConfigError("must be a tier name", field=f"{where}.default_tier")
    concurrency = raw.get("max_concurrency")
    if concurrency is not None and (
        isinstance(concurrency, bool) or not isinstance(concurrency, int) or concurrency < 1
    ):
        raise ConfigError("must be a positive integer", field=f"{where}.max_concurrency")
    rate = raw.get("rate_rps")
    if rate is not None and (
        isinstance(rate, bool) or not isinstance(rate, int | float) or not math.isfinite(rate) or rate <= 0
    ):
        raise ConfigError("must be a positive number", field=f"{where}.rate_rps")
    return Tenant(
        name=name,
        key_sha256=bytes.fromhex(digest.lower()),
        tiers=None if tiers is None else frozenset(tiers),
        default_tier=default,
        max_concurrency=concurrency,
        rate_rps=None if rate is None else float(rate),
    )


def load_keys(path: str | Path, *, tier_names: frozenset[str]) -> KeyStore:
    """Read a keys file; :class:`ConfigError` names the file and the bad field."""
    raw = read_yaml(path)
    try:
        if not isinstance(raw, dict) or not isinstance(raw.get("tenants"), list):
            raise ConfigError("must be a mapping with a list 'tenants'")
        tenants = tuple(_tenant(t, f"tenants[{i}]") for i, t in enumerate(raw["tenants"]))
        for i, tenant in enumerate(tenants):
            named = set(tenant.tiers or ()) | {tenant.default_tier} - {None}
            missing = sorted(str(t) for t in named if t not in tier_names)
            if missing:
                raise ConfigError(f"unknown tier(s) {missing}", field=f"tenants[{i}]")
            if tenant.tiers is not None and tenant.default_tier not in (None, *tenant.tiers):
                raise ConfigError("default_tier is not among its tiers", field=f"tenants[{i}]")
        names = [t.name for t in tenants]
        if len(set(names)) != len(names):
            raise ConfigError("duplicate tenant names", field="tenants")
    except ConfigError as err:
        raise err.within(source=str(path)) from None
    return KeyStore(tenants)
