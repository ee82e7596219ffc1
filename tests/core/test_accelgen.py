"""AccelGen's mechanisms on hand-built cases whose right answer is worked out here.

The test model costs 10 ms + 0.1 ms per token; the tight tier has TBT 50 ms and the
default safety margin is 5 ms.
"""

from __future__ import annotations

import math

import pytest

from accelgen.core.config import PolicyConfig
from accelgen.core.latency import BatchShape, FittedLatencyModel
from accelgen.core.plan import IterationPlan
from accelgen.core.policy import Policy
from tests.support.factories import make_limits, make_planner, make_request, make_tiers, place_running


def plan_with_one_decode(now: float, *, decode_tier: str = "tight", prompt: int = 3000) -> IterationPlan:
    """A decode of ``decode_tier`` whose last token was at 0, and a loose prompt waiting."""
    tiers = make_tiers()
    planner = make_planner()
    place_running(planner, make_request("d", tier=tiers.get(decode_tier), prompt=50), outputs=3, last_token_s=0.0)
    planner.add_request(make_request("p", tier=tiers.get("loose"), prompt=prompt))
    return planner.plan(now=now)


def test_budget_follows_tightest_running_deadline() -> None:
    """S_b = largest s with 10 ms + 0.1 ms·s ≤ (deadline − now − margin)."""
    plan = plan_with_one_decode(0.0)
    # limit = 50 ms − 5 ms = 45 ms → s ≤ (0.045 − 0.010) / 0.0001 = 350 tokens (1 decode + 349)
    assert plan.budget_tokens == 350
    assert [(c.request.request_id, c.num_tokens) for c in plan.chunks] == [("d", 1), ("p", 349)]
    assert plan.predicted_s <= 0.045 + 1e-12
    # 20 ms later the same decode (not yet run) leaves 25 ms: s ≤ 150.
    assert plan_with_one_decode(20e-3).budget_tokens == 150


def test_budget_is_full_without_tight_work() -> None:
    """Only a loose decode (TBT 500 ms): limit 495 ms → 4850 tokens, capped at 4096."""
    plan = plan_with_one_decode(0.0, decode_tier="loose", prompt=6000)
    assert plan.budget_tokens == 4096
    assert plan.num_tokens == 4096


def test_lost_deadline_restarts_the_clock() -> None:
    """A decode past its deadline no longer counts its remaining time (none is left), but
    its next token is due one TBT after this one: the iteration is held to 45 ms again."""
    tiers = make_tiers()
    planner = make_planner()
    place_running(planner, make_request("late", tier=tiers.get("tight"), prompt=50), outputs=3, last_token_s=0.0)
    planner.add_request(make_request("p", tier=tiers.get("loose"), prompt=6000))
    plan = planner.plan(now=0.2)  # its deadline was 0.05
    assert plan.budget_tokens == 350
    assert plan.chunks[0].request.request_id == "late"  # still served first


def test_idle_engine_admits_a_tier_tighter_than_one_decode() -> None:
    """TBT 5 ms is below the 10 ms floor of any iteration: admitted anyway when idle."""
    from accelgen.core.tiers import parse_tiers

    tiers = parse_tiers({"default_tier": "x", "tiers": [{"name": "x", "ttft_ms": 100, "tbt_ms": 5}]})
    planner = make_planner(tiers=tiers)
    planner.add_request(make_request("r", tier=tiers.get("x"), prompt=20))
    plan = planner.plan(now=0.0)
    assert [c.request.request_id for c in plan.chunks] == ["r"]
    planner.update(plan, now=0.011)
    planner.add_request(make_request("s", tier=tiers.get("x"), prompt=20, arrival_s=0.011))
    # Now one is running: a second would only make both miss every token.
    assert "s" not in {c.request.request_id for c in planner.plan(now=0.011).chunks}


def test_no_dynamic_chunking_ablation_uses_fixed_budget() -> None:
    tiers = make_tiers()
    planner = make_planner("accelgen-no-chunking")
    place_running(planner, make_request("d", tier=tiers.get("tight"), prompt=50), outputs=3, last_token_s=0.0)
    planner.add_request(make_request("p", tier=tiers.get("loose"), prompt=6000))
    assert planner.plan(now=0.0).budget_tokens == 4096


