"""``accelgen bench planner``: the cost of one ``plan()`` call at a realistic queue depth.

Before every timed call the same state is built afresh (same seed): ``--running``
requests decoding (contexts in the Azure conversation range, last tokens spread over
the TBT) and ``--waiting`` queued (mixed tiers, arrivals over the last seconds), so each
measurement sees the same work. Then again at ``--scale``× the queue.
"""

from __future__ import annotations

import argparse
import gc
import random
import statistics
import time
from pathlib import Path

from accelgen.argtypes import int_at_least, positive_int
from accelgen.core.errors import ConfigError
from accelgen.core.plan import EngineLimits
from accelgen.core.policies import make_policy, policy_names
from accelgen.core.policy import Policy
from accelgen.core.request import Request, blocks_for
from accelgen.core.summary import quantile
from accelgen.core.tiers import parse_tiers

TIERS = parse_tiers(
    {
        "default_tier": "interactive",
        "tiers": [
            {"name": "interactive", "ttft_ms": 1000, "tbt_ms": 100},
            {"name": "summarize", "ttft_ms": 5000, "tbt_ms": 250, "priority": 1},
            {"name": "batch", "deadline_s": 300, "priority": 2},
        ],
    }
)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--running", type=positive_int, default=256, help="decoding requests (default 256)")
    parser.add_argument("--waiting", type=positive_int, default=2000, help="queued requests (default 2000)")
    parser.add_argument("--scale", type=positive_int, default=10, help="also time at this multiple of --waiting")
    parser.add_argument("--repeats", type=int_at_least(2), default=200, help="timed plan() calls per case (2+)")
    parser.add_argument("--policies", default="accelgen,sarathi,vllm-fcfs", help="comma-separated")
    parser.add_argument("--latency-model", default="h100-llama-2-7b")
    parser.add_argument("--data-dir", type=Path)


def build_state(policy: Policy, *, running: int, waiting: int, seed: int = 0) -> float:
    """Fill ``policy`` with decoding and queued requests; returns the planning time."""
    rng = random.Random(seed)
    now = 100.0
    names = [t.name for t in TIERS]
    for i in range(running):
        tier = TIERS.get(rng.choice(names))
        r = Request(f"run{i}", now - rng.uniform(1, 20), rng.randint(100, 3000), 2048, tier)
        r.num_output_tokens = rng.randint(1, 300)
        r.num_computed_tokens = r.num_tokens - 1
        r.last_token_s = now - rng.uniform(0, 0.09)
        r.num_blocks = blocks_for(r.num_computed_tokens, policy.limits.block_size_tokens)
        policy.free_blocks -= r.num_blocks
        policy.running.append(r)
    for i in range(waiting):
        tier = TIERS.get(rng.choice(names))
        policy.add_request(Request(f"wait{i}", now - rng.uniform(0, 5), rng.randint(20, 4000), 2048, tier))
    return now


def time_plans(
    name: str, *, running: int, waiting: int, repeats: int, model_name: str, data_dir: Path | None
) -> list[float]:
    from accelgen.sim.profiles import load_latency_model

    model = load_latency_model(model_name, data_dir=data_dir)
    limits = EngineLimits(num_kv_blocks=200_000, max_num_batched_tokens=8192, max_num_seqs=running + 64)
    times = []
    for _ in range(repeats):
        policy = make_policy(name, tiers=TIERS, latency_model=model, limits=limits)
        now = build_state(policy, running=running, waiting=waiting)
        gc.collect()  # NOTE: so a collection owed to building the state is not timed
        t0 = time.perf_counter()
        policy.plan(now)
        times.append(time.perf_counter() - t0)
    return times


def run(args: argparse.Namespace) -> int:
    from rich.console import Console
    from rich.table import Table

    names = [p.strip() for p in args.policies.split(",") if p.strip()]
    for name in names:
        if name not in policy_names():
            raise ConfigError(f"unknown policy {name!r}; known: {', '.join(policy_names())}", field="--policies")
    table = Table(title=f"plan() time, {args.latency_model}, {args.repeats} calls each", title_justify="left")
    for col in ("policy", "running", "waiting", "median", "p99", "median ×queue"):
        table.add_column(col, justify="right")
    for name in names:
        base_median = 0.0
        for waiting in (args.waiting, args.waiting * args.scale):
            times = time_plans(
                name,
                running=args.running,
                waiting=waiting,
                repeats=args.repeats,
                model_name=args.latency_model,
                data_dir=args.data_dir,
            )
            median = statistics.median(times)
            p99 = quantile(times, 0.99) or 0.0
            base_median = base_median or median
            table.add_row(
                name,
                str(args.running),
                str(waiting),
                f"{median * 1e3:.3f} ms",
                f"{p99 * 1e3:.3f} ms",
                f"{median / base_median:.2f}×",
            )
    Console(width=120).print(table)
    return 0
