"""``vllm-fcfs``: vLLM V1's default scheduler (first come, first served, chunked prefill).

Stands for vLLM ≥ 0.6 with chunked prefill and ``--scheduling-policy fcfs``: running
requests in arrival order, then waiting ones, one fixed budget of
``max_num_batched_tokens`` per step, preemption of the latest arrival by recompute.
Simplified: no prefix caching, no watermark, no speculative decoding.
"""

from __future__ import annotations

from accelgen.core.policies.fixed_budget import FixedBudgetPolicy


class VllmFcfsPolicy(FixedBudgetPolicy):
    name = "vllm-fcfs"
    description = "vLLM default: FCFS, fixed max_num_batched_tokens budget, chunked prefill"
