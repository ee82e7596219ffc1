"""Each routing policy's own behaviour, and the estimates the tier-aware ones place by."""

from __future__ import annotations

from collections import Counter

import pytest

from accelgen.core.routing import PodState, RouteRequest, RouterQueue, make_router
from accelgen.core.routing.estimate import headroom_tokens, predicted_ttft_s, prefill_rate_tokens_per_s
from accelgen.core.tiers import SLOTier, TierSet

TIERS = TierSet(
    (
        SLOTier("interactive", ttft_slo_s=1.0, tbt_slo_s=0.1),
        SLOTier("summarize", ttft_slo_s=5.0, tbt_slo_s=0.25),
        SLOTier("batch", deadline_s=300.0),
    ),
    "interactive",
)
PER_TOKEN_S = 1e-4  # 10k prefill tokens per second on an idle pod
DECODE_S = 0.02


def request(tier: str = "interactive", prompt_tokens: int = 300, *, arrival_s: float = 0.0) -> RouteRequest:
    t = TIERS.get(tier)
    return RouteRequest(
        tier, prompt_tokens, 100, t.ttft_slo_s, t.tbt_slo_s, t.deadline_s, sheddable=True, arrival_s=arrival_s
    )


def pod(name: str, **fields: object) -> PodState:
    return PodState(name=name, address=f"{name}:8000", **fields)  # type: ignore[arg-type]


def reporting(name: str, *, queued: dict[str, int] | None = None, long_prompts: int = 0, **fields: object) -> PodState:
    """A pod that reports what AccelGen's sidecar does, its headroom computed from its queue."""
    by_tier = {t.name: 0 for t in TIERS} | (queued or {})
    decode = float(fields.pop("decode_step_s", DECODE_S))  # type: ignore[arg-type]
    tightest = fields.pop("tightest_tbt_s", 0.1)
    kv_free = fields.pop("kv_free_tokens", 1_000_000)
    room = headroom_tokens(
        TIERS,
        queued_tokens_by_tier=by_tier,
        decode_step_s=decode,
        prefill_s_per_token=PER_TOKEN_S,
        tightest_tbt_s=tightest,  # type: ignore[arg-type]
        kv_free_tokens=kv_free,  # type: ignore[arg-type]
    )
    return pod(
        name,
        headroom=room,
        queued_prefill_tokens=sum(by_tier.values()),
        queued_tokens_by_tier=by_tier,
        decode_step_s=decode,
        prefill_s_per_token=PER_TOKEN_S,
        tightest_tbt_s=tightest,
        long_prompts=long_prompts,
        max_num_seqs=256,
        kv_free_tokens=kv_free,
        **fields,
    )


# ------------------------------------------------------------------ the gateway's policies


def test_random_spreads_over_every_ready_pod() -> None:
    pods = [pod(f"p{i}") for i in range(4)] + [pod("down", ready=False)]
    r = make_router("random", seed=3)
    counts = Counter(r.pick(request(), pods, 0.0).pod for _ in range(800))
    assert set(counts) == {"p0", "p1", "p2", "p3"}
    assert min(counts.values()) > 120  # 200 expected each


def test_round_robin_takes_the_ready_pods_in_turn() -> None:
    pods = [pod("a"), pod("b", ready=False), pod("c"), pod("d")]
    r = make_router("round-robin")
    assert [r.pick(request(), pods, 0.0).pod for _ in range(6)] == ["a", "c", "d", "a", "c", "d"]


def test_least_requests_takes_the_less_loaded_of_two() -> None:
    pods = [pod("busy", waiting=5, running=30), pod("light", waiting=0, running=3)]
    r = make_router("least-requests", seed=1)
    assert {r.pick(request(), pods, 0.0).pod for _ in range(20)} == {"light"}


def test_queue_kv_prefers_the_short_queue() -> None:
    pods = [pod("long", waiting=12, kv_usage=0.3), pod("short", waiting=1, kv_usage=0.3), pod("mid", waiting=6)]
    r = make_router("queue-kv")
    decision = r.pick(request(), pods, 0.0)
    assert decision.pod == "short"


