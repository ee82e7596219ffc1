"""``accelgen bench picker``: the endpoint picker's time per request with N pods, over real gRPC.

Three processes, as in a cluster: N pods (small aiohttp servers on loopback answering
``GET /pool/state`` with varied states in the sidecar's format, each with room for every
request, so nothing is held or shed), the real ``accelgen picker`` command over them
(reading every pod each ``--refresh-s``), and this one playing Envoy with a gRPC client on
Envoy's generated protos: one ext_proc stream per request, one after another, headers only
or with a full-duplex streamed body. It prints p50/p99/max of the whole stream's round
trip as the client sees it. The router's decision alone is ``accelgen bench pool
--decision-time``.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from accelgen.argtypes import positive_float, positive_int


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--pods", type=positive_int, default=64, help="pods (default 64)")
    parser.add_argument("--requests", type=positive_int, default=2000, help="requests timed (default 2000)")
    parser.add_argument("--routing", default="accelgen", help="routing policy (default accelgen)")
    parser.add_argument("--refresh-s", type=positive_float, default=0.2, help="picker's pod refresh (default 0.2)")
    parser.add_argument("--body", action="store_true", help="send each request's body (full-duplex streamed)")


def _pod_state(rng: random.Random, tiers: list[str]) -> dict[str, Any]:
    return {
        "ready": True,
        "waiting": rng.randrange(0, 8),
        "running": rng.randrange(0, 64),
        "kv_usage": rng.uniform(0.0, 0.9),
        "headroom": {t: rng.uniform(1e7, 1e8) for t in tiers},
        "queued_prefill_tokens": rng.randrange(0, 20_000),
        "queued_tokens_by_tier": {t: rng.randrange(0, 5_000) for t in tiers},
        "min_slack_s": rng.uniform(0.0, 0.1),
        "tightest_tbt_s": 0.1,
        "decode_step_s": rng.uniform(0.01, 0.04),
        "prefill_s_per_token": rng.uniform(2e-5, 1e-4),
        "long_prompts": rng.randrange(0, 2),
        "max_num_seqs": 256,
        "kv_free_tokens": rng.randrange(0, 500_000),
    }


async def _start_pods(num_pods: int, tiers: list[str]) -> tuple[list[Any], list[str]]:
    from aiohttp import web

    rng = random.Random(1)
    runners, addresses = [], []
    for _ in range(num_pods):
        doc = _pod_state(rng, tiers)

        async def state(_: web.Request, doc: dict[str, Any] = doc) -> web.Response:
            return web.json_response(doc)

        app = web.Application()
        app.router.add_get("/pool/state", state)
        runner = web.AppRunner(app, access_log=None)
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        runners.append(runner)
        addresses.append(f"127.0.0.1:{runner.addresses[0][1]}")
    return runners, addresses


def _quantiles_ms(values: list[float]) -> dict[str, float]:
    ordered = sorted(values)
    return {
        "p50_ms": 1e3 * ordered[len(ordered) // 2],
        "p99_ms": 1e3 * ordered[int(0.99 * (len(ordered) - 1))],
        "max_ms": 1e3 * ordered[-1],
    }


def _serve_pods(num_pods: int, ready_file: str) -> None:
    """The pods' process: ``num_pods`` servers; their addresses written to ``ready_file``."""

    async def main() -> None:
        from accelgen.core.tiers import SIDECAR_DEFAULT_TIERS

        names = [t["name"] for t in SIDECAR_DEFAULT_TIERS["tiers"]]
        _, addresses = await _start_pods(num_pods, names)
        tmp = ready_file + ".tmp"
        with open(tmp, "w") as out:
            out.write(",".join(addresses))
        os.replace(tmp, ready_file)
        await asyncio.Event().wait()

    asyncio.run(main())


