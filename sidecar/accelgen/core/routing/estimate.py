"""What a pod can still take, from what it reports: prefill rate, work ahead, TTFT, headroom.

A pod running AccelGen's planner prefills beside its decodes at the rate its tightest
running TBT leaves: an iteration of duration ``d`` decodes the running batch (the
``decode_step_s`` it reports) and prefills ``(d − decode_step_s) / prefill_s_per_token``
tokens; with ``d`` the tightest TBT (steps may not be longer)::

    rate = (tbt − decode_step) / (prefill_s_per_token · tbt)     tokens per second
    (no TBT running: 1 / prefill_s_per_token, the whole iteration is prefill)

A new request of a tier waits for the prompt tokens queued ahead of it: those of tiers
at least as urgent (a smaller first-token target; offline tiers after every online one,
by deadline), since the pod's admission and planner order by slack. Its predicted TTFT
is (tokens ahead + its own) / rate; its headroom is what fits in its target.

Every function returns ``None`` where the pod did not report what it needs.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping

from accelgen.core.routing.types import PodState, RouteRequest
from accelgen.core.tiers import SLOTier

#: The least share of an iteration left to prefill when the TBT budget is all decode:
#: a planner with lost deadlines still makes some progress (it serves them late).
MIN_PREFILL_SHARE = 0.05


def prefill_rate_tokens_per_s(
    *, decode_step_s: float | None, prefill_s_per_token: float | None, tightest_tbt_s: float | None
) -> float | None:
    """Prompt tokens per second the pod prefills beside its running batch (module docstring)."""
    if decode_step_s is None or prefill_s_per_token is None or prefill_s_per_token <= 0:
        return None
    if tightest_tbt_s is None or tightest_tbt_s <= 0:
        return 1.0 / prefill_s_per_token
    share = max(MIN_PREFILL_SHARE, (tightest_tbt_s - decode_step_s) / tightest_tbt_s)
    return share / prefill_s_per_token


def pod_rate(pod: PodState) -> float | None:
    return prefill_rate_tokens_per_s(
        decode_step_s=pod.decode_step_s, prefill_s_per_token=pod.prefill_s_per_token, tightest_tbt_s=pod.tightest_tbt_s
    )


def urgency_s(tier: SLOTier) -> tuple[int, float]:
    """A tier's order among tiers: online by first-token target, then offline by deadline."""
    if tier.is_offline:
        return (1, tier.deadline_s or math.inf)
    return (0, tier.ttft_slo_s if tier.ttft_slo_s is not None else math.inf)


def request_urgency_s(request: RouteRequest) -> tuple[int, float]:
    if request.ttft_slo_s is not None:
        return (0, request.ttft_slo_s)
    return (1, request.deadline_s if request.deadline_s is not None else math.inf)


def tokens_ahead(pod: PodState, urgency: tuple[int, float], tiers: Mapping[str, SLOTier] | None) -> int | None:
    """Prompt tokens queued on ``pod`` that go before a request of ``urgency``.

    Without the tiers (or per-tier counts), every queued token counts: the pessimistic
    answer a tier-blind picker has.
    """
    if tiers is None or not pod.queued_tokens_by_tier:
        return pod.queued_prefill_tokens
    return sum(
        n for name, n in pod.queued_tokens_by_tier.items() if name not in tiers or urgency_s(tiers[name]) <= urgency
    )


def predicted_ttft_s(pod: PodState, request: RouteRequest, tiers: Mapping[str, SLOTier] | None) -> float | None:
    """When ``request`` would get its first token on ``pod``, counted from now."""
    rate = pod_rate(pod)
    ahead = tokens_ahead(pod, request_urgency_s(request), tiers)
    if rate is None or ahead is None:
        return None
    return (ahead + request.prompt_tokens) / rate + (pod.decode_step_s or 0.0)


def predicted_tpot_s(pod: PodState) -> float | None:
    """The time between its tokens on ``pod``: one more decode in the running batch."""
    if pod.decode_step_s is None or pod.prefill_s_per_token is None:
        return None
    return pod.decode_step_s + pod.prefill_s_per_token


def headroom_tokens(
    tiers: Iterable[SLOTier],
    *,
    queued_tokens_by_tier: Mapping[str, int],
    decode_step_s: float,
    prefill_s_per_token: float,
    tightest_tbt_s: float | None,
    kv_free_tokens: int | None = None,
) -> dict[str, float]:
    """Per tier, the prompt tokens of new work of that tier the pod can start in its target.

    The unit of :attr:`PodState.headroom`: the tokens the pod prefills within the tier's
    first-token target (its deadline, offline) less the tokens ahead of them, at most
    the KV still free once what is queued has its share. Negative: over by that much.
    """
    tiers = list(tiers)
    rate = prefill_rate_tokens_per_s(
        decode_step_s=decode_step_s, prefill_s_per_token=prefill_s_per_token, tightest_tbt_s=tightest_tbt_s
    )
    assert rate is not None
    by_name = {t.name: t for t in tiers}
    queued = sum(queued_tokens_by_tier.values())
    out: dict[str, float] = {}
    for tier in tiers:
        urgency = urgency_s(tier)
        ahead = sum(
            n for name, n in queued_tokens_by_tier.items() if name not in by_name or urgency_s(by_name[name]) <= urgency
        )
        target_s = tier.deadline_s if tier.is_offline else tier.ttft_slo_s
        room = rate * max(0.0, (target_s or 0.0) - decode_step_s) - ahead
        if kv_free_tokens is not None:
            room = min(room, float(kv_free_tokens - queued))
        out[tier.name] = room
    return out
