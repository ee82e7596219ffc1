"""The operator's status computed from what a real sidecar answers on ``GET /stats``.

The sidecar runs in-process with the simulated engine; the operator's parser and status
functions read its answer as they read a pod's, so the two sides of the wire are
checked against each other, not against a hand-written fixture.
"""

from __future__ import annotations

from typing import Any

import httpx
import pytest

from accelgen.wire import STATS_VERSION
from accelgen_operator.status import aggregate, parse_pod_stats, slo_condition, tier_status
from tests.support.sidecar import TIERS, Stack

SENT = {"interactive": 4, "batch": 2}
MAX_TOKENS = 5


def _send(stack: Stack) -> None:
    for tier, n in SENT.items():
        for _ in range(n):
            body = {"model": "accelgen-sim", "prompt": "hello", "max_tokens": MAX_TOKENS}
            resp = httpx.post(stack.url + "/v1/completions", json=body, headers={"x-accelgen-tier": tier}, timeout=30)
            assert resp.status_code == 200, resp.text


def test_operator_status_from_a_real_sidecar_snapshot() -> None:
    stack = Stack(pool="pool-op").start()
    try:
        _send(stack)
        answer: dict[str, Any] = httpx.get(stack.url + "/stats", timeout=5).json()
    finally:
        stack.stop()
    assert answer["version"] == STATS_VERSION and answer["pool"] == "pool-op"
    sent_rows = {row["name"]: row for row in answer["tiers"]}
    assert {name: sent_rows[name]["completed"] for name in SENT} == SENT
    assert sent_rows["standard"]["completed"] == 0 and sent_rows["standard"]["attainment"] == 1.0

    pod = parse_pod_stats(answer)
    assert [t.name for t in pod.tiers] == [t.name for t in TIERS]
    # Two pods that answered the same: counts add up, attainment and p99s do not move.
    pool = aggregate([pod, pod], tier_order=[t.name for t in TIERS])
    rows = {row["name"]: row for row in tier_status(pool, TIERS)}
    for name, sent in sent_rows.items():
        row = rows[name]
        assert (row["completed"], row["sloMet"], row["rejected"]) == (
            2 * sent["completed"],
            2 * sent["slo_met"],
            2 * sent["rejected"],
        )
        assert row["goodputRps"] == pytest.approx(2 * sent["goodput_rps"], abs=1e-6)
        assert row["goodputTokensPerSecond"] == pytest.approx(2 * sent["goodput_tokens_per_s"], abs=1e-6)
        assert row["throughputRps"] == pytest.approx(2 * sent["throughput_rps"], abs=1e-6)
        assert row["ttftP99Seconds"] == pytest.approx(sent["ttft_p99_s"], abs=1e-6)
        assert row["tbtP99Seconds"] == pytest.approx(sent["tbt_p99_s"], abs=1e-6)
        if sent["completed"]:
            assert row["attainment"] == round(sent["attainment"], 4)
        else:  # an empty window's 1.0 is not reported as measured
            assert "attainment" not in row
    assert all(sent_rows[name]["num_tokens"] == n * MAX_TOKENS for name, n in SENT.items())

    condition = slo_condition(pool, TIERS)
    missed = [
        t.name
        for t in TIERS
        if sent_rows[t.name]["completed"] and sent_rows[t.name]["attainment"] < t.attainment_target
    ]
    assert (condition.status, condition.reason) == (("False", "BelowTarget") if missed else ("True", "TargetsMet"))
    assert condition.message.startswith(f"{len(SENT)} tier(s)") or missed
