"""``accelgen bench sim WORKLOAD.yaml``: every policy of a workload on identical requests."""

from __future__ import annotations

import argparse
import json
import math
from collections.abc import Callable
from pathlib import Path
from typing import Any

from accelgen.argtypes import positive_float
from accelgen.core.errors import ConfigError


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("workload", type=Path, help="workload YAML file")
    parser.add_argument("--json", type=Path, metavar="OUT.json", help="write the report as JSON")
    parser.add_argument("--plot", type=Path, metavar="OUT.png", help="plot goodput/attainment vs rate")
    parser.add_argument(
        "--rate",
        type=positive_float,
        action="append",
        metavar="R",
        help="arrival rate in req/s (repeat for a sweep; default: the file's)",
    )
    parser.add_argument("--policies", help="comma-separated policies (default: the file's)")
    parser.add_argument(
        "--data-dir",
        type=Path,
        help="folder with traces/ and profiles/ (default: $ACCELGEN_DATA_DIR or ../shared/data)",
    )
    parser.add_argument(
        "--admission",
        action="store_true",
        help="the full system: the sidecar's admission in front of every policy (refused and shed count as misses)",
    )
    parser.add_argument("--quiet", action="store_true", help="no progress bar")


def _progress_factory(enabled: bool) -> Callable[[str, float], Callable[[float], None]] | None:
    if not enabled:
        return None
    from tqdm import tqdm

    def factory(name: str, end_s: float) -> Callable[[float], None]:
        bar = tqdm(total=round(end_s), desc=f"{name:>22}", unit="sim-s", leave=False)

        def update(now: float) -> None:
            if math.isinf(now):
                bar.close()
                return
            bar.update(min(round(now), bar.total) - bar.n)

        return update

    return factory


def print_refusals(report: dict[str, Any]) -> None:
    """Per policy and tier, what the sidecar's admission refused (429) and shed (503)."""
    for name, result in report["policies"].items():
        parts = [f"{tier}: {t['rejected']} rejected, {t['shed']} shed" for tier, t in result["tiers"].items()]
        print(f"admission, {name}: " + "; ".join(parts))


def run(args: argparse.Namespace) -> int:
    from accelgen.bench.report import plot_sweep, print_report
    from accelgen.config import read_yaml
    from accelgen.sim.profiles import default_data_dir
    from accelgen.sim.runner import run_workload
    from accelgen.sim.workload import parse_workload

    source = str(args.workload)
    try:
        workload = parse_workload(read_yaml(args.workload))
    except ConfigError as err:
        raise err.within(source=source) from None
    if args.policies:
        import dataclasses

        from accelgen.core.policies import get_spec

        names = tuple(p.strip() for p in args.policies.split(",") if p.strip())
        for name in names:
            get_spec(name)
        workload = dataclasses.replace(workload, policies=names)
    rates = args.rate or list(workload.sweep_rates) or [workload.rate_rps]
    if any(r is not None and r <= 0 for r in rates):
        raise ConfigError("rates must be positive", field="--rate")
    if args.plot and len(rates) < 2:
        raise ConfigError("a plot needs a rate sweep (two or more rates)", field="--plot")
    data_dir = args.data_dir or default_data_dir()
    progress = _progress_factory(not args.quiet)
    reports: list[dict[str, Any]] = []
    for rate in rates:
        w = workload.with_rate(rate) if rate is not None and rate != workload.rate_rps else workload
        try:
            report = run_workload(w, data_dir=data_dir, admission=args.admission, progress=progress)
        except ConfigError as err:
            raise err.within(source=err.source or source) from None
        print_report(report)
        if args.admission:
            print_refusals(report)
        reports.append(report)
    if args.json:
        out: dict[str, Any] = dict(reports[0])
        if len(reports) > 1:
            out["sweep"] = reports
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(out, indent=2))
        print(f"wrote {args.json}")
    if args.plot:
        plot_sweep(reports, args.plot)
        print(f"wrote {args.plot}")
    return 0
