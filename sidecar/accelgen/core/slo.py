"""Whether a request met its SLO, as README ("Metrics") defines it — one implementation for the
simulator, the sidecar and the benchmarks.

* a token is on time if its gap (TTFT for the first) is within the tier's target;
* an online request meets its SLO if its TTFT is within target and at most
  max(1, ⌈1 % of its output tokens⌉) of its later tokens are late;
* an offline request meets it if it completes before its deadline.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from accelgen.core.tiers import SLOTier

#: The share of a request's tokens that may be late (README, "Metrics").
LATE_TOKEN_FRACTION = 0.01

#: The quantile of step times the planner plans for: a step may overrun no more often
#: than a token may be late, or requests' late tokens exceed their allowance.
PLANNING_QUANTILE = 1.0 - LATE_TOKEN_FRACTION


def late_tokens_allowed(num_output_tokens: int) -> int:
    """Late tokens a request may have and still meet its SLO: max(1, ⌈1 % of output⌉)."""
    return max(1, math.ceil(LATE_TOKEN_FRACTION * num_output_tokens))


@dataclass(slots=True)
class TokenTimeline:
    """Token times of one request, as they happen, on any one clock."""

    tier: SLOTier
    arrival_s: float
    first_token_s: float | None = None
    last_token_s: float | None = None
    num_tokens: int = 0
    num_late: int = 0

    def token(self, now_s: float) -> float | None:
        """Record a token; returns its gap to the previous one (None for the first)."""
        gap_s = None
        if self.last_token_s is None:
            self.first_token_s = now_s
        else:
            gap_s = now_s - self.last_token_s
            tbt_s = self.tier.tbt_slo_s
            if tbt_s is not None and gap_s > tbt_s:
                self.num_late += 1
        self.last_token_s = now_s
        self.num_tokens += 1
        return gap_s

    @property
    def ttft_s(self) -> float | None:
        return None if self.first_token_s is None else self.first_token_s - self.arrival_s

    def meets_slo(self, end_s: float, *, num_output_tokens: int | None = None) -> bool:
        """The verdict for a request completed at ``end_s``.

        Args:
            end_s: Completion time.
            num_output_tokens: Output length when known better than the tokens seen
                (a streamed chunk may carry several).
        """
        tier = self.tier
        if tier.deadline_s is not None:
            return end_s - self.arrival_s <= tier.deadline_s
        ttft_s = self.ttft_s
        if ttft_s is None or tier.ttft_slo_s is None or ttft_s > tier.ttft_slo_s:
            return False
        outputs = self.num_tokens if num_output_tokens is None else num_output_tokens
        return self.num_late <= late_tokens_allowed(outputs)
