"""``sarathi``: Sarathi-Serve's stall-free batching (Agrawal et al., OSDI 2024).

Each iteration: all ongoing decodes first, then partial prefills already started, then
new prefills, FCFS within each group, under one fixed chunk budget. The budget is sized
as Sarathi-Serve prescribes, from profiling for the tightest TBT target: the largest
token count whose predicted iteration — with ``reference_decodes`` concurrent decodes at
``reference_context_tokens`` context — fits that target less the safety margin.
Simplified: one replica, no pipeline parallelism, no hybrid-batch kernel effects.
"""

from __future__ import annotations

from accelgen.core.latency import BatchShape, max_prefill_tokens_within
from accelgen.core.policies.fixed_budget import FixedBudgetPolicy
from accelgen.core.policy import SortKey
from accelgen.core.request import Request


def sarathi_budget_tokens(policy: FixedBudgetPolicy) -> int:
    """The fixed chunk budget for the tightest TBT target of the configured tiers."""
    cfg, limits = policy.config, policy.limits
    tbt_s = policy.tiers.tightest_tbt_s
    if tbt_s is None:
        return limits.max_num_batched_tokens
    base = BatchShape(
        num_decodes=cfg.reference_decodes,
        decode_kv_tokens=cfg.reference_decodes * cfg.reference_context_tokens,
    )
    chunk = max_prefill_tokens_within(
        policy.model,
        tbt_s - cfg.safety_margin_s,
        base=base,
        context_tokens=0,
        cap_tokens=limits.max_num_batched_tokens - cfg.reference_decodes,
    )
    return max(cfg.reference_decodes + chunk, 64)


class SarathiPolicy(FixedBudgetPolicy):
    name = "sarathi"
    description = "Sarathi-Serve: decodes, then partial prefills, then new; TBT-sized budget"

    @property
    def budget_tokens(self) -> int:
        if self._budget_tokens is None:
            self._budget_tokens = sarathi_budget_tokens(self)
        return self._budget_tokens

    _budget_tokens: int | None = None

    def _on_latency_model(self) -> None:
        self._budget_tokens = None

    def _running_key(self, request: Request, now: float) -> SortKey:
        del now
        return (0.0 if request.is_decoding else 1.0, request.arrival_s)
