"""Rendering ``accelgen bench capacity``: the terminal tables and the attainment-vs-rate plot."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table


def _rps(value: float | None) -> str:
    return "–" if value is None else f"{value:.3f}"


def _ratio(value: float | None) -> str:
    return "–" if value is None else f"{value:.2f}"


def capacity_table(report: Mapping[str, Any]) -> Table:
    """One row per policy: its median capacity, the spread over seeds, each seed's."""
    mode = "full system (admission in front)" if report["admission"] else "engine alone"
    lo, hi = report["rate_range_rps"]
    title = (
        f"{report['workload']}: capacity, {mode}; seeds {report['seeds']}, "
        f"±{report['target_precision']:.0%}, searched {lo:g}–{hi:g} req/s"
    )
    table = Table(title=title, title_justify="left")
    for header in ("policy", "capacity req/s", "min", "max", "of bound", "per seed"):
        table.add_column(header, justify="left" if header in ("policy", "per seed") else "right")
    for name, entry in report["policies"].items():
        per_seed = ", ".join(entry["describe"])
        of_bound = entry.get("of_bound")
        table.add_row(
            name,
            _rps(entry["capacity_rps"]),
            _rps(entry["min_rps"]),
            _rps(entry["max_rps"]),
            "–" if of_bound is None else f"{of_bound:.2f}",
            per_seed,
        )
    return table


def ablation_table(ablations: Mapping[str, Any]) -> Table:
    """AccelGen's full system and each ablation: capacity, spread, share of the full system's."""
    table = Table(title="accelgen's ablations, as capacity", title_justify="left")
    for header in ("variant", "policy", "admission", "capacity req/s", "min", "max", "of full", "per seed"):
        table.add_column(header, justify="left" if header in ("variant", "policy", "per seed") else "right")
    for label, entry in ablations.items():
        of_full = entry.get("of_full")
        table.add_row(
            label,
            entry["policy"] + (f" ({entry['output_lengths']})" if entry.get("output_lengths") else ""),
            "yes" if entry["admission"] else "no",
            _rps(entry["capacity_rps"]),
            _rps(entry["min_rps"]),
            _rps(entry["max_rps"]),
            "–" if of_full is None else f"{of_full:.2f}",
            ", ".join(entry["describe"]),
        )
    return table


def goal_lines(goals: list[Mapping[str, Any]]) -> list[str]:
    """One line per goal: met or missed, with the measured value."""
    lines = []
    for goal in goals:
        measured = goal["measured"]
        verdict = "not measured" if measured is None else ("met" if goal["met"] else "MISSED")
        value = "–" if measured is None else f"{measured:.2f}"
        lines.append(f"goal: {goal['goal']} ({goal['detail']}): {value} — {verdict}")
    return lines


def overload_table(overload: Mapping[str, Any]) -> Table:
    """Goodput at k × capacity, the engine alone and the full system, and its retention."""
    table = Table(
        title=f"{overload['policy']} past its capacity ({overload['capacity_rps']:.3f} req/s); medians over seeds; "
        "goodput per second of arrivals in the run's steady part (retention from it), and per second of its span",
        title_justify="left",
    )
    headers = (
        "mode",
        "x capacity",
        "rate req/s",
        "goodput req/s",
        "retention",
        "goodput/span",
        "span ret.",
        "met",
        "attain",
        "rejected",
        "shed",
    )
    for header in headers:
        table.add_column(header, justify="left" if header == "mode" else "right")
    for mode, rows in overload["modes"].items():
        for row in rows:
            table.add_row(
                mode,
                f"{row['factor']:g}",
                f"{row['rate_rps']:.2f}",
                f"{row['goodput_steady_rps']:.2f}",
                _ratio(row["retention"]),
                f"{row['goodput_rps']:.2f}",
                _ratio(row["span_retention"]),
                f"{row['slo_met']:.0f}/{row['requests']:.0f}",
                f"{row['attainment']:.1%}",
                f"{row['rejected']:.0f}",
                f"{row['shed']:.0f}",
            )
    return table


def print_capacity(report: Mapping[str, Any], console: Console | None = None) -> None:
    console = console or Console(width=200)
    console.print(capacity_table(report))
    bound = report.get("bound")
    if bound:
        console.print(f"bound: {bound['rate_rps']:.3f} req/s ({bound['binding']}; {bound['description']})")
    ratios = report.get("ratios")
    if ratios:
        console.print(f"accelgen / best baseline ({ratios['best_baseline']}): {ratios['accelgen/best_baseline']:.2f}x")
    if report.get("ablations"):
        console.print(ablation_table(report["ablations"]))
    overload = report.get("overload")
    if overload and "modes" in overload:
        console.print(overload_table(overload))
    elif overload:
        console.print(f"overload not measured: {overload['skipped']}")
    for line in goal_lines(report.get("goals") or []):
        console.print(line, highlight=False)


def plot_capacity(report: Mapping[str, Any], path: Path) -> None:
    """Per policy, attainment per tier against rate (every seed's runs), its capacity marked."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = list(report["policies"])
    cols = min(3, len(names))
    rows = (len(names) + cols - 1) // cols
    fig, axes = plt.subplots(rows, cols, figsize=(5 * cols, 3.8 * rows), squeeze=False)
    colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    for ax, name in zip(axes.flat, names, strict=False):
        entry = report["policies"][name]
        for i, (tier, target) in enumerate(report["targets"].items()):
            color = colors[i % len(colors)]
            for seed in report["seeds"]:
                points = sorted((p["rate_rps"], p["attainment"][tier]) for p in entry["points"] if p["seed"] == seed)
                if points:
                    xs, ys = zip(*points, strict=True)
                    label = tier if seed == report["seeds"][0] else None
                    ax.plot(xs, [100 * y for y in ys], marker=".", color=color, alpha=0.7, label=label)
            ax.axhline(100 * target, color=color, linestyle=":", linewidth=1)
        if entry["capacity_rps"] is not None:
            ax.axvline(entry["capacity_rps"], color="k", linewidth=1.5)
            ax.axvspan(entry["min_rps"], entry["max_rps"], color="k", alpha=0.1)
        ax.set(title=f"{name}: {_rps(entry['capacity_rps'])} req/s", xlabel="arrival rate (req/s)", ylim=(0, 101))
        ax.set_ylabel("SLO attainment (%)")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7, loc="lower left")
    for ax in list(axes.flat)[len(names) :]:
        ax.set_visible(False)
    mode = "full system" if report["admission"] else "engine alone"
    fig.suptitle(f"{report['workload']}: capacity per policy ({mode}); line = median, band = seeds' spread")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
