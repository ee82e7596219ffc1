"""Slack on hand-built requests (tight tier: TTFT 0.5 s, TBT 50 ms; batch: 60 s)."""

from __future__ import annotations

import pytest

from accelgen.core.policies.accelgen import AccelGenPolicy
from accelgen.core.slack import latest_start_s
from tests.support.factories import make_planner, make_request, make_tiers

TIERS = make_tiers()


def test_waiting_prompt_needs_its_iterations_before_the_ttft_deadline() -> None:
    r = make_request("r", tier=TIERS.get("tight"), prompt=1000, arrival_s=2.0)
    # 1000 tokens at 400 per iteration: 3 iterations of 0.1 s before 2.0 + 0.5.
    assert latest_start_s(r, ref_iteration_s=0.1, ref_chunk_tokens=400, expected_output_tokens=10) == pytest.approx(2.2)


def test_recomputing_request_answers_to_its_next_token_deadline() -> None:
    r = make_request("r", tier=TIERS.get("tight"), prompt=100, arrival_s=0.0)
    r.num_output_tokens, r.last_token_s = 5, 3.0  # preempted: computed back to 0
    # 105 tokens to recompute in one 0.05 s iteration before 3.0 + 0.05.
    assert latest_start_s(r, ref_iteration_s=0.05, ref_chunk_tokens=400, expected_output_tokens=9) == pytest.approx(3.0)


def test_offline_slack_counts_predicted_output() -> None:
    r = make_request("r", tier=TIERS.get("batch"), prompt=100, arrival_s=0.0)
    # one prefill iteration + 19 more decodes, each 0.05 s, before 60 s
    assert latest_start_s(r, ref_iteration_s=0.05, ref_chunk_tokens=400, expected_output_tokens=20) == pytest.approx(
        59.0
    )


def test_decode_slack_is_time_to_next_token_deadline() -> None:
    planner = make_planner()
    assert isinstance(planner, AccelGenPolicy)
    r = make_request("r", tier=TIERS.get("tight"), prompt=10)
    r.num_output_tokens, r.num_computed_tokens, r.last_token_s = 2, 11, 1.0
    assert planner._running_slack(r, now=1.02) == pytest.approx(0.03)


def test_expected_output_learns_the_tier_mean() -> None:
    planner = make_planner()
    assert isinstance(planner, AccelGenPolicy)
    r = make_request("r", tier=TIERS.get("batch"), prompt=10, max_tokens=64)
    assert planner.expected_output_tokens(r) == 64  # no history: max_tokens
    for n in (10, 30):
        done = make_request(f"d{n}", tier=TIERS.get("batch"), prompt=10)
        done.num_output_tokens = n
        planner.finish(done, now=0.0)
    assert planner.expected_output_tokens(r) == 20
    r.expected_output_tokens = 7  # the oracle's truth wins
    assert planner.expected_output_tokens(r) == 7
