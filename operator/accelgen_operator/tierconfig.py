"""Pure: an InferencePool spec → the core's tier file and the scheduler file (as dicts).

The CRD speaks camelCase with units in the names (``ttftMs``, ``deadlineSeconds``); the
core's files speak snake_case (see :mod:`accelgen.core.tiers`). This module is the one
place that maps between them, and it checks the result with the core's own parser so a
spec the schema let through but the engine would refuse is caught here, with its field.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from accelgen.core.errors import ConfigError
from accelgen.core.tiers import TierSet, parse_tiers

# CRD tier field → core tier key
_TIER_FIELDS = {
    "name": "name",
    "ttftMs": "ttft_ms",
    "tbtMs": "tbt_ms",
    "deadlineSeconds": "deadline_s",
    "priority": "priority",
    "attainmentTarget": "attainment_target",
}
# CRD scheduler field → scheduler.yaml key
_SCHEDULER_FIELDS = {
    "policy": "policy",
    "gammaSeconds": "gamma_s",
    "safetyMarginSeconds": "safety_margin_s",
    "longPromptTokens": "long_prompt_tokens",
}
DEFAULT_POLICY = "accelgen"


def default_tier_name(spec: Mapping[str, Any]) -> str:
    """The tier of requests that name none: ``defaultTier``, else the first tier."""
    tiers = spec.get("tiers") or []
    default = spec.get("defaultTier")
    if default:
        return str(default)
    if not tiers or not isinstance(tiers[0], Mapping) or "name" not in tiers[0]:
        raise ConfigError("at least one tier with a name is required", field="spec.tiers")
    return str(tiers[0]["name"])


def tiers_config(spec: Mapping[str, Any]) -> dict[str, Any]:
    """The ``tiers.yaml`` mapping (the core's format) for a pool spec.

    Raises:
        ConfigError: the tiers are not a valid core configuration; ``field`` is the
            CRD path (``spec.tiers[1].tbt_ms``).
    """
    raw_tiers = spec.get("tiers")
    if not isinstance(raw_tiers, list) or not raw_tiers:
        raise ConfigError("must be a non-empty list of tiers", field="spec.tiers")
    tiers = []
    for i, raw in enumerate(raw_tiers):
        if not isinstance(raw, Mapping):
            raise ConfigError("a tier must be a mapping", field=f"spec.tiers[{i}]")
        unknown = sorted(set(raw) - set(_TIER_FIELDS))
        if unknown:
            raise ConfigError(f"unknown field(s) {unknown}", field=f"spec.tiers[{i}]")
        tiers.append({_TIER_FIELDS[k]: v for k, v in raw.items()})
    config = {"default_tier": default_tier_name(spec), "tiers": tiers}
    parse_checked(config)
    return config


def parse_checked(config: Mapping[str, Any]) -> TierSet:
    """Parse a tier config with the core's parser, locating errors under ``spec``."""
    try:
        return parse_tiers(config)
    except ConfigError as err:
        raise err.within(prefix="spec") from None


def scheduler_config(spec: Mapping[str, Any]) -> dict[str, Any]:
    """The ``scheduler.yaml`` mapping: ``policy``, and tuning keys only where the spec sets them."""
    raw = spec.get("scheduler") or {}
    out: dict[str, Any] = {"policy": raw.get("policy", DEFAULT_POLICY)}
    for field, key in _SCHEDULER_FIELDS.items():
        if field != "policy" and raw.get(field) is not None:
            out[key] = raw[field]
    return out
