"""SLO tiers and the tier configuration shared by the simulator, the engine and the sidecar.

The configuration is a mapping (from YAML)::

    default_tier: interactive
    tiers:
      - name: interactive        # online tier: both targets
        ttft_ms: 500
        tbt_ms: 100
        priority: 0              # lower runs first in static-priority baselines
        attainment_target: 0.95  # optional, for dashboards and autoscaling
      - name: batch              # offline tier: a completion deadline
        deadline_s: 3600
        priority: 2

A tier has either ``tbt_ms`` (with ``ttft_ms``) or ``deadline_s``, never both.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import Any

from accelgen.core.errors import ConfigError

_TIER_KEYS = {"name", "ttft_ms", "tbt_ms", "deadline_s", "priority", "attainment_target"}
_CONFIG_KEYS = {"default_tier", "tiers"}


@dataclass(frozen=True, slots=True)
class SLOTier:
    """One service-level objective class.

    Online tiers carry ``ttft_slo_s`` and ``tbt_slo_s``; offline tiers carry
    ``deadline_s`` (job completion time, from arrival) and neither of the others.
    """

    name: str
    ttft_slo_s: float | None = None
    tbt_slo_s: float | None = None
    deadline_s: float | None = None
    priority: int = 0
    attainment_target: float = 0.9

    @property
    def is_offline(self) -> bool:
        return self.deadline_s is not None

    def with_targets(self, *, ttft_slo_s: float | None, tbt_slo_s: float | None) -> SLOTier:
        """A per-request copy with explicit targets (e.g. from gateway headers)."""
        return SLOTier(
            name=self.name,
            ttft_slo_s=ttft_slo_s if ttft_slo_s is not None else self.ttft_slo_s,
            tbt_slo_s=tbt_slo_s if tbt_slo_s is not None else self.tbt_slo_s,
            deadline_s=self.deadline_s,
            priority=self.priority,
            attainment_target=self.attainment_target,
        )

    def to_config(self) -> dict[str, Any]:
        """The mapping :func:`parse_tier` reads back."""
        out: dict[str, Any] = {"name": self.name, "priority": self.priority}
        if self.deadline_s is not None:
            out["deadline_s"] = self.deadline_s
        else:
            out["ttft_ms"] = _ms(self.ttft_slo_s)
            out["tbt_ms"] = _ms(self.tbt_slo_s)
        out["attainment_target"] = self.attainment_target
        return out


def _ms(value_s: float | None) -> float | None:
    return None if value_s is None else round(value_s * 1000.0, 6)


@dataclass(frozen=True, slots=True)
class TierSet:
    """The configured tiers, by name, and the default for requests that name none."""

    tiers: tuple[SLOTier, ...]
    default: str

    def __post_init__(self) -> None:
        names = [t.name for t in self.tiers]
        if len(set(names)) != len(names):
            raise ConfigError("duplicate tier names", field="tiers")
        if self.default not in names:
            raise ConfigError(f"default tier {self.default!r} is not a tier", field="default_tier")

    def __iter__(self) -> Iterator[SLOTier]:
        return iter(self.tiers)

    def __len__(self) -> int:
        return len(self.tiers)

    def __contains__(self, name: object) -> bool:
        return any(t.name == name for t in self.tiers)

    def get(self, name: str | None) -> SLOTier:
        """The tier called ``name`` (the default tier for ``None``); KeyError if unknown."""
        wanted = self.default if name is None else name
        for tier in self.tiers:
            if tier.name == wanted:
                return tier
        raise KeyError(wanted)

    @property
    def default_tier(self) -> SLOTier:
        return self.get(None)

    @property
    def tightest_tbt_s(self) -> float | None:
        """The smallest TBT target of any online tier, or None if all are offline."""
        values = [t.tbt_slo_s for t in self.tiers if t.tbt_slo_s is not None]
        return min(values) if values else None

    def to_config(self) -> dict[str, Any]:
        return {"default_tier": self.default, "tiers": [t.to_config() for t in self.tiers]}


def _positive(raw: Mapping[str, Any], key: str) -> float | None:
    if key not in raw or raw[key] is None:
        return None
    value = raw[key]
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ConfigError(f"must be a number, got {value!r}", field=key)
    if not math.isfinite(value) or value <= 0:
        raise ConfigError(f"must be a positive number, got {value!r}", field=key)
    return float(value)


def parse_tier(raw: object) -> SLOTier:
    """One tier from its mapping; :class:`ConfigError` names the bad field."""
    if not isinstance(raw, Mapping):
        raise ConfigError(f"a tier must be a mapping, got {type(raw).__name__}")
    unknown = sorted(set(raw) - _TIER_KEYS)
    if unknown:
        raise ConfigError(
            f"unknown key(s) {', '.join(map(str, unknown))}; expected {sorted(_TIER_KEYS)}",
            field=str(unknown[0]),
        )
    name = raw.get("name")
    if not isinstance(name, str) or not name:
        raise ConfigError("every tier needs a non-empty string name", field="name")
    ttft_ms = _positive(raw, "ttft_ms")
    tbt_ms = _positive(raw, "tbt_ms")
    deadline_s = _positive(raw, "deadline_s")
    if deadline_s is not None and (tbt_ms is not None or ttft_ms is not None):
        raise ConfigError("an offline tier has deadline_s only, not ttft_ms/tbt_ms", field="deadline_s")
    if deadline_s is None and (tbt_ms is None or ttft_ms is None):
        missing = "tbt_ms" if tbt_ms is None else "ttft_ms"
        raise ConfigError("an online tier needs both ttft_ms and tbt_ms (or else deadline_s)", field=missing)
    priority = raw.get("priority", 0)
    if isinstance(priority, bool) or not isinstance(priority, int):
        raise ConfigError(f"must be an integer, got {priority!r}", field="priority")
    target = raw.get("attainment_target", 0.9)
    if isinstance(target, bool) or not isinstance(target, int | float) or not 0 < target <= 1:
        raise ConfigError(f"must be in (0, 1], got {target!r}", field="attainment_target")
    return SLOTier(
        name=name,
        ttft_slo_s=None if ttft_ms is None else ttft_ms / 1000.0,
        tbt_slo_s=None if tbt_ms is None else tbt_ms / 1000.0,
        deadline_s=deadline_s,
        priority=priority,
        attainment_target=float(target),
    )


def parse_tiers(raw: object) -> TierSet:
    """The tier configuration from a mapping (see the module docstring)."""
    if not isinstance(raw, Mapping):
        raise ConfigError("the tier configuration must be a mapping with 'tiers' and 'default_tier'")
    unknown = sorted(set(raw) - _CONFIG_KEYS)
    if unknown:
        raise ConfigError(f"unknown key(s) {', '.join(map(str, unknown))}", field=str(unknown[0]))
    items = raw.get("tiers")
    if not isinstance(items, list) or not items:
        raise ConfigError("must be a non-empty list of tiers", field="tiers")
    tiers = []
    for i, item in enumerate(items):
        try:
            tiers.append(parse_tier(item))
        except ConfigError as err:
            raise err.within(prefix=f"tiers[{i}]") from None
    seen: set[str] = set()
    for i, tier in enumerate(tiers):
        if tier.name in seen:
            raise ConfigError(f"duplicate tier name {tier.name!r}", field=f"tiers[{i}].name")
        seen.add(tier.name)
    default = raw.get("default_tier")
    if default is None:
        raise ConfigError("missing: name the tier for requests that name none", field="default_tier")
    if not isinstance(default, str) or default not in seen:
        raise ConfigError(f"{default!r} is not one of the tiers {sorted(seen)}", field="default_tier")
    return TierSet(tiers=tuple(tiers), default=default)


#: The tiers of an engine started without a tier file (the AccelGen scheduler in vLLM,
#: the standalone simulated engine): one tier; a sidecar's tiers reach the engine as
#: targets in each request's ``vllm_xargs``.
ENGINE_DEFAULT_TIERS = TierSet(tiers=(SLOTier(name="default", ttft_slo_s=2.0, tbt_slo_s=0.2),), default="default")

#: The tiers of a sidecar started without a tier file, in the tier file's format; the
#: gateway's endpoint picker reads requests' tiers against the same set by default.
SIDECAR_DEFAULT_TIERS: dict[str, Any] = {
    "default_tier": "standard",
    "tiers": [
        {"name": "interactive", "ttft_ms": 500, "tbt_ms": 100, "priority": 0, "attainment_target": 0.95},
        {"name": "standard", "ttft_ms": 2000, "tbt_ms": 250, "priority": 1},
        {"name": "batch", "deadline_s": 3600, "priority": 2},
    ],
}
