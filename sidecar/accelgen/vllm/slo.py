"""Per-request SLO metadata from vLLM's ``extra_args`` (the OpenAI body's ``vllm_xargs``).

A client names a tier, overrides its targets, or gives a deadline::

    {"vllm_xargs": {"slo_tier": "interactive"}}                 # a configured tier
    {"vllm_xargs": {"slo_tier": "interactive", "tbt_ms": 40}}   # ... with a tighter TBT
    {"vllm_xargs": {"ttft_ms": 800, "tbt_ms": 120}}             # targets only
    {"vllm_xargs": {"deadline_s": 600}}                         # offline: done within 600 s

The keys and their checks are :class:`accelgen.wire.SloFields` (``tier`` and
``accelgen_tier`` are accepted as synonyms of ``slo_tier``). Requests without metadata
get the configured default tier. Bad metadata never fails a request inside the engine
(the sidecar validates at the edge): it falls back to the default tier and is counted.
This module does not import vLLM.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from accelgen.core.tiers import SLOTier, TierSet
from accelgen.wire import SloFields, WireError


@dataclass(frozen=True, slots=True)
class ResolvedSLO:
    """The tier a request is scheduled under, and what went wrong reading its metadata."""

    tier: SLOTier
    problem: str | None = None


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
    try:
        fields = SloFields.from_xargs(extra_args)
    except WireError as err:
        return ResolvedSLO(tiers.default_tier, str(err))
    if fields.tier is not None and fields.tier not in tiers:
        return ResolvedSLO(tiers.default_tier, f"unknown tier {fields.tier!r}")
    base = tiers.get(fields.tier)
    if fields.deadline_s is not None:
        return ResolvedSLO(
            SLOTier(
                name=base.name,
                deadline_s=fields.deadline_s,
                priority=base.priority,
                attainment_target=base.attainment_target,
            )
        )
    ttft_ms, tbt_ms = fields.ttft_ms, fields.tbt_ms
    if ttft_ms is None and tbt_ms is None:
        return ResolvedSLO(base)
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
