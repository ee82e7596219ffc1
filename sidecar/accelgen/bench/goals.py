"""The benchmark's goals, judged from one ``accelgen bench vllm`` report (pure: dicts in, dicts out).

AccelGen against the best stock configuration (the stock one with the higher goodput),
side by side on the same engine and requests, as the project states them:

    tight tier      attainment >= 95 % and >= stock's; late tokens <= 0.5 x stock's
    goodput         >= 1.3 x where stock keeps < 90 % of the tight tier, else >= 0.97 x
    throughput      >= 0.95 x
    latency model   measured / predicted p99 <= 1.25 (steps predicted at >= 20 ms)
    outside judge   vLLM's benchmark client gives the same verdict on the tight tier and
                    goodput goals as the replay
    simulator       within 10 % of the engine on goodput and attainment (AccelGen)

The tight tier is the one with the smallest TBT target. Each goal is ``{"value": ...,
"goal": "...", "met": bool | None}``; ``met`` is None when the report lacks what the
goal needs (no judge run, no simulator comparison, no step predicted at >= 20 ms).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

from accelgen.core.tiers import TierSet

OURS = "accelgen"
STOCK = ("vllm-fcfs", "vllm-priority")
SIM_TOLERANCE = 0.10
#: The goals the outside judge must give the same verdict on (from its own timings).
JUDGED = ("tight_attainment", "tight_late_tokens", "goodput_vs_stock")


def tight_tier(tiers: TierSet) -> str:
    """The tier with the smallest TBT target (the default tier when none has one)."""
    timed = [t for t in tiers if t.tbt_slo_s is not None]
    return min(timed, key=lambda t: t.tbt_slo_s or math.inf).name if timed else tiers.default


def _goal(value: float | None, goal: str, met: bool | None) -> dict[str, Any]:
    return {"value": value, "goal": goal, "met": met}


def _ratio(a: float, b: float) -> float:
    return a / b if b else (1.0 if a == 0 else math.inf)


def _ceiling(stock: Mapping[str, Any]) -> float | None:
    """What bounds the goodput ratio: at stock's throughput no policy gets more than
    1 ÷ stock's attainment (stock already has that share of its requests as goodput);
    where this is below the goal, the goal cannot be met in that run."""
    attainment = stock.get("attainment")
    return 1.0 / attainment if attainment else None


def versus_stock(policies: Mapping[str, Mapping[str, Any]], *, tight: str) -> dict[str, Any] | None:
    """The goals on tiers, goodput and throughput; None without AccelGen and a stock run."""
    ours = policies.get(OURS)
    stock = [policies[n] for n in STOCK if n in policies]
    if ours is None or not stock:
        return None
    best = max(stock, key=lambda r: r["goodput_rps"])
    best_name = next(n for n in STOCK if policies.get(n) is best)
    ours_tight, stock_tight = ours["tiers"][tight], best["tiers"][tight]
    attainment = ours_tight["attainment"]
    late = ours_tight.get("late_tokens")
    stock_late = stock_tight.get("late_tokens")
    goodput = _ratio(ours["goodput_rps"], best["goodput_rps"])
    stock_keeps = stock_tight["attainment"]
    need = 1.3 if stock_keeps < 0.9 else 0.97
    throughput = _ratio(ours["throughput_rps"], max(r["throughput_rps"] for r in stock))
    late_met = None if late is None or stock_late is None else late <= 0.5 * stock_late or late == 0
    return {
        "best_stock": best_name,
        "tight_attainment": _goal(
            attainment, f">= 95 % and >= stock's {stock_keeps:.1%}", attainment >= 0.95 and attainment >= stock_keeps
        ),
        "tight_late_tokens": _goal(late, f"<= 0.5 x stock's {stock_late}", late_met),
        "goodput_vs_stock": {**_goal(goodput, f">= {need}", goodput >= need), "ceiling": _ceiling(best)},
        "throughput_vs_stock": _goal(throughput, ">= 0.95", throughput >= 0.95),
    }


def cell_goals(report: Mapping[str, Any], *, tight: str) -> dict[str, Any]:
    """Every goal of one report (``accelgen bench vllm --json``), with an overall ``met``."""
    policies = report.get("policies") or {}
    goals: dict[str, Any] = {"tight_tier": tight}
    replay = versus_stock(policies, tight=tight)
    goals.update(replay or {})
    calibration = (policies.get(OURS) or {}).get("calibration") or {}
    p99 = calibration.get("in_use_ratio_p99")
    goals["latency_model_p99"] = _goal(p99, "<= 1.25", None if p99 is None else p99 <= 1.25)
    judged = report.get("judge")
    judge = versus_stock(judged["policies"], tight=tight) if judged else None
    agree = None
    if judge is not None and replay is not None:
        agree = all(judge[k]["met"] == replay[k]["met"] for k in JUDGED)
    goals["judge_agrees"] = _goal(
        None if agree is None else float(agree),
        f"the same verdicts ({', '.join(JUDGED)}) from vLLM's benchmark client",
        agree,
    )
    if judge is not None:
        goals["judge"] = judge
    sim = ((report.get("simulator") or {}).get("policies") or {}).get(OURS)
    ours = policies.get(OURS)
    if sim is not None and ours is not None:
        off = max(abs(_ratio(sim[k], ours[k]) - 1.0) if ours[k] else abs(sim[k]) for k in ("goodput_rps", "attainment"))
        goals["simulator_vs_engine"] = _goal(off, f"<= {SIM_TOLERANCE:.0%} apart", off <= SIM_TOLERANCE)
    else:
        goals["simulator_vs_engine"] = _goal(None, f"<= {SIM_TOLERANCE:.0%} apart", None)
    checks = [g["met"] for g in goals.values() if isinstance(g, dict) and "met" in g]
    goals["met"] = all(m is True for m in checks) if replay is not None else None
    return goals
