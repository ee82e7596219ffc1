"""``accelgen bench pool WORKLOAD.yaml --replicas N``: a pool's capacity per routing × engine policy.

For each pool size, engine policy and routing policy, the pool's capacity
(:mod:`accelgen.sim.pool_capacity`: the capacity definition of one replica, on the
cluster simulator :mod:`accelgen.sim.cluster`), the median over seeds; then each as a
ratio to ``queue-kv``, ``random`` and ``predicted-latency`` at the same size and engine
policy, and to N × one replica's capacity (measured by the same code, one replica).
Last, the pool goals for ``accelgen`` routing, each met or missed.

``--decision-time`` instead times every routing policy's decision with 64 pods of
random state (p50/p99 wall time, the gateway picker's budget is 1 ms; and the p99 of the
thread's own CPU time, which the other work of a busy machine does not inflate).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import random
import statistics
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from accelgen.argtypes import positive_float, positive_int
from accelgen.core.errors import ConfigError

if TYPE_CHECKING:
    from accelgen.sim.capacity import Capacity
    from accelgen.sim.pool_capacity import PoolRunner

#: The pool goals: (routing compared with, the least ratio that meets it).
GOALS = (("queue-kv", 1.25), ("random", 1.5), ("predicted-latency", 1.1), ("N x one replica", 0.95))
REFERENCES = ("queue-kv", "random", "predicted-latency")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("workload", type=Path, nargs="?", help="workload YAML file (not with --decision-time)")
    parser.add_argument("--replicas", default="4", metavar="N[,N]", help="pool sizes, each >= 1 (default 4)")
    parser.add_argument("--routing", help="comma-separated routing policies (default: every registered one)")
    parser.add_argument("--policies", default="accelgen", help="comma-separated engine policies (default accelgen)")
    parser.add_argument("--seeds", type=positive_int, default=1, help="seeds to bisect on (default 1)")
    parser.add_argument(
        "--target-precision", type=positive_float, default=0.02, metavar="P", help="default 0.02: ±2 %%"
    )
    parser.add_argument(
        "--duration-s", type=positive_float, metavar="S", help="seconds of arrivals per run (default: the file's)"
    )
    parser.add_argument(
        "--span",
        default="0.7,2.0",
        metavar="LO,HI",
        help="search each pool between LO and HI × N × one replica's capacity (default 0.7,2.0)",
    )
    parser.add_argument("--out", type=Path, metavar="DIR", help="write DIR/pool.json")
    parser.add_argument(
        "--decision-time", action="store_true", help="only time each routing policy's decision with --pods pods"
    )
    parser.add_argument("--pods", type=positive_int, default=64, help="pods for --decision-time (default 64)")
    parser.add_argument(
        "--merge",
        type=Path,
        nargs="+",
        metavar="DIR",
        help="print one report from the pool.json of runs made apart (other routing policies, other sizes)",
    )
    parser.add_argument(
        "--data-dir",
        type=Path,
        help="folder with traces/ and profiles/ (default: $ACCELGEN_DATA_DIR or ../shared/data)",
    )


def _names(text: str | None, known: list[str], flag: str) -> tuple[str, ...]:
    if text is None:
        return tuple(known)
    names = tuple(p.strip() for p in text.split(",") if p.strip())
    if not names:
        raise ConfigError("name at least one", field=flag)
    for name in names:
        if name not in known:
            raise ConfigError(f"unknown policy {name!r} (known: {', '.join(known)})", field=flag)
    return names


def _sizes(text: str) -> tuple[int, ...]:
    try:
        sizes = tuple(int(p) for p in text.split(",") if p.strip())
    except ValueError:
        raise ConfigError(f"expected pool sizes like 4 or 4,8, got {text!r}", field="--replicas") from None
    if not sizes or any(n < 1 for n in sizes):
        raise ConfigError(f"every pool needs at least 1 replica, got {text!r}", field="--replicas")
    return sizes


def _span(text: str) -> tuple[float, float]:
    try:
        lo, hi = (float(p) for p in text.split(","))
    except ValueError:
        raise ConfigError(f"expected LO,HI, got {text!r}", field="--span") from None
    if not 0 < lo < hi < 100:
        raise ConfigError(f"need 0 < LO < HI, got {text!r}", field="--span")
    return lo, hi


def run(args: argparse.Namespace) -> int:
    from accelgen.core.policies import policy_names
    from accelgen.core.routing import router_names

    routing = _names(args.routing, router_names(), "--routing")
    if args.decision_time:
        report = {"decision_time": decision_times(routing, num_pods=args.pods)}
        _print_decisions(report["decision_time"])
        _write(args, report)
        return 0
    if args.merge:
        report = merge_reports([json.loads((d / "pool.json").read_text()) for d in args.merge])
        print_pool(report)
        _write(args, report)
        return 0
    from accelgen.config import read_yaml
    from accelgen.sim.pool_capacity import PoolRunner
    from accelgen.sim.profiles import default_data_dir
    from accelgen.sim.workload import parse_workload

    if args.workload is None:
        raise ConfigError("give a workload YAML file (or --decision-time)", field="workload")
    sizes = _sizes(args.replicas)
    policies = _names(args.policies, policy_names(), "--policies")
    span = _span(args.span)
    try:
        workload = parse_workload(read_yaml(args.workload))
    except ConfigError as err:
        raise err.within(source=str(args.workload)) from None
    if args.duration_s is not None:
        workload = dataclasses.replace(workload, duration_s=args.duration_s, num_requests=None)
    if workload.rate_rps is None:
        raise ConfigError("the workload has no rate to start the search from", field="arrivals.rate_rps")
    runner = PoolRunner(workload, args.data_dir or default_data_dir())
    report = measure(
        runner,
        sizes=sizes,
        policies=policies,
        routing=routing,
        seeds=args.seeds,
        span=span,
        precision=args.target_precision,
    )
    print_pool(report)
    _write(args, report)
    return 0


def _write(args: argparse.Namespace, report: dict[str, Any]) -> None:
    if args.out:
        args.out.mkdir(parents=True, exist_ok=True)
        path = args.out / "pool.json"
        path.write_text(json.dumps(report, indent=2))
        print(f"wrote {path}")


def _median_capacity(found: list[Capacity]) -> float | None:
    values = [c.capacity_rps for c in found if c.capacity_rps is not None]
    return statistics.median(values) if values and len(values) == len(found) else None


def _bisect(
    runner: PoolRunner, routing: str, policy: str, n: int, seeds: list[int], lo: float, hi: float, precision: float
) -> dict[str, Any]:
    from accelgen.sim.capacity import bisect_capacity

    found = [
        bisect_capacity(runner.meets(routing, policy, replicas=n, seed=s), lo, hi, precision=precision) for s in seeds
    ]
    return {
        "capacity_rps": _median_capacity(found),
        "per_seed": [c.describe() for c in found],
        "per_seed_rps": [c.capacity_rps for c in found],
        "searched_rps": [lo, hi],
        "tried": sum(len(c.tried_rps) for c in found),
    }


def measure(
    runner: PoolRunner,
    *,
    sizes: tuple[int, ...],
    policies: tuple[str, ...],
    routing: tuple[str, ...],
    seeds: int,
    span: tuple[float, float],
    precision: float,
) -> dict[str, Any]:
    """One replica's capacity per engine policy, then every pool's, with the ratios and goals."""
    workload = runner.workload
    seed_list = [workload.seed + i for i in range(seeds)]
    rate = workload.rate_rps or 1.0
    report: dict[str, Any] = {
        "workload": workload.name,
        "duration_s": workload.duration_s,
        "seeds": seed_list,
        "target_precision": precision,
        "one_replica": {},
        "pools": [],
    }
    for policy in policies:
        started = time.perf_counter()
        one = _bisect(runner, "random", policy, 1, seed_list, rate / 4, rate * 4, precision)
        one["wall_s"] = time.perf_counter() - started
        report["one_replica"][policy] = one
        print(f"one replica, {policy}: {', '.join(one['per_seed'])}", flush=True)
    for n in sizes:
        for policy in policies:
            single = report["one_replica"][policy]["capacity_rps"] or rate
            pool: dict[str, Any] = {"replicas": n, "policy": policy, "routing": {}}
            for name in routing:
                started = time.perf_counter()
                entry = _bisect(
                    runner, name, policy, n, seed_list, span[0] * n * single, span[1] * n * single, precision
                )
                entry["wall_s"] = time.perf_counter() - started
                pool["routing"][name] = entry
                print(f"{n} replicas, {policy} engines, {name} routing: {', '.join(entry['per_seed'])}", flush=True)
            _ratios(pool, report["one_replica"][policy]["capacity_rps"])
            report["pools"].append(pool)
    report["goals"] = pool_goals(report)
    return report


def merge_reports(reports: list[dict[str, Any]]) -> dict[str, Any]:
    """One report from runs of the same workload, duration and seeds made apart.

    Every run measured one replica's capacity by the same deterministic simulation, so
    they agree; each pool (size, engine policy) gathers the routing policies of all.
    """
    first = reports[0]
    for other in reports[1:]:
        for key in ("workload", "duration_s", "seeds", "target_precision"):
            if other[key] != first[key]:
                raise ConfigError(f"the runs differ in {key}: {first[key]!r} and {other[key]!r}", field="--merge")
    merged: dict[str, Any] = {k: first[k] for k in ("workload", "duration_s", "seeds", "target_precision")}
    merged["one_replica"] = {}
    pools: dict[tuple[int, str], dict[str, Any]] = {}
    for report in reports:
        merged["one_replica"].update(report["one_replica"])
        for pool in report["pools"]:
            into = pools.setdefault((pool["replicas"], pool["policy"]), {**pool, "routing": {}})
            into["routing"].update(pool["routing"])
    merged["pools"] = [pools[k] for k in sorted(pools)]
    for pool in merged["pools"]:
        _ratios(pool, merged["one_replica"][pool["policy"]]["capacity_rps"])
    merged["goals"] = pool_goals(merged)
    return merged


def _ratios(pool: dict[str, Any], single: float | None) -> None:
    n = pool["replicas"]
    for entry in pool["routing"].values():
        cap = entry["capacity_rps"]
        ratios: dict[str, float | None] = {}
        for ref in REFERENCES:
            other = pool["routing"].get(ref, {}).get("capacity_rps")
            ratios[ref] = cap / other if cap is not None and other else None
        ratios["N x one replica"] = cap / (n * single) if cap is not None and single else None
        entry["ratios"] = ratios


def pool_goals(report: dict[str, Any]) -> list[dict[str, Any]]:
    """Each goal for ``accelgen`` routing with AccelGen engines, at each pool size: met or missed."""
    goals = []
    for pool in report["pools"]:
        ours = pool["routing"].get("accelgen")
        if pool["policy"] != "accelgen" or ours is None:
            continue
        for ref, threshold in GOALS:
            measured = ours["ratios"].get(ref)
            goals.append(
                {
                    "replicas": pool["replicas"],
                    "goal": f"accelgen routing >= {threshold}x {ref}",
                    "measured": measured,
                    "met": None if measured is None else measured >= threshold,
                }
            )
    return goals


def print_pool(report: dict[str, Any]) -> None:
    from rich.console import Console
    from rich.table import Table

    console = Console(width=160)

    def fmt(value: float | None, spec: str = ".3f") -> str:
        return "–" if value is None else format(value, spec)

    one = Table(title=f"{report['workload']}: one replica, seeds {report['seeds']}", title_justify="left")
    for header in ("engine policy", "capacity req/s", "per seed"):
        one.add_column(header, justify="right" if header == "capacity req/s" else "left")
    for policy, entry in report["one_replica"].items():
        one.add_row(policy, fmt(entry["capacity_rps"]), ", ".join(entry["per_seed"]))
    console.print(one)
    for pool in report["pools"]:
        n = pool["replicas"]
        table = Table(title=f"{n} replicas, {pool['policy']} engines: pool capacity", title_justify="left")
        headers = ("routing", "capacity req/s", *(f"÷ {r}" for r in REFERENCES), f"÷ {n} x one", "per seed")
        for header in headers:
            table.add_column(header, justify="left" if header in ("routing", "per seed") else "right")
        for name, entry in pool["routing"].items():
            r = entry["ratios"]
            table.add_row(
                name,
                fmt(entry["capacity_rps"]),
                *(fmt(r[k], ".2f") for k in (*REFERENCES, "N x one replica")),
                ", ".join(entry["per_seed"]),
            )
        console.print(table)
    for goal in report["goals"]:
        verdict = "–" if goal["met"] is None else ("met" if goal["met"] else "MISSED")
        console.print(f"{goal['replicas']} replicas: {goal['goal']}: {fmt(goal['measured'], '.2f')} {verdict}")


def random_pods(rng: random.Random, num_pods: int, tiers: list[str]) -> list[Any]:
    """``num_pods`` pods of random state, every field a sidecar reports filled in."""
    from accelgen.core.routing import PodState

    pods = []
    for i in range(num_pods):
        by_tier = {t: rng.randrange(0, 20_000) for t in tiers}
        pods.append(
            PodState(
                name=f"pod-{i}",
                address=f"10.0.0.{i}:8000",
                ready=rng.random() > 0.05,
                waiting=rng.randrange(0, 50),
                running=rng.randrange(0, 256),
                kv_usage=rng.random(),
                headroom={t: rng.uniform(-5_000, 50_000) for t in tiers},
                queued_prefill_tokens=sum(by_tier.values()),
                queued_tokens_by_tier=by_tier,
                min_slack_s=rng.uniform(0, 0.1),
                tightest_tbt_s=0.1,
                decode_step_s=rng.uniform(0.01, 0.05),
                prefill_s_per_token=rng.uniform(2e-5, 1e-4),
                long_prompts=rng.randrange(0, 3),
                max_num_seqs=256,
                kv_free_tokens=rng.randrange(0, 500_000),
            )
        )
    return pods


def decision_times(routing: tuple[str, ...], *, num_pods: int, num_decisions: int = 2000) -> dict[str, Any]:
    """Each policy's decision time with ``num_pods`` pods: p50, p99 and max, in ms."""
    from accelgen.core.routing import RouteRequest, make_router
    from accelgen.core.tiers import SLOTier, TierSet

    tiers = TierSet(
        (SLOTier("interactive", 1.0, 0.1), SLOTier("summarize", 5.0, 0.25), SLOTier("batch", deadline_s=300.0)),
        "interactive",
    )
    out: dict[str, Any] = {"pods": num_pods, "decisions": num_decisions, "policies": {}}
    for name in routing:
        rng = random.Random(1)
        router = make_router(name, seed=1, tiers=tiers)
        states = [random_pods(rng, num_pods, [t.name for t in tiers]) for _ in range(16)]
        times: list[float] = []
        cpu: list[float] = []  # the thread's own CPU time: what a busy machine's other work does not add
        for i in range(num_decisions):
            tier = tiers.tiers[i % 3]
            request = RouteRequest(
                tier.name,
                rng.choice((200, 1500, 6000)),
                200,
                tier.ttft_slo_s,
                tier.tbt_slo_s,
                tier.deadline_s,
                sheddable=True,
                arrival_s=0.0,
            )
            started, started_cpu = time.perf_counter(), time.thread_time()
            router.pick(request, states[i % len(states)], 0.0)
            times.append(time.perf_counter() - started)
            cpu.append(time.thread_time() - started_cpu)
        times.sort()
        cpu.sort()
        out["policies"][name] = {
            "p50_ms": 1e3 * times[len(times) // 2],
            "p99_ms": 1e3 * times[int(0.99 * (len(times) - 1))],
            "max_ms": 1e3 * times[-1],
            "cpu_p99_ms": 1e3 * cpu[int(0.99 * (len(cpu) - 1))],
        }
    return out


def _print_decisions(result: dict[str, Any]) -> None:
    from rich.console import Console
    from rich.table import Table

    table = Table(
        title=f"routing decision time, {result['pods']} pods, {result['decisions']} decisions each",
        title_justify="left",
    )
    for header in ("routing", "p50 ms", "p99 ms", "max ms", "CPU p99 ms", "p99 <= 1 ms"):
        table.add_column(header, justify="left" if header == "routing" else "right")
    for name, t in result["policies"].items():
        table.add_row(
            name,
            f"{t['p50_ms']:.3f}",
            f"{t['p99_ms']:.3f}",
            f"{t['max_ms']:.3f}",
            f"{t['cpu_p99_ms']:.3f}",
            "met" if t["p99_ms"] <= 1.0 else "MISSED",
        )
    Console(width=120).print(table)
