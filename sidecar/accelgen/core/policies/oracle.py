"""``oracle``: a clairvoyant reference for AccelGen, and an analytic goodput bound.

The oracle is AccelGen given what no online scheduler has: every request's true output
length (the simulator fills ``expected_output_tokens`` because ``clairvoyant`` is set)
and admission that drops a queued request as soon as it provably cannot make its SLO —
its TTFT deadline is earlier than now plus its prefill alone on an idle engine — so no
capacity is spent on it. It does not search over future arrivals (the paper's Oracle
does, in a simulator); AccelGen at ≥ 0.9× this is the claim checked here, and
:func:`goodput_upper_bound` gives a bound no schedule can beat.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from accelgen.core.latency import BatchShape, LatencyModel
from accelgen.core.plan import EngineLimits
from accelgen.core.policies.accelgen import AccelGenPolicy
from accelgen.core.request import Request


class OraclePolicy(AccelGenPolicy):
    name = "oracle"
    description = "AccelGen + true output lengths + dropping provably late requests"
    clairvoyant = True
    drop_lost = True

    def _is_lost(self, request: Request, now: float) -> bool:
        if request.last_token_s is not None:
            return False
        alone = self.model.predict_s(BatchShape().plus_prefill(request.num_new_tokens, context_tokens=0))
        deadline = request.ttft_deadline_s or request.job_deadline_s
        return deadline is not None and now + alone > deadline


@dataclass(frozen=True, slots=True)
class GoodputBound:
    """An upper bound on goodput for a workload on one engine.

    Args:
        feasible_requests: Requests whose targets an idle engine could meet.
        busy_s: Least engine time that all requests' tokens need at full batches.
        span_s: Least possible span of any schedule: first arrival to the latest
            (arrival + isolated run time), and never less than ``busy_s``.
        goodput_rps: ``feasible / span``.
    """

    feasible_requests: int
    busy_s: float
    span_s: float
    goodput_rps: float


def goodput_upper_bound(
    requests: Sequence[tuple[float, int, int, float | None, float | None]],
    model: LatencyModel,
    limits: EngineLimits,
) -> GoodputBound:
    """Bound goodput (as the benchmark measures it: over first arrival → last completion).

    Args:
        requests: ``(arrival_s, prompt_tokens, output_tokens, ttft_slo_s, tbt_slo_s)``.
        model: The engine's latency model.
        limits: Its capacities (the largest batch bounds per-token efficiency).

    A request is feasible if its prefill alone fits its TTFT and a lone decode fits its
    TBT; no schedule completes more requests on time than are feasible. No schedule
    finishes before every request's arrival plus its isolated run time, nor in less
    engine time than all tokens need at the best per-token cost: prefill at a full
    ``max_num_batched_tokens`` batch, decode at a full ``max_num_seqs`` batch (attention
    at each request's mean context).
    """
    if not requests:
        return GoodputBound(0, 0.0, 0.0, 0.0)
    full = limits.max_num_batched_tokens
    prefill_per_token_s = model.predict_s(BatchShape(num_prefill_tokens=full)) / full
    seqs = limits.max_num_seqs
    decode_step_s = model.predict_s(BatchShape(num_decodes=seqs))
    decode_per_token_s = decode_step_s / seqs
    kv_per_token_s = (model.predict_s(BatchShape(num_decodes=seqs, decode_kv_tokens=seqs * 1000)) - decode_step_s) / (
        seqs * 1000
    )
    first = min(r[0] for r in requests)
    feasible = 0
    busy_s = 0.0
    latest_end = first
    for arrival, prompt, output, ttft_s, tbt_s in requests:
        alone_prefill = model.predict_s(BatchShape().plus_prefill(prompt, context_tokens=0))
        alone_decode = model.predict_s(BatchShape(num_decodes=1, decode_kv_tokens=prompt))
        if (ttft_s is None or alone_prefill <= ttft_s) and (tbt_s is None or alone_decode <= tbt_s):
            feasible += 1
        mean_context = prompt + output / 2
        busy_s += prompt * prefill_per_token_s + max(output - 1, 0) * (
            decode_per_token_s + kv_per_token_s * mean_context
        )
        latest_end = max(latest_end, arrival + alone_prefill + max(output - 1, 0) * alone_decode)
    span_s = max(latest_end - first, busy_s)
    return GoodputBound(feasible, busy_s, span_s, feasible / span_s if span_s > 0 else 0.0)
