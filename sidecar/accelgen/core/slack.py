"""Slack: how long a request can still wait before it must run to meet its SLO.

* decoding: its next-token deadline (last token + TBT) minus now;
* waiting or in prefill: its TTFT deadline (its next-token deadline, when a preempted
  request recomputes) less the iterations its remaining prompt still needs (remaining
  tokens ÷ reference chunk, rounded up, × reference iteration time), minus now —
  [ours] the latest start that still meets TTFT, one reading of the paper's "TTFT
  spread over the iterations it still needs, less the time already waited";
* offline: the job deadline less the iterations for the rest of its prompt and its
  predicted remaining output, minus now.

Slack is ``latest_start_s(...) - now``: the first term does not depend on ``now``, so a
queue sorted by it stays sorted as time passes and the planner never rescans it.
"""

from __future__ import annotations

import math

from accelgen.core.request import Request


def latest_start_s(
    request: Request,
    *,
    ref_iteration_s: float,
    ref_chunk_tokens: int,
    expected_output_tokens: int,
) -> float:
    """The time by which ``request`` must be scheduled to make its SLO (slack = this − now).

    Args:
        request: A request that is waiting, in prefill, or decoding.
        ref_iteration_s: The duration assumed for one iteration.
        ref_chunk_tokens: The prefill chunk assumed per iteration.
        expected_output_tokens: Predicted total output length (offline tiers).
    """
    prefill_iters = math.ceil(max(request.num_new_tokens, 1) / ref_chunk_tokens)
    tier = request.tier
    if tier.deadline_s is not None:
        remaining_outputs = max(expected_output_tokens - request.num_output_tokens, 1)
        return request.arrival_s + tier.deadline_s - (prefill_iters + remaining_outputs - 1) * ref_iteration_s
    deadline = request.next_token_deadline_s
    assert deadline is not None  # online tiers always have ttft and tbt targets
    return deadline - prefill_iters * ref_iteration_s
