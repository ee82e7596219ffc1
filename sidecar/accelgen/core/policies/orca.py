"""``orca``: iteration-level batching without chunking (Yu et al., OSDI 2022).

Orca schedules at iteration granularity, mixing new prompts and decodes in one batch,
but runs each prompt whole: a long prompt stalls every decode in its batch. Modelled as
FCFS with ``chunked_prefill = False`` under ``max_num_batched_tokens`` (a prompt longer
than that runs alone). Simplified: vLLM-style paged KV instead of Orca's reservation.
"""

from __future__ import annotations

from accelgen.core.policies.fixed_budget import FixedBudgetPolicy


class OrcaPolicy(FixedBudgetPolicy):
    name = "orca"
    description = "Orca: iteration-level batching, whole prompts, FCFS"
    chunked_prefill = False