def test_best_fit_picks_the_demand_closest_to_what_remains() -> None:
    """KV 100 blocks × 16, budget 4096, one γ window holding C (100 tok), B (400), A (1500).

    Remaining (1, 1); distances: A (1500 tok, 94 blocks) → |(0.634, 0.06)| = 0.64,
    B → |(0.902, 0.75)| = 1.17, C → |(0.976, 0.93)| = 1.35: A first. First fit takes
    the head of the queue: B, whose two chunks' worth of prompt leave it the least slack
    (0.51 − 2 × 0.05 = 0.41 s latest start, against C's 0.45 s).
    """
    tiers = make_tiers()
    config = PolicyConfig(gamma_s=100.0)
    picks = {}
    for name in ("accelgen", "accelgen-no-bestfit"):
        planner = make_planner(name, limits=make_limits(blocks=100), config=config)
        planner.add_request(make_request("C", tier=tiers.get("tight"), prompt=100, arrival_s=0.0))
        planner.add_request(make_request("B", tier=tiers.get("tight"), prompt=400, arrival_s=0.01))
        planner.add_request(make_request("A", tier=tiers.get("loose"), prompt=1500, arrival_s=0.02))
        plan = planner.plan(now=0.02)
        picks[name] = [c.request.request_id for c in plan.chunks]
        assert sum(c.request.num_blocks for c in plan.chunks) <= 100
    assert picks["accelgen"][0] == "A"
    assert picks["accelgen-no-bestfit"][0] == "B"


def test_exclusive_long_prompt_allocation() -> None:
    """While one long prompt is mid-prefill, a new long prompt waits; a short one may go."""
    tiers = make_tiers()
    planner = make_planner(limits=make_limits(max_batched=1000), config=PolicyConfig(long_prompt_tokens=1000))
    first = make_request("L1", tier=tiers.get("loose"), prompt=3000, arrival_s=0.0)
    planner.add_request(first)
    plan = planner.plan(now=0.0)
    assert [(c.request.request_id, c.num_tokens) for c in plan.chunks] == [("L1", 1000)]
    planner.update(plan, now=0.1)
    planner.add_request(make_request("L2", tier=tiers.get("tight"), prompt=1200, arrival_s=0.1))
    planner.add_request(make_request("S", tier=tiers.get("loose"), prompt=200, arrival_s=0.1))
    plan = planner.plan(now=0.1)
    ids = [c.request.request_id for c in plan.chunks]
    assert "L2" not in ids
    assert "L1" in ids


def test_kv_starved_preempts_largest_slack_not_tight() -> None:
    """KV full: an urgent tight prompt displaces the offline decode (largest slack).

    10 blocks of 16: batch holds 6 (96 tokens), tight 3 (48); "new" needs 4 blocks now
    and, with its 4 output tokens, 4 for life; tight will still claim 1 more.
    """
    tiers = make_tiers()
    planner = make_planner(limits=make_limits(blocks=10))
    batch = place_running(
        planner, make_request("batch", tier=tiers.get("batch"), prompt=95, max_tokens=4), outputs=1, last_token_s=0.0
    )
    tight = place_running(
        planner, make_request("tight", tier=tiers.get("tight"), prompt=47, max_tokens=4), outputs=1, last_token_s=0.0
    )
    assert planner.free_blocks == 1
    # Arrived 0.45 s ago with a 0.5 s TTFT: slack ≈ 0, it must run now.
    planner.add_request(make_request("new", tier=tiers.get("tight"), prompt=60, arrival_s=-0.45, max_tokens=4))
    plan = planner.plan(now=0.0)
    assert [r.request_id for r in plan.preempted] == ["batch"]
    ids = {c.request.request_id for c in plan.chunks}
    assert {"tight", "new"} <= ids and "batch" not in ids
    assert batch.num_blocks == 0 and batch.num_computed_tokens == 0 and tight.num_blocks > 0
    assert planner.free_blocks >= 0


def test_urgent_request_goes_before_looser_ones() -> None:
    tiers = make_tiers()
    planner = make_planner(limits=make_limits(max_batched=600))
    planner.add_request(make_request("loose", tier=tiers.get("loose"), prompt=500, arrival_s=0.0))
    planner.add_request(make_request("urgent", tier=tiers.get("tight"), prompt=500, arrival_s=0.0))
    plan = planner.plan(now=0.46)  # tight TTFT deadline 0.5: slack < one iteration
    assert plan.chunks[0].request.request_id == "urgent"
    assert plan.chunks[0].num_tokens == 500


def test_decode_load_admission_holds_back_new_work() -> None:
    """If one more decode would push the decode step past 80 % of TBT, do not admit."""
    tiers = make_tiers()
    planner = make_planner(limits=make_limits(blocks=10_000))
    # 10 ms + 0.1 ms per decode: 300 decodes → 40 ms = 80 % of 50 ms. Start 300.
    for i in range(300):
        place_running(planner, make_request(f"d{i}", tier=tiers.get("tight"), prompt=10), outputs=1, last_token_s=0.0)
    planner.add_request(make_request("new", tier=tiers.get("loose"), prompt=10))
    plan = planner.plan(now=0.0)
    assert "new" not in {c.request.request_id for c in plan.chunks}
    assert planner.num_waiting == 1


