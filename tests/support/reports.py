"""What every policy's entry in a benchmark report holds, ``bench sim`` and ``bench vllm`` alike."""

from __future__ import annotations

#: The keys of a policy's result for one tier (the simulator's recorder summary).
TIER_RESULT_KEYS = frozenset(
    {
        "requests",
        "completed",
        "slo_met",
        "dropped",
        "throughput_rps",
        "throughput_tokens_per_s",
        "goodput_rps",
        "goodput_tokens_per_s",
        "attainment",
        "token_attainment",
        "ttft_p50_s",
        "ttft_p99_s",
        "tbt_p99_s",
        "latency_mean_s",
        "preemptions",
    }
)
#: The keys of a policy's whole result: the same over all tiers, the planner's time, each tier's.
POLICY_RESULT_KEYS = TIER_RESULT_KEYS | {"plan_time_per_iteration_s", "tiers"}
