"""``accelgen bench proxy``: what the sidecar adds, against the same engine, in one run.

The same closed-loop streaming load goes straight to the engine and through the sidecar,
in alternating blocks (direct, sidecar, direct, sidecar, ...) so drift hits both alike.
Reported: added TTFT p50/p99 and added per-token latency (sidecar minus direct), the
throughput ratio (sidecar / direct tokens per second) and the sidecar's CPU time per
request (from /proc, when this command started the sidecar).

By default it starts the sim engine and a sidecar as child processes on loopback; with
``--engine-url`` it uses a running engine (a vLLM server) and starts only the sidecar.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
from pathlib import Path
from typing import Any

from accelgen.argtypes import non_negative_float, positive_int

GOAL_THROUGHPUT_RATIO = 0.95
GOAL_ADDED_TTFT_P99_MS = 2.0


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--engine-url", metavar="URL", help="a running engine (default: start the sim engine)")
    parser.add_argument("--requests", type=positive_int, default=400, help="requests per block")
    parser.add_argument("--blocks", type=positive_int, default=3, help="blocks per side (alternating)")
    parser.add_argument("--concurrency", type=positive_int, default=16, help="concurrent streams")
    parser.add_argument("--max-tokens", type=positive_int, default=32, help="output tokens a request")
    parser.add_argument("--prompt-words", type=positive_int, default=64, help="prompt length in words")
    parser.add_argument(
        "--sim-time-scale",
        type=non_negative_float,
        default=1.0,
        help="slow down (or, with 0, remove) the sim engine's iteration times; 0 isolates "
        "what the proxy hop itself adds to TTFT",
    )
    parser.add_argument("--json", type=Path, metavar="OUT.json", help="write the report as JSON")


def _cpu_s(pid: int) -> float:
    """User + system CPU seconds of a process (Linux /proc)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


async def _measure(args: argparse.Namespace, engine_url: str, sidecar_url: str, sidecar_pid: int) -> dict[str, Any]:
    from accelgen.server.loadgen import Sample, run_load, summarize

    body: dict[str, Any] = {
        "prompt": "hello " * args.prompt_words,
        "max_tokens": args.max_tokens,
        "stream": True,
        "ignore_eos": True,
    }
    import aiohttp

    async with aiohttp.ClientSession() as session, session.get(engine_url + "/v1/models") as r:
        body["model"] = (await r.json())["data"][0]["id"]
    warm = {"num_requests": args.concurrency * 2, "concurrency": args.concurrency, "body": body}
    await run_load(engine_url, **warm)
    await run_load(sidecar_url, **warm)
    samples: dict[str, list[Sample]] = {"direct": [], "sidecar": []}
    walls = {"direct": 0.0, "sidecar": 0.0}
    cpu_s = 0.0
    for _ in range(args.blocks):
        for side, url in (("direct", engine_url), ("sidecar", sidecar_url)):
            cpu_before = _cpu_s(sidecar_pid)
            got, wall_s = await run_load(url, num_requests=args.requests, concurrency=args.concurrency, body=body)
            if side == "sidecar":
                cpu_s += _cpu_s(sidecar_pid) - cpu_before
            samples[side] += got
            walls[side] += wall_s
    direct = summarize(samples["direct"], walls["direct"])
    sidecar = summarize(samples["sidecar"], walls["sidecar"])
    return {
        "engine_url": engine_url,
        # With the sim engine's iterations at 0 s, the engine does no work: the sidecar's
        # CPU alone bounds the ratio, which then says nothing about the goal.
        "engine_works": args.engine_url is not None or args.sim_time_scale > 0,
        "concurrency": args.concurrency,
        "requests_per_side": args.requests * args.blocks,
        "max_tokens": args.max_tokens,
        "direct": direct,
        "sidecar": sidecar,
        "added_ttft_p50_ms": sidecar["ttft_p50_ms"] - direct["ttft_p50_ms"],
        "added_ttft_p99_ms": sidecar["ttft_p99_ms"] - direct["ttft_p99_ms"],
        "added_per_token_ms": sidecar["token_gap_mean_ms"] - direct["token_gap_mean_ms"],
        "throughput_ratio": sidecar["tokens_per_s"] / max(1e-9, direct["tokens_per_s"]),
        "sidecar_cpu_ms_per_request": 1000.0 * cpu_s / max(1.0, sidecar["requests"]),
    }


def _print(report: dict[str, Any]) -> None:
    d, s = report["direct"], report["sidecar"]
    print(f"{'':12} {'TTFT p50':>10} {'TTFT p99':>10} {'gap mean':>10} {'tok/s':>10} {'failed':>7}")
    for name, row in (("direct", d), ("sidecar", s)):
        print(
            f"{name:12} {row['ttft_p50_ms']:9.2f}ms {row['ttft_p99_ms']:9.2f}ms "
            f"{row['token_gap_mean_ms']:9.3f}ms {row['tokens_per_s']:10.0f} {row['failed']:7.0f}"
        )
    ratio, p99 = report["throughput_ratio"], report["added_ttft_p99_ms"]
    ratio_goal = (
        f"goal >= {GOAL_THROUGHPUT_RATIO}"
        if report["engine_works"]
        else "the engine does no work here: a CPU bound, not the goal's measure"
    )
    print(
        f"added TTFT p50 {report['added_ttft_p50_ms']:+.2f} ms, p99 {p99:+.2f} ms "
        f"(goal <= {GOAL_ADDED_TTFT_P99_MS} ms); added per token "
        f"{report['added_per_token_ms']:+.3f} ms; throughput ratio {ratio:.3f} "
        f"({ratio_goal}); sidecar CPU "
        f"{report['sidecar_cpu_ms_per_request']:.2f} ms/request"
    )


def run(args: argparse.Namespace) -> int:
    """Start what is needed, measure both sides, print (and write) the report."""
    from accelgen.launch import serve_command
    from accelgen.process import ChildProcess, free_port, stop_all, wait_ready

    children: list[ChildProcess] = []
    try:
        engine_url = args.engine_url
        if engine_url is None:
            port = free_port()
            argv = [sys.executable, "-m", "accelgen.sim.http", "--port", str(port)]
            argv += ["--time-scale", str(args.sim_time_scale)]
            children.append(ChildProcess(argv, name="sim engine", quiet=True))
            engine_url = f"http://127.0.0.1:{port}"
        wait_ready(engine_url + "/v1/models", timeout_s=60, child=children[0] if children else None)
        port = free_port()
        argv = serve_command("--max-running", "1024", port=port, engine=("--engine-url", engine_url))
        sidecar = ChildProcess(argv, name="accelgen serve", quiet=True)
        children.append(sidecar)
        sidecar_url = f"http://127.0.0.1:{port}"
        sidecar.wait_ready(sidecar_url + "/readyz", timeout_s=60)
        report = asyncio.run(_measure(args, engine_url, sidecar_url, sidecar.pid))
    finally:
        stop_all(reversed(children), grace_s=20.0)
    _print(report)
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(report, indent=2) + "\n")
    return 0