def _measure(args: argparse.Namespace, work: Path) -> dict[str, Any]:
    """Pods and picker in processes of their own; the client (Envoy's part) here."""
    import grpc
    from envoy.service.ext_proc.v3 import external_processor_pb2_grpc as ext_proc_grpc

    from accelgen.process import ChildProcess, free_port

    ready = work / "pods.txt"
    code = f"from accelgen.bench.picker_cmd import _serve_pods; _serve_pods({args.pods}, {str(ready)!r})"
    with ChildProcess([sys.executable, "-c", code], name="pods", log_file=work / "pods.log") as pods:
        pods.wait_ready(ready.exists, timeout_s=120)
        port, health = free_port(), free_port()
        cmd = [sys.executable, "-m", "accelgen.cli", "picker", "--listen", f"127.0.0.1:{port}"]
        cmd += ["--health-port", str(health), "--routing", args.routing, "--pods", ready.read_text()]
        cmd += ["--refresh-s", f"{args.refresh_s:g}", "--log-level", "WARNING"]
        with ChildProcess(cmd, name="accelgen picker", log_file=work / "picker.log") as picker:
            channel = grpc.insecure_channel(f"127.0.0.1:{port}")
            picker.wait_ready(lambda: _answers(channel), timeout_s=120)
            stub = ext_proc_grpc.ExternalProcessorStub(channel)
            round_trips: list[float] = []
            for i in range(args.requests + 50):  # the first 50 warm up, untimed
                messages = _messages(i, body=args.body)
                started = time.perf_counter()
                answers = list(stub.Process(iter(messages), timeout=30))
                elapsed = time.perf_counter() - started
                if not any(a.HasField("request_headers") for a in answers):
                    raise RuntimeError(f"request {i} was not routed: {answers}")
                if i >= 50:
                    round_trips.append(elapsed)
            channel.close()
    return {"pods": args.pods, "requests": args.requests, "routing": args.routing, "body": args.body,
            "refresh_s": args.refresh_s, "round_trip": _quantiles_ms(round_trips)}  # fmt: skip


def _answers(channel: Any) -> bool:
    """Whether the picker routes a request yet."""
    import grpc
    from envoy.service.ext_proc.v3 import external_processor_pb2_grpc as ext_proc_grpc

    try:
        answers = list(ext_proc_grpc.ExternalProcessorStub(channel).Process(iter(_messages(0, body=False)), timeout=2))
    except grpc.RpcError:
        return False
    return any(a.HasField("request_headers") for a in answers)


def _messages(i: int, *, body: bool) -> list[Any]:
    from envoy.config.core.v3 import base_pb2
    from envoy.extensions.filters.http.ext_proc.v3 import processing_mode_pb2
    from envoy.service.ext_proc.v3 import external_processor_pb2 as ext_proc

    payload = json.dumps({"prompt": "word " * (50 + 37 * (i % 40)), "max_tokens": 64}).encode() if body else b""
    tier = ("interactive", "standard", "batch")[i % 3]  # the sidecar's default tiers
    headers = {":method": "POST", ":path": "/v1/completions", "x-accelgen-tier": tier}
    header_map = base_pb2.HeaderMap(
        headers=[base_pb2.HeaderValue(key=k, raw_value=v.encode()) for k, v in headers.items()]
    )
    mode = processing_mode_pb2.ProcessingMode.FULL_DUPLEX_STREAMED if body else processing_mode_pb2.ProcessingMode.NONE
    first = ext_proc.ProcessingRequest(
        request_headers=ext_proc.HttpHeaders(headers=header_map, end_of_stream=not body),
        protocol_config=ext_proc.ProtocolConfiguration(request_body_mode=mode),
    )
    if not body:
        return [first]
    return [first, ext_proc.ProcessingRequest(request_body=ext_proc.HttpBody(body=payload, end_of_stream=True))]


def run(args: argparse.Namespace) -> int:
    from rich.console import Console
    from rich.table import Table

    from accelgen.core.errors import ConfigError
    from accelgen.core.routing import router_names

    if args.routing not in router_names():
        raise ConfigError(f"unknown routing policy {args.routing!r}; one of {', '.join(router_names())}")
    with tempfile.TemporaryDirectory(prefix="accelgen-bench-picker-") as work:
        result = _measure(args, Path(work))
    what = "headers + full-duplex body" if args.body else "headers only"
    table = Table(
        title=f"accelgen picker, {result['pods']} pods read every {args.refresh_s:g} s, "
        f"{result['requests']} requests one at a time ({what}, routing {result['routing']})",
        title_justify="left",
    )
    for header in ("", "p50 ms", "p99 ms", "max ms"):
        table.add_column(header, justify="right")
    q = result["round_trip"]
    table.add_row("ext_proc stream", f"{q['p50_ms']:.3f}", f"{q['p99_ms']:.3f}", f"{q['max_ms']:.3f}")
    Console().print(table)
    print(json.dumps(result))
    return 0
