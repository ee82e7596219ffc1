"""``vllm-priority``: vLLM with ``--scheduling-policy priority`` and a static priority per tier.

Stands for vLLM's priority scheduling (lower value first, then arrival time), with each
request's priority taken from its SLO tier; preemption evicts the lowest-priority
running request. Simplified as ``vllm-fcfs``.
"""

from __future__ import annotations

from accelgen.core.policies.fixed_budget import FixedBudgetPolicy
from accelgen.core.policy import SortKey
from accelgen.core.request import Request


class VllmPriorityPolicy(FixedBudgetPolicy):
    name = "vllm-priority"
    description = "vLLM priority scheduling with static per-tier priority"

    def _queue_key(self, request: Request) -> SortKey:
        return (float(request.tier.priority), request.arrival_s)