def test_queue_kv_weighs_queue_and_kv_alike() -> None:
    r = make_router("queue-kv", seed=2)
    # Equal queues: the emptier KV cache wins.
    assert r.pick(request(), [pod("full", waiting=3, kv_usage=0.9), pod("empty", waiting=3, kv_usage=0.1)], 0).pod == (
        "empty"
    )
    # Shortest queue with a full cache against the longest with an empty one: 2 + 0 = 0 + 2, a tie, either.
    tie = [pod("q", waiting=0, kv_usage=1.0), pod("kv", waiting=9, kv_usage=0.0)]
    assert {r.pick(request(), tie, 0.0).pod for _ in range(40)} == {"q", "kv"}
    # Queue 1/9 of the way from the shortest and KV half used beats the shortest with a full cache.
    assert r.pick(request(), [pod("a", waiting=1, kv_usage=0.5), *tie], 0.0).pod == "a"


def test_predicted_latency_counts_only_the_work_ahead_at_its_tier() -> None:
    # "loose" holds a long batch backlog that an interactive request overtakes; "tight" holds
    # less, but all of it interactive and ahead of it.
    loose = reporting("loose", queued={"batch": 40_000})
    tight = reporting("tight", queued={"interactive": 5_000})
    r = make_router("predicted-latency", tiers=TIERS)
    assert r.pick(request("interactive"), [tight, loose], 0.0).pod == "loose"
    assert r.pick(request("batch"), [loose, tight], 0.0).pod == "tight"  # the batch one waits for both
    blind = make_router("predicted-latency")  # without the tiers every queued token is ahead
    assert blind.pick(request("interactive"), [loose, tight], 0.0).pod == "tight"


def test_predicted_latency_prefers_a_pod_meeting_both_targets() -> None:
    slow_steps = reporting("slow", decode_step_s=0.12)  # no queue, but one more decode misses the TBT
    queued = reporting("queued", queued={"interactive": 3_000})
    decision = make_router("predicted-latency", tiers=TIERS).pick(request(), [slow_steps, queued], 0.0)
    assert decision.pod == "queued" and "meets both" in decision.reason


# ------------------------------------------------------------------------------- accelgen


def test_accelgen_spreads_long_prompts_one_per_pod() -> None:
    r = make_router("accelgen", tiers=TIERS)
    # The pod holding a long prompt has more room; the long prompt still goes where none is.
    busy = reporting("busy", long_prompts=1)
    other = reporting("other", queued={"summarize": 8_000})
    assert r.pick(request("summarize", 12_000), [busy, other], 0.0).pod == "other"
    # A tight request keeps off a pod holding a long prompt where another has room for it ...
    assert r.pick(request("interactive", 300), [busy, reporting("q", queued={"interactive": 4_000})], 0).pod == "q"
    # ... and where every pod holds one, goes where there is most room.
    also_busy = reporting("also", long_prompts=1, queued={"interactive": 4_000})
    assert r.pick(request("interactive", 300), [busy, also_busy], 0).pod == "busy"


def test_accelgen_holds_a_long_prompt_while_every_pod_prefills_one() -> None:
    r = make_router("accelgen", tiers=TIERS)
    pods = [reporting("a", long_prompts=1), reporting("b", long_prompts=2)]
    assert r.pick(request("summarize", 6_000), pods, 0.0).queue
    # ... unless waiting longer would cost it its first token: then the pod with fewest.
    late = r.pick(request("summarize", 6_000, arrival_s=0.0), pods, 3.6)
    assert late.pod == "a"


def test_accelgen_puts_tight_requests_where_their_tbt_holds() -> None:
    r = make_router("accelgen", tiers=TIERS)
    steps_too_long = reporting("slow", decode_step_s=0.1, tightest_tbt_s=None)  # one more decode: over 100 ms
    holds = reporting("holds", queued={"interactive": 2_000})
    assert r.pick(request("interactive"), [steps_too_long, holds], 0.0).pod == "holds"


