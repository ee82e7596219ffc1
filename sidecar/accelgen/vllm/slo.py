"""Per-request SLO metadata from vLLM's ``extra_args`` (the OpenAI body's ``vllm_xargs``).

A client names a tier, overrides its targets, or gives a deadline::

    {"vllm_xargs": {"slo_tier": "interactive"}}                 # a configured tier
    {"vllm_xargs": {"slo_tier": "interactive", "tbt_ms": 40}}   # ... with a tighter TBT
    {"vllm_xargs": {"ttft_ms": 800, "tbt_ms": 120}}             # targets only
    {"vllm_xargs": {"deadline_s": 600}}                         # offline: done within 600 s

``tier`` and ``accelgen_tier`` (the sidecar's name) are accepted as synonyms of
``slo_tier``. Requests without metadata get the configured default tier. Bad metadata
never fails a request inside the engine (the sidecar validates at the edge): it falls
back to the default tier and is counted. This module does not import vLLM.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from accelgen.core.tiers import SLOTier, TierSet

TIER_KEYS = ("slo_tier", "tier", "accelgen_tier")
TARGET_KEYS = ("ttft_ms", "tbt_ms", "deadline_s")


@dataclass(frozen=True, slots=True)
class ResolvedSLO:
    """The tier a request is scheduled under, and what went wrong reading its metadata."""

    tier: SLOTier
    problem: str | None = None


def _positive(value: Any) -> float | None:
    if isinstance(value, bool):
        return None
    if isinstance(value, str):
        try:
            value = float(value)
        except ValueError:
            return None
    if isinstance(value, int | float) and math.isfinite(value) and value > 0:
        return float(value)
    return None


def resolve_slo(extra_args: Mapping[str, Any] | None, tiers: TierSet) -> ResolvedSLO:
    """The request's tier from its ``extra_args``; the default tier when absent or invalid.

    Args:
        extra_args: ``request.sampling_params.extra_args`` (may be None).
        tiers: The configured tiers.

    Returns:
        The tier (a per-request copy when targets are overridden) and, if the metadata
        was unusable, a description of the problem.
    """
    if not extra_args:
        return ResolvedSLO(tiers.default_tier)
    name = next((extra_args[k] for k in TIER_KEYS if k in extra_args), None)
    if name is not None and (not isinstance(name, str) or name not in tiers):
        return ResolvedSLO(tiers.default_tier, f"unknown tier {name!r}")
    base = tiers.get(name)
    values = {k: extra_args[k] for k in TARGET_KEYS if k in extra_args}
    parsed = {k: _positive(v) for k, v in values.items()}
    bad = [k for k, v in parsed.items() if v is None]
    if bad:
        return ResolvedSLO(base, f"{bad[0]} must be a positive number, got {values[bad[0]]!r}")
    if "deadline_s" in parsed:
        if "ttft_ms" in parsed or "tbt_ms" in parsed:
            return ResolvedSLO(base, "deadline_s excludes ttft_ms/tbt_ms")
        return ResolvedSLO(
            SLOTier(
                name=base.name,
                deadline_s=parsed["deadline_s"],
                priority=base.priority,
                attainment_target=base.attainment_target,
            )
        )
    if not parsed:
        return ResolvedSLO(base)
    ttft_ms, tbt_ms = parsed.get("ttft_ms"), parsed.get("tbt_ms")
    if base.is_offline and (ttft_ms is None or tbt_ms is None):
        return ResolvedSLO(base, "an offline tier needs both ttft_ms and tbt_ms to go online")
    tier = SLOTier(
        name=base.name,
        ttft_slo_s=base.ttft_slo_s,
        tbt_slo_s=base.tbt_slo_s,
        priority=base.priority,
        attainment_target=base.attainment_target,
    ).with_targets(
        ttft_slo_s=None if ttft_ms is None else ttft_ms / 1000.0,
        tbt_slo_s=None if tbt_ms is None else tbt_ms / 1000.0,
    )
    return ResolvedSLO(tier)
