"""The benchmark's goals judged from a report: each goal can fail, and a missing part is 'unknown'."""

from __future__ import annotations

from typing import Any

import pytest

from accelgen.bench.goals import cell_goals, tight_tier, versus_stock
from accelgen.core.tiers import parse_tiers

TIERS = parse_tiers(
    {
        "default_tier": "docs",
        "tiers": [
            {"name": "docs", "ttft_ms": 5000, "tbt_ms": 250},
            {"name": "chat", "ttft_ms": 1000, "tbt_ms": 50},
            {"name": "batch", "deadline_s": 60},
        ],
    }
)


def summary(goodput: float, throughput: float, chat_attainment: float, late: int) -> dict[str, Any]:
    return {
        "goodput_rps": goodput,
        "throughput_rps": throughput,
        "attainment": chat_attainment,
        "tiers": {"chat": {"attainment": chat_attainment, "late_tokens": late}},
    }


def report(ours: dict[str, Any], fcfs: dict[str, Any], priority: dict[str, Any], **extra: Any) -> dict[str, Any]:
    return {"policies": {"accelgen": ours, "vllm-fcfs": fcfs, "vllm-priority": priority}, **extra}


def test_the_tight_tier_is_the_smallest_tbt_not_the_default() -> None:
    assert tight_tier(TIERS) == "chat"


def test_a_win_where_stock_loses_the_tight_tier() -> None:
    goals = versus_stock(
        report(summary(2.6, 2.7, 0.99, 3), summary(1.5, 2.7, 0.5, 40), summary(1.9, 2.6, 0.7, 30))["policies"],
        tight="chat",
    )
    assert goals is not None and goals["best_stock"] == "vllm-priority"
    assert goals["goodput_vs_stock"]["met"] and goals["goodput_vs_stock"]["goal"] == ">= 1.3"
    # What bounds the ratio: stock (vllm-priority) met 70 % of its requests.
    assert goals["goodput_vs_stock"]["ceiling"] == pytest.approx(1 / 0.7)
    assert all(goals[k]["met"] for k in ("tight_attainment", "tight_late_tokens", "throughput_vs_stock"))


def test_where_stock_keeps_the_tight_tier_parity_is_enough_and_each_goal_can_fail() -> None:
    stock = summary(2.0, 2.0, 0.96, 10)
    even = versus_stock(report(summary(1.96, 1.96, 0.97, 5), stock, stock)["policies"], tight="chat")
    assert even is not None and even["goodput_vs_stock"]["goal"] == ">= 0.97" and even["goodput_vs_stock"]["met"]
    worse = versus_stock(report(summary(1.8, 1.85, 0.94, 6), stock, stock)["policies"], tight="chat")
    assert worse is not None
    assert not worse["goodput_vs_stock"]["met"] and not worse["throughput_vs_stock"]["met"]
    assert not worse["tight_attainment"]["met"]  # under 95 %
    assert not worse["tight_late_tokens"]["met"]  # 6 > 0.5 x 10


def test_cell_goals_need_every_part_and_say_which_is_missing() -> None:
    ours, stock = summary(2.6, 2.7, 0.99, 0), summary(1.5, 2.7, 0.5, 40)
    ours["calibration"] = {"in_use_ratio_p99": 1.1}
    bare = cell_goals(report(ours, stock, stock), tight="chat")
    assert bare["judge_agrees"]["met"] is None and bare["simulator_vs_engine"]["met"] is None
    assert bare["met"] is False  # unknown is not met
    full = cell_goals(
        report(
            ours,
            stock,
            stock,
            judge={"policies": {"accelgen": ours, "vllm-fcfs": stock}},
            simulator={"policies": {"accelgen": {"goodput_rps": 2.5, "attainment": 0.97}}},
        ),
        tight="chat",
    )
    assert full["judge_agrees"]["met"] and full["simulator_vs_engine"]["met"] and full["met"] is True
    ours["calibration"] = {"in_use_ratio_p99": 1.4}
    assert cell_goals(report(ours, stock, stock), tight="chat")["latency_model_p99"]["met"] is False


def test_the_judge_disagrees_when_its_timings_give_another_verdict_on_a_goal() -> None:
    ours, stock = summary(2.6, 2.7, 0.99, 0), summary(1.5, 2.7, 0.5, 40)
    judged_ours = summary(2.0, 2.7, 0.7, 30)  # the client saw many more late tokens
    goals = cell_goals(
        report(ours, stock, stock, judge={"policies": {"accelgen": judged_ours, "vllm-fcfs": stock}}), tight="chat"
    )
    assert goals["tight_attainment"]["met"] and not goals["judge"]["tight_attainment"]["met"]
    assert goals["judge_agrees"]["met"] is False and goals["met"] is False
