"""A queued request's ticket, the admission settings, and how tiers rank tight to loose."""

from __future__ import annotations

import math
from dataclasses import dataclass

from accelgen.core.tiers import SLOTier


def looseness(tier: SLOTier) -> tuple[bool, float, int]:
    """Sorts tiers tight to loose: online before offline, then by TTFT target, priority."""
    return (tier.is_offline, tier.ttft_slo_s or math.inf, tier.priority)


@dataclass(eq=False, slots=True)
class Ticket:
    """One request's place in admission (identity semantics).

    ``outcome`` is None while the request waits, then ``"released"`` or ``"shed"``.
    """

    tier: SLOTier
    arrival_s: float
    num_prompt_tokens: int
    max_tokens: int
    deadline_s: float  # TTFT deadline (online) or completion deadline (offline)
    key_s: float  # latest start time: release order, least first
    seq: int
    queued: bool = True
    outcome: str | None = None

    @property
    def waiting(self) -> bool:
        """Queued, and its client still waits for it (neither released nor shed)."""
        return self.queued and self.outcome is None


@dataclass(frozen=True, slots=True)
class AdmissionConfig:
    """Bounds and watermarks of admission and release."""

    max_queue_per_tier: int = 256
    max_queue_total: int = 1024
    max_in_flight: int = 64  # requests released to the engine and not yet finished
    kv_high_watermark: float = 0.95  # hold releases above this engine KV usage
    waiting_limit: int = 4  # hold while the engine reports this many waiting twice...
    settle_s: float = 0.05  # ...in a snapshot taken this long after our last release
    shed_late: bool = True  # drop queued online requests whose TTFT is already lost
    # Admission plans to release a request within this fraction of its slack, leaving
    # the rest for the unevenness of completions (slots free in bursts, not evenly).
    slack_use: float = 0.6
