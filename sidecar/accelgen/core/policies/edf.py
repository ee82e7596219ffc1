"""``edf``: earliest deadline first with a fixed budget.

A classic real-time baseline (e.g. the EDF variants compared in SLO-aware serving
papers): every request is ordered by its next deadline — the TTFT deadline before the
first token, last token + TBT after it, the job deadline for offline tiers — and the
latest deadline is preempted first. Budget: ``max_num_batched_tokens``.
"""

from __future__ import annotations

import math

from accelgen.core.policies.fixed_budget import FixedBudgetPolicy
from accelgen.core.policy import SortKey
from accelgen.core.request import Request


def next_deadline_s(request: Request) -> float:
    deadline = request.next_token_deadline_s
    if deadline is None:
        deadline = request.job_deadline_s
    return math.inf if deadline is None else deadline


class EdfPolicy(FixedBudgetPolicy):
    name = "edf"
    description = "earliest deadline first, fixed budget"

    def _queue_key(self, request: Request) -> SortKey:
        return (next_deadline_s(request), request.arrival_s)

    def _running_key(self, request: Request, now: float) -> SortKey:
        del now
        return (next_deadline_s(request), request.arrival_s)
