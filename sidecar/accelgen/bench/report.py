"""Rendering benchmark reports: the terminal table, the goals, and the rate-sweep plot."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table

COLUMNS: tuple[tuple[str, str, str], ...] = (
    # (header, key, format)
    ("thr req/s", "throughput_rps", "{:.2f}"),
    ("thr tok/s", "throughput_tokens_per_s", "{:.0f}"),
    ("good req/s", "goodput_rps", "{:.2f}"),
    ("good tok/s", "goodput_tokens_per_s", "{:.0f}"),
    ("attain", "attainment", "{:.1%}"),
    ("tok attain", "token_attainment", "{:.1%}"),
    ("TTFT p50", "ttft_p50_s", "{:.2f}s"),
    ("TTFT p99", "ttft_p99_s", "{:.2f}s"),
    ("TBT p99", "tbt_p99_s", "{:.3f}s"),
    ("latency", "latency_mean_s", "{:.1f}s"),
    ("preempt", "preemptions", "{:d}"),
    ("plan/iter", "plan_time_per_iteration_s", "{:.0f}"),
)


def _cell(key: str, fmt: str, value: Any) -> str:
    if value is None:
        return "–"  # not measured by this source (e.g. an outside client has no planner times)
    if key == "plan_time_per_iteration_s":
        return f"{value * 1e6:.0f}µs"
    return fmt.format(value)


def policy_table(report: Mapping[str, Any], *, title: str) -> Table:
    """One row per policy, the per-tier attainment in the last columns."""
    table = Table(title=title, title_justify="left")
    table.add_column("policy", no_wrap=True)
    for header, _, _ in COLUMNS:
        table.add_column(header, justify="right")
    policies = report["policies"]
    tier_names = list(next(iter(policies.values()))["tiers"]) if policies else []
    for name in tier_names:
        table.add_column(f"{name}", justify="right")
    for name, result in policies.items():
        cells = [_cell(key, fmt, result.get(key)) for _, key, fmt in COLUMNS]
        cells += [f"{result['tiers'][t]['attainment']:.1%}" for t in tier_names]
        table.add_row(name, *cells)
    return table


def print_report(report: Mapping[str, Any], console: Console | None = None) -> None:
    console = console or Console(width=250)
    rate = report.get("rate_rps")
    title = f"{report['workload']}" + (f" @ {rate:g} req/s" if rate else "") + f", {report['num_requests']} requests"
    console.print(policy_table(report, title=title))
    bound = report.get("upper_bound")
    if bound:
        console.print(
            f"analytic goodput upper bound: {bound['goodput_rps']:.2f} req/s "
            f"({bound['feasible_requests']} of {report['num_requests']} requests feasible alone)"
        )
    ratios = compare(report)
    if ratios:
        console.print("  ".join(f"{k}: {v:.2f}x" for k, v in ratios.items()))


def print_goals(goals: Mapping[str, Any]) -> None:
    """One line per goal of :func:`accelgen.bench.goals.cell_goals`: its value, what it must be, met or not."""
    print(f"goals (tight tier {goals['tight_tier']!r}, best stock {goals.get('best_stock', '-')}):")
    for key, goal in goals.items():
        if isinstance(goal, dict) and "met" in goal:
            value = goal["value"]
            shown = "-" if value is None else (f"{value:.4g}" if isinstance(value, float) else str(value))
            state = {True: "met", False: "MISSED", None: "not measured"}[goal["met"]]
            ceiling = goal.get("ceiling")
            bound = "" if ceiling is None else f"; at stock's throughput any policy gets at most {ceiling:.3f}"
            print(f"  {key}: {shown} ({goal['goal']}{bound}): {state}")
    print(f"  all goals: {'met' if goals['met'] else 'not met'}")


def compare(report: Mapping[str, Any]) -> dict[str, float]:
    """AccelGen's goodput as a multiple of each other policy's and of the bound."""
    policies = report["policies"]
    if "accelgen" not in policies:
        return {}
    ours = policies["accelgen"]["goodput_rps"]
    out = {}
    for name, result in policies.items():
        if name != "accelgen" and result["goodput_rps"] > 0:
            out[f"accelgen/{name}"] = ours / result["goodput_rps"]
    bound = report.get("upper_bound", {}).get("goodput_rps")
    if bound:
        out["accelgen/upper-bound"] = ours / bound
    return out


def plot_sweep(reports: Sequence[Mapping[str, Any]], path: Path) -> None:
    """Goodput and attainment against rate, one line per policy."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rates = [r["rate_rps"] for r in reports]
    names = list(reports[0]["policies"])
    fig, (ax_good, ax_att) = plt.subplots(1, 2, figsize=(12, 4.5))
    for name in names:
        style = {"linewidth": 2.5} if name == "accelgen" else {"linewidth": 1.2}
        ax_good.plot(rates, [r["policies"][name]["goodput_rps"] for r in reports], marker="o", label=name, **style)
        ax_att.plot(rates, [100 * r["policies"][name]["attainment"] for r in reports], marker="o", label=name, **style)
    ax_good.plot(rates, [r["upper_bound"]["goodput_rps"] for r in reports], "k--", label="upper bound")
    ax_good.set(xlabel="arrival rate (req/s)", ylabel="goodput (req/s)", title="Goodput")
    ax_att.set(xlabel="arrival rate (req/s)", ylabel="SLO attainment (%)", title="SLO attainment", ylim=(0, 101))
    ax_att.axhline(90, color="grey", linestyle=":", linewidth=1)
    for ax in (ax_good, ax_att):
        ax.grid(alpha=0.3)
    ax_att.legend(fontsize=8, loc="lower left")
    fig.suptitle(f"{reports[0]['workload']}: {reports[0]['engine']['latency_model']}")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)