def test_accelgen_puts_long_prompts_where_fewest_tight_requests_run() -> None:
    r = make_router("accelgen", tiers=TIERS)
    crowded = reporting("crowded", running=40, running_by_tier={"interactive": 40})
    loose = reporting(
        "loose", running=40, running_by_tier={"summarize": 30, "interactive": 10}, queued={"summarize": 9_000}
    )
    assert r.pick(request("summarize", 9_000), [crowded, loose], 0.0).pod == "loose"
    # A short looser request goes where its tier has the most room.
    assert r.pick(request("summarize", 500), [crowded, loose], 0.0).pod == "crowded"


def test_accelgen_queues_at_the_router_and_sheds_only_what_no_pod_serves_in_time() -> None:
    r = make_router("accelgen", tiers=TIERS)
    full = [reporting(f"p{i}", queued={"interactive": 9_000}) for i in range(3)]  # ~0.9 s ahead at its tier
    held = r.pick(request("interactive", 2_000), full, 0.0)
    assert held.queue and held.pod is None and "router" in held.reason
    # 0.9 s later, with the pods as full, an idle pod could not prefill it before its 1 s target.
    shed = r.pick(request("interactive", 2_000), full, 0.9)
    assert shed.shed and "in time" in shed.reason
    # Not sheddable: placed, best effort.
    keep = RouteRequest("interactive", 2_000, 100, 1.0, 0.1, sheddable=False)
    assert r.pick(keep, full, 0.9).pod is not None


def test_accelgen_counts_the_wait_at_the_router_against_the_room() -> None:
    r = make_router("accelgen", tiers=TIERS)
    pods = [reporting("a", queued={"interactive": 4_000})]
    assert r.pick(request("interactive", 2_000), pods, 0.0).pod == "a"
    assert r.pick(request("interactive", 2_000), pods, 0.5).queue  # half its target spent waiting


def test_accelgen_with_only_vllm_metrics_places_as_the_gateway_does() -> None:
    pods = [pod("long", waiting=9, kv_usage=0.5), pod("short", waiting=0, kv_usage=0.5)]
    decision = make_router("accelgen", tiers=TIERS).pick(request(), pods, 0.0)
    assert decision.pod == "short" and "no pod reports headroom" in decision.reason


# ------------------------------------------------------------------------------ estimates


def test_prefill_rate_is_what_the_tightest_tbt_leaves() -> None:
    assert prefill_rate_tokens_per_s(decode_step_s=0.02, prefill_s_per_token=1e-4, tightest_tbt_s=None) == 10_000
    assert prefill_rate_tokens_per_s(decode_step_s=0.02, prefill_s_per_token=1e-4, tightest_tbt_s=0.1) == (
        pytest.approx(8_000)
    )
    assert prefill_rate_tokens_per_s(decode_step_s=None, prefill_s_per_token=1e-4, tightest_tbt_s=0.1) is None


def test_headroom_is_in_prompt_tokens_and_falls_with_the_work_ahead() -> None:
    empty = reporting("e").headroom
    # 8,000 tokens/s for 1 s less one decode step.
    assert empty["interactive"] == pytest.approx(8_000 * (1.0 - DECODE_S))
    backlog = reporting("b", queued={"interactive": 3_000, "batch": 50_000}).headroom
    assert backlog["interactive"] == pytest.approx(empty["interactive"] - 3_000)  # batch goes after it
    assert backlog["summarize"] == pytest.approx(empty["summarize"] - 3_000)
    assert backlog["batch"] < empty["batch"] - 50_000
    capped = reporting("kv", kv_free_tokens=1_000).headroom
    assert max(capped.values()) == 1_000  # no more than the KV still free


def test_predicted_ttft_adds_its_own_prompt() -> None:
    p = reporting("p", queued={"interactive": 8_000}, tightest_tbt_s=None)
    assert predicted_ttft_s(p, request("interactive", 2_000), {t.name: t for t in TIERS}) == pytest.approx(
        1.0 + DECODE_S
    )


def test_router_queue_gives_least_slack_first() -> None:
    q: RouterQueue[str] = RouterQueue()
    for deadline, item in ((5.0, "loose"), (1.0, "tight"), (None, "whenever"), (3.0, "mid")):
        q.push(deadline, item)
    assert len(q) == 4
    assert q.ordered() == ["tight", "mid", "loose", "whenever"]
    assert len(q) == 0
