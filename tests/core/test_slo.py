"""The SLO verdict of README's "Metrics" (tight: TTFT 0.5 s, TBT 50 ms; batch: 60 s deadline)."""

from __future__ import annotations

from accelgen.core.slo import TokenTimeline, late_tokens_allowed
from tests.support.factories import make_tiers

TIERS = make_tiers()


def timeline(times: list[float], tier: str = "tight") -> TokenTimeline:
    t = TokenTimeline(TIERS.get(tier), arrival_s=0.0)
    for now in times:
        t.token(now)
    return t


def test_allowed_late_tokens_is_one_percent_at_least_one() -> None:
    assert [late_tokens_allowed(n) for n in (1, 100, 101, 250)] == [1, 1, 2, 3]


def test_gaps_and_late_tokens() -> None:
    t = timeline([0.2, 0.24, 0.30, 0.33])  # gaps 40, 60 (late), 30 ms
    assert t.ttft_s == 0.2 and t.num_tokens == 4 and t.num_late == 1
    assert t.meets_slo(0.33)  # one late token is allowed


def test_two_late_tokens_of_few_fail() -> None:
    t = timeline([0.2, 0.3, 0.4])
    assert t.num_late == 2 and not t.meets_slo(0.4)
    assert t.meets_slo(0.4, num_output_tokens=200)  # 200 outputs allow 2


def test_late_first_token_fails() -> None:
    assert not timeline([0.6, 0.61]).meets_slo(0.61)
    assert not TokenTimeline(TIERS.get("tight"), 0.0).meets_slo(1.0)  # no token at all


def test_offline_is_judged_by_its_deadline() -> None:
    slow = timeline([10.0, 30.0], tier="batch")  # gaps do not matter offline
    assert slow.num_late == 0 and slow.meets_slo(59.9) and not slow.meets_slo(60.1)
