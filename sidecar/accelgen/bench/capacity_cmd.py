"""``accelgen bench capacity WORKLOAD.yaml``: each policy's capacity, and what happens past it.

Capacity is the highest Poisson rate at which every tier meets its own
``attainment_target`` (:mod:`accelgen.sim.capacity`), found by bisection for each of
several seeds (each seed draws other arrivals and lengths, and other latency noise);
the median and the spread are reported. Then, past capacity: AccelGen's goodput at
k × its capacity, the engine alone and behind the sidecar's admission (the full
system, :mod:`accelgen.sim.system`), against its goodput at capacity.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import statistics
from pathlib import Path
from typing import TYPE_CHECKING, Any

from accelgen.argtypes import positive_float, positive_int
from accelgen.core.errors import ConfigError

if TYPE_CHECKING:
    from accelgen.sim.capacity import Capacity, RateRunner
    from accelgen.sim.workload import Workload


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("workload", type=Path, help="workload YAML file")
    parser.add_argument("--policies", help="comma-separated policies (default: the file's)")
    parser.add_argument("--engine", default="sim", help="sim (the simulator); vllm is not yet supported here")
    parser.add_argument("--seeds", type=positive_int, default=3, help="seeds to bisect on (default 3)")
    parser.add_argument(
        "--target-precision",
        type=positive_float,
        default=0.02,
        metavar="P",
        help="relative half-width of each capacity (default 0.02: ±2 %%)",
    )
    parser.add_argument(
        "--rates",
        metavar="LO,HI",
        help="the rate range to search, req/s (default: the file's sweep range, else its rate ÷4 to ×4)",
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
    parser.add_argument("--json", type=Path, metavar="OUT.json", help="write the report as JSON")
    parser.add_argument("--png", type=Path, metavar="OUT.png", help="plot attainment per tier against rate")
    parser.add_argument(
        "--data-dir",
        type=Path,
        help="folder with traces/ and profiles/ (default: $ACCELGEN_DATA_DIR or ../shared/data)",
    )


def _rate_range(text: str | None, workload: Workload) -> tuple[float, float]:
    if text is None:
        if workload.sweep_rates:
            return min(workload.sweep_rates), max(workload.sweep_rates)
        if workload.rate_rps is None:
            raise ConfigError("the workload has no rate: give one", field="--rates")
        return workload.rate_rps / 4, workload.rate_rps * 4
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
    from accelgen.bench.capacity_report import plot_capacity, print_capacity
    from accelgen.config import read_yaml
    from accelgen.sim.capacity import RateRunner
    from accelgen.sim.profiles import default_data_dir
    from accelgen.sim.workload import parse_workload

    if args.engine != "sim":
        raise ConfigError(f"{args.engine!r}: only 'sim' for now (vllm is not yet supported here)", field="--engine")
    if not args.target_precision < 0.5:
        raise ConfigError(f"must be < 0.5, got {args.target_precision}", field="--target-precision")
    source = str(args.workload)
    try:
        workload = parse_workload(read_yaml(args.workload))
    except ConfigError as err:
        raise err.within(source=source) from None
    lo, hi = _rate_range(args.rates, workload)
    factors = _factors(args.overload)
    workload = dataclasses.replace(workload, policies=_policies(args.policies, workload))
    runner = RateRunner(workload, args.data_dir or default_data_dir(), admission=args.admission)
    try:
        report = measure(runner, lo, hi, seeds=args.seeds, precision=args.target_precision, factors=factors)
    except ConfigError as err:
        raise err.within(source=err.source or source) from None
    print_capacity(report)
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(report, indent=2))
        print(f"wrote {args.json}")
    if args.png:
        plot_capacity(report, args.png)
        print(f"wrote {args.png}")
    return 0


def measure(
    runner: RateRunner, lo: float, hi: float, *, seeds: int, precision: float, factors: tuple[float, ...]
) -> dict[str, Any]:
    """Every policy's capacity over ``seeds`` seeds, the ratios, and AccelGen past capacity."""
    from accelgen.sim.capacity import bisect_capacity

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
    for name in workload.policies:
        found: list[Capacity] = []
        for seed in seed_list:
            meets = runner.meets(name, seed=seed)
            first = found[0].capacity_rps if found and found[0].capacity_rps else None
            cap = None
            if first is not None:  # later seeds: start near the first one's answer
                cap = bisect_capacity(meets, max(lo, first / 1.2), min(hi, first * 1.2), precision=precision)
                cap = cap if cap.status == "found" else None
            found.append(cap or bisect_capacity(meets, lo, hi, precision=precision))
        report["policies"][name] = _policy_entry(runner, name, seed_list, found)
    report["ratios"] = _ratios(report)
    if factors:
        report["overload"] = _overload(runner, report, seed_list, factors)
    return report


def _policy_entry(runner: RateRunner, name: str, seeds: list[int], found: list[Capacity]) -> dict[str, Any]:
    values = [c.capacity_rps for c in found if c.capacity_rps is not None]
    statuses = {c.status for c in found}
    entry: dict[str, Any] = {
        "status": "found" if statuses == {"found"} else sorted(statuses - {"found"})[0],
        "describe": [c.describe() for c in found],
        "per_seed_rps": [c.capacity_rps for c in found],
        "capacity_rps": statistics.median(values) if len(values) == len(found) else None,
        "min_rps": min(values) if values else None,
        "max_rps": max(values) if values else None,
        "points": [],
    }
    for (policy, seed, rate, admission), result in sorted(runner.runs.items(), key=lambda kv: (kv[0][1], kv[0][2])):
        if policy == name and admission == runner.admission and seed in seeds:
            entry["points"].append(
                {
                    "seed": seed,
                    "rate_rps": rate,
                    "goodput_rps": result["goodput_rps"],
                    "attainment": {t: r["attainment"] for t, r in result["tiers"].items()},
                }
            )
    return entry


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
    runner: RateRunner, report: dict[str, Any], seeds: list[int], factors: tuple[float, ...]
) -> dict[str, Any]:
    """AccelGen at 1, then each k × its median capacity: goodput (median over seeds), both ways."""
    name = "accelgen" if "accelgen" in report["policies"] else next(iter(report["policies"]))
    capacity = report["policies"][name]["capacity_rps"]
    if capacity is None:
        return {"policy": name, "skipped": "no capacity was found in the range"}
    out: dict[str, Any] = {"policy": name, "capacity_rps": capacity, "modes": {}}
    for label, admission in (("engine", False), ("system", True)):
        rows = []
        for k in (1.0, *factors):
            runs = [runner.run(name, seed=s, rate_rps=k * capacity, admission=admission) for s in seeds]
            rows.append(
                {
                    "factor": k,
                    "rate_rps": k * capacity,
                    "goodput_rps": statistics.median(r["goodput_rps"] for r in runs),
                    # Goodput is over the run's span, which a long drain after the last
                    # arrival stretches; the count of requests that met their SLO is not.
                    "slo_met": statistics.median(r["slo_met"] for r in runs),
                    "requests": statistics.median(r["requests"] for r in runs),
                    "attainment": statistics.median(r["attainment"] for r in runs),
                    "rejected": sum(r.get("rejected", 0) for r in runs) / len(runs),
                    "shed": sum(r.get("shed", 0) for r in runs) / len(runs),
                }
            )
        at_capacity = rows[0]["goodput_rps"]
        for row in rows:
            row["retention"] = row["goodput_rps"] / at_capacity if at_capacity else None
        out["modes"][label] = rows
    return out