@pytest.mark.parametrize("now", [0.0, 0.01, 0.03])
def test_planned_iteration_fits_the_tightest_deadline(now: float) -> None:
    tiers = make_tiers()
    planner = make_planner()
    for i, last in enumerate((0.0, 0.01, 0.02)):
        place_running(planner, make_request(f"d{i}", tier=tiers.get("tight"), prompt=64), outputs=2, last_token_s=last)
    planner.add_request(make_request("p", tier=tiers.get("loose"), prompt=5000))
    plan = planner.plan(now=now)
    earliest = min(r.last_token_s + 0.05 for r in planner.running if r.request_id.startswith("d"))  # type: ignore[operator]
    assert plan.predicted_s <= earliest - now - 0.005 + 1e-12
    assert not math.isclose(plan.shape.num_prefill_tokens, 0)
    assert plan.shape == BatchShape(
        num_prefill_tokens=plan.shape.num_prefill_tokens,
        num_decodes=3,
        prefill_attention_pairs=plan.shape.prefill_attention_pairs,
        decode_kv_tokens=3 * 65,
        num_prefills=1,  # a fresh prompt: no cached context
    )


def test_no_preemption_when_it_cannot_make_room() -> None:
    """Evicting every candidate would still not fit the request: evict nobody."""
    tiers = make_tiers()
    planner = make_planner(limits=make_limits(blocks=10))
    place_running(
        planner, make_request("batch", tier=tiers.get("batch"), prompt=31, max_tokens=4), outputs=1, last_token_s=0.0
    )
    place_running(
        planner, make_request("tight", tier=tiers.get("tight"), prompt=111, max_tokens=4), outputs=1, last_token_s=0.0
    )
    planner.add_request(make_request("new", tier=tiers.get("tight"), prompt=100, arrival_s=-0.45, max_tokens=4))
    plan = planner.plan(now=0.0)
    assert plan.preempted == ()
    assert "new" not in {c.request.request_id for c in plan.chunks}


def test_a_chunk_whose_context_alone_costs_the_tbt_waits_for_the_tight_decodes() -> None:
    """Deep into a long prompt, each chunk reads the whole cached context: with a tight
    decode running, no chunk of it fits the TBT however small, so none is planned (a cut
    chunk would still overrun); once the tight request is gone, the prompt proceeds."""
    tiers = make_tiers()
    # 2 ms a step, 0.1 ms a token, 20 µs per cached KV token a chunk reads.
    model = FittedLatencyModel(coefficients=(0.002, 1e-4, 0.0, 0.0, 0.0, 0.0, 2e-5, 0.0))
    planner = make_planner(model=model, config=PolicyConfig(safety_margin_s=0.005))
    doc = place_running(
        planner, make_request("doc", tier=tiers.get("loose"), prompt=8000), outputs=0, last_token_s=None
    )
    doc.num_computed_tokens = 3000  # mid-prefill: 3,000 tokens cached, 60 ms to read them
    chat = place_running(planner, make_request("chat", tier=tiers.get("tight"), prompt=64), outputs=3, last_token_s=0.0)
    plan = planner.plan(now=0.0)
    assert [c.request.request_id for c in plan.chunks] == ["chat"]
    assert plan.predicted_s <= 0.05 - 0.005
    planner.finish(chat, now=0.01)
    alone = planner.plan(now=0.01)
    assert [c.request.request_id for c in alone.chunks] == ["doc"] and alone.chunks[0].num_tokens > 0


def test_decodes_with_slack_to_spare_give_way_to_a_prompt_with_less() -> None:
    """250 offline decodes (a 60 s deadline) and one tight decode leave 9.9 ms of the 45 ms
    for prefill: 99 tokens of a tight prompt whose TTFT slack is 0.45 s. The offline
    decodes' slack is ~60 s, so they give way: the whole 300-token prompt runs beside the
    tight decode (40.1 ms), and the 4.9 ms left runs 49 of the offline decodes. With no
    prompt waiting, all 251 decodes run."""
    tiers = make_tiers()

    def planner_with_decodes() -> Policy:
        planner = make_planner()
        place_running(planner, make_request("tight", tier=tiers.get("tight"), prompt=50), outputs=3, last_token_s=0.0)
        for i in range(250):
            batch = make_request(f"b{i}", tier=tiers.get("batch"), prompt=10, max_tokens=4)  # KV for all
            place_running(planner, batch, outputs=1, last_token_s=0.0)
        return planner

    assert len(planner_with_decodes().plan(now=0.0).chunks) == 251
    planner = planner_with_decodes()
    planner.add_request(make_request("chat", tier=tiers.get("tight"), prompt=300))
    plan = planner.plan(now=0.0)
    tokens = {c.request.request_id: c.num_tokens for c in plan.chunks}
    assert tokens["chat"] == 300 and tokens["tight"] == 1
    assert sum(1 for r in tokens if r.startswith("b")) == 49
    assert plan.predicted_s <= 0.045 + 1e-12
