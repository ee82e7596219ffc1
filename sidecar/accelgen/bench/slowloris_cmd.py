"""``accelgen bench slowloris``: slow clients cost the sidecar nothing else, in one run.

Starts ``accelgen serve --engine sim`` (a child process) with the header and body
timeouts set to ``--timeout-s``, then measures the same closed-loop load of normal
requests twice, side by side:

1. idle: nothing else connected;
2. held: ``--slow`` connections held open at once, for as long as the timeout lets them
   live: a third trickling a request head that never ends, a third a body that never
   ends (one byte a second each), a third a whole request followed by the start of a
   next head that then stalls (pipelined).

Reported: each phase's latency percentiles, the p99 ratio held / idle (goal at most
2), and when the sidecar closed each slow connection, measured from when its timeout
started (the connection for a head, the complete head for a body, the request ahead
for a pipelined head; goal: all closed within the timeout, plus a slack for the timer's
and the event loop's granularity).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import time
from pathlib import Path
from typing import Any

from accelgen.argtypes import positive_float, positive_int

GOAL_P99_RATIO = 2.0
CLOSE_SLACK_S = 0.5
_TRICKLE_EVERY_S = 1.0


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--slow", type=positive_int, default=500, help="slow connections held at once")
    parser.add_argument("--timeout-s", type=positive_float, default=5.0, help="the sidecar's header and body timeouts")
    parser.add_argument("--concurrency", type=positive_int, default=4, help="concurrent normal clients")
    parser.add_argument("--max-tokens", type=positive_int, default=4, help="output tokens a normal request")
    parser.add_argument("--json", type=Path, metavar="OUT.json", help="write the report as JSON")


def _percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    if not ordered:
        return float("nan")
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


async def _normal_load(url: str, duration_s: float, concurrency: int, max_tokens: int) -> dict[str, float]:
    """Closed-loop non-streaming requests for ``duration_s``: latency percentiles (ms)."""
    import aiohttp

    latencies: list[float] = []
    failed = 0
    body = {"prompt": "hello there", "max_tokens": max_tokens}
    end_s = time.monotonic() + duration_s

    async def client(session: aiohttp.ClientSession) -> None:
        nonlocal failed
        while time.monotonic() < end_s:
            started = time.perf_counter()
            async with session.post(url + "/v1/completions", json=body) as resp:
                await resp.read()
                if resp.status != 200:
                    failed += 1
                    continue
            latencies.append((time.perf_counter() - started) * 1000.0)

    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0)) as session:
        await asyncio.gather(*(client(session) for _ in range(concurrency)))
    return {
        "requests": float(len(latencies)),
        "failed": float(failed),
        "p50_ms": _percentile(latencies, 0.50),
        "p99_ms": _percentile(latencies, 0.99),
        "max_ms": max(latencies, default=float("nan")),
    }


KINDS = ("head", "body", "pipelined")


async def _slow_connection(host: str, port: int, *, kind: str, give_up_s: float) -> float | None:
    """One slow client; seconds from its timeout's start to the sidecar closing it (None: never).

    Each clock is started on this side before the sidecar can start its own (at the
    connection for a head; when the head, or the request ahead of the pipelined head, is
    sent), so a close is never early here.
    """
    started_s = time.monotonic()
    reader, writer = await asyncio.open_connection(host, port)
    head = f"POST /v1/completions HTTP/1.1\r\nHost: {host}\r\nContent-Type: application/json\r\n"
    if kind == "body":
        started_s = time.monotonic()
        writer.write(f"{head}Content-Length: 100000\r\n\r\n{{".encode())
    elif kind == "pipelined":
        started_s = time.monotonic()
        writer.write(f"GET /healthz HTTP/1.1\r\nHost: {host}\r\n\r\n{head}".encode())
    else:
        writer.write(head.encode())
    answered = b""
    try:
        while time.monotonic() - started_s < give_up_s:
            try:
                data = await asyncio.wait_for(reader.read(4096), _TRICKLE_EVERY_S)
            except TimeoutError:
                if kind != "pipelined":  # a pipelined head just stalls
                    writer.write(b" " if kind == "body" else b"X")  # one more byte, never the end
                continue
            if kind == "pipelined" and not answered.endswith(b"}") and data:
                answered += data  # the answer to the request ahead ({"status": "ok"})
                continue
            if not data or b"HTTP/1.1 408" in data:
                return time.monotonic() - started_s
        return None
    except ConnectionError:
        return time.monotonic() - started_s
    finally:
        writer.close()


async def _measure(args: argparse.Namespace, url: str) -> dict[str, Any]:
    host, port = url.removeprefix("http://").split(":")
    duration_s = args.timeout_s * 0.8  # the held phase ends before the first slow one is closed
    await _normal_load(url, 1.0, args.concurrency, args.max_tokens)  # warm up
    idle = await _normal_load(url, duration_s, args.concurrency, args.max_tokens)
    give_up_s = args.timeout_s * 3 + 5
    slow = [
        asyncio.create_task(_slow_connection(host, int(port), kind=KINDS[i % len(KINDS)], give_up_s=give_up_s))
        for i in range(args.slow)
    ]
    await asyncio.sleep(min(1.0, args.timeout_s * 0.1))  # all of them connected and trickling
    held = await _normal_load(url, duration_s, args.concurrency, args.max_tokens)
    closed = await asyncio.gather(*slow)
    after = [s for s in closed if s is not None]
    return {
        "slow_connections": args.slow,
        "timeout_s": args.timeout_s,
        "idle": idle,
        "held": held,
        "p99_ratio": held["p99_ms"] / idle["p99_ms"],
        "slow_closed": len(after),
        "slow_closed_latest_s": max(after, default=float("nan")),
        "slow_closed_earliest_s": min(after, default=float("nan")),
    }


def _print(report: dict[str, Any]) -> bool:
    print(
        f"slowloris: {report['slow_connections']} slow connections (a third each in the head, in the body, "
        "in a head pipelined behind a request), "
        f"header and body timeouts {report['timeout_s']:g} s"
    )
    print(f"{'':22} {'requests':>9} {'failed':>7} {'p50':>10} {'p99':>10} {'max':>10}")
    for name, key in (("idle server", "idle"), ("slow connections held", "held")):
        row = report[key]
        print(
            f"{name:22} {row['requests']:9.0f} {row['failed']:7.0f} {row['p50_ms']:8.2f}ms "
            f"{row['p99_ms']:8.2f}ms {row['max_ms']:8.2f}ms"
        )
    ratio_ok = report["p99_ratio"] <= GOAL_P99_RATIO and report["held"]["failed"] == 0
    limit_s = report["timeout_s"] + CLOSE_SLACK_S
    closed_ok = report["slow_closed"] == report["slow_connections"] and report["slow_closed_latest_s"] <= limit_s
    print(f"p99 ratio held / idle: {report['p99_ratio']:.2f} (goal <= {GOAL_P99_RATIO:g})")
    print(
        f"slow connections closed by the sidecar: {report['slow_closed']}/{report['slow_connections']}, "
        f"after {report['slow_closed_earliest_s']:.2f} to {report['slow_closed_latest_s']:.2f} s "
        f"(goal: all, within {report['timeout_s']:g} s + {CLOSE_SLACK_S:g} s)"
    )
    print(f"verdict: {'PASS' if ratio_ok and closed_ok else 'FAIL'}")
    return bool(ratio_ok and closed_ok)


def run(args: argparse.Namespace) -> int:
    """Start the sidecar, measure idle and held, print (and write) the report; 1 if a goal is missed."""
    from accelgen.launch import serve_command
    from accelgen.process import ChildProcess, free_port

    port = free_port()
    timeout = f"{args.timeout_s:g}"
    flags = ("--header-timeout-s", timeout, "--body-timeout-s", timeout, "--max-connections", str(args.slow + 512))
    sidecar = ChildProcess(serve_command(*flags, port=port), name="accelgen serve", quiet=True)
    url = f"http://127.0.0.1:{port}"
    try:
        sidecar.wait_ready(url + "/readyz", timeout_s=60)
        report = asyncio.run(_measure(args, url))
    finally:
        sidecar.stop()
    ok = _print(report)
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(report, indent=2) + "\n")
    return 0 if ok else 1
