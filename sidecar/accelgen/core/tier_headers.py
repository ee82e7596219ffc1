"""A request's SLO tier from its HTTP headers: the one reading the sidecar and the picker share.

Order: ``x-accelgen-tier``; the inference gateway's ``x-llm-d-inference-objective``
(naming a tier); ``x-llm-d-slo-ttft-ms`` / ``x-llm-d-slo-tpot-ms`` (explicit targets).
With none of them, :func:`tier_from_headers` returns None and the caller applies its
own defaults (the sidecar: the tenant's default tier, then the global default).

Explicit targets pick the loosest online tier that is at least as tight as asked (so
the asked SLO is honoured at the least cost), or the tightest tier when none is; the
request then carries the asked targets themselves as its per-request targets.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Mapping

from accelgen.core.tiers import SLOTier, TierSet

TIER_HEADER = "x-accelgen-tier"
OBJECTIVE_HEADER = "x-llm-d-inference-objective"
TTFT_HEADER = "x-llm-d-slo-ttft-ms"
TPOT_HEADER = "x-llm-d-slo-tpot-ms"
# The pattern /openapi.json publishes for the target headers: digits and an optional
# fraction, nothing else (no sign, exponent, spaces, underscores, NaN or Infinity).
_DECIMAL = re.compile(r"[0-9]{1,8}(\.[0-9]{1,6})?")
_MIN_TARGET_MS, _MAX_TARGET_MS = 1.0, 86_400_000.0


class TierHeaderError(ValueError):
    """A header that names no tier or holds no valid target: a client error (HTTP 400).

    Attributes:
        code: Short machine-readable reason (``bad_header``, ``unknown_tier``).
        param: The offending header, if one.
    """

    def __init__(self, message: str, *, code: str, param: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.code = code
        self.param = param


def quoted(value: str, limit: int = 64) -> str:
    """A client's value fit for a message: undecodable bytes as U+FFFD, quoted, cut short."""
    text = value.encode("utf-8", "surrogateescape").decode("utf-8", "replace")
    return json.dumps(text[:limit] + ("..." if len(text) > limit else ""), ensure_ascii=False)


def target_s(headers: Mapping[str, str], name: str) -> float | None:
    """The target header ``name`` in seconds; None when absent. TierHeaderError when malformed."""
    raw = headers.get(name)
    if raw is None:
        return None
    if not _DECIMAL.fullmatch(raw):
        raise TierHeaderError(
            f"header {name} must be a plain decimal number of milliseconds, got {quoted(raw)}",
            code="bad_header",
            param=name,
        )
    value = float(raw)
    if not _MIN_TARGET_MS <= value <= _MAX_TARGET_MS:
        raise TierHeaderError(
            f"header {name} must be between {_MIN_TARGET_MS:g} and {_MAX_TARGET_MS:g} ms, got {raw}",
            code="bad_header",
            param=name,
        )
    return value / 1000.0


def named_tier(tiers: TierSet, name: str, source: str) -> SLOTier:
    """The tier called ``name`` (``source`` says where the name came from, for the message)."""
    try:
        return tiers.get(name.strip())
    except KeyError:
        known = ", ".join(t.name for t in tiers)
        raise TierHeaderError(
            f"unknown tier {quoted(name)} (from {source}); known tiers: {known}", code="unknown_tier"
        ) from None


def tier_by_targets(tiers: TierSet, ttft_s: float | None, tbt_s: float | None) -> SLOTier:
    """The loosest online tier at least as tight as the targets, carrying the targets."""
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


def tier_from_headers(headers: Mapping[str, str], tiers: TierSet) -> SLOTier | None:
    """The tier the headers ask for (with per-request targets when given); None if they ask none.

    ``headers`` is looked up by lower-case name.

    Raises:
        TierHeaderError: An unknown tier name or a malformed target.
    """
    if headers.get(TIER_HEADER):
        return named_tier(tiers, headers[TIER_HEADER], TIER_HEADER)
    if headers.get(OBJECTIVE_HEADER):
        return named_tier(tiers, headers[OBJECTIVE_HEADER], OBJECTIVE_HEADER)
    if headers.get(TTFT_HEADER) or headers.get(TPOT_HEADER):
        return tier_by_targets(tiers, target_s(headers, TTFT_HEADER), target_s(headers, TPOT_HEADER))
    return None
