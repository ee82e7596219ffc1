"""Running the sidecar process: load config, start the engine, serve until SIGINT/SIGTERM."""

from __future__ import annotations

import argparse
import asyncio
import gc
import importlib.util
import os
import signal
import sys
import tempfile
from pathlib import Path
from typing import Any, cast

from aiohttp import web

from accelgen.config import load_tiers
from accelgen.core.latency import LatencyModel
from accelgen.core.tiers import SIDECAR_DEFAULT_TIERS, TierSet, parse_tiers
from accelgen.launch import VllmServer, embedded_config
from accelgen.server.app import build_app
from accelgen.server.launch import start_sim
from accelgen.server.listen import ServerLimits, listen
from accelgen.server.speed import Speed, load_latency_model
from accelgen.server.state import Sidecar, SidecarConfig
from accelgen.server.tenants import load_keys
from accelgen.server.tickets import AdmissionConfig
from accelgen.sim.profiles import ScaledLatencyModel
from accelgen.sim.realtime import SimEngineConfig

# The tiers used when no --tiers file is given (same shape as the YAML file).
DEFAULT_TIERS: dict[str, Any] = SIDECAR_DEFAULT_TIERS


def load_config(
    args: argparse.Namespace, engine_url: str, *, engine_stats: str | None = None, engine_socket: str | None = None
) -> SidecarConfig:
    """The sidecar configuration from CLI flags; ConfigError for a bad file."""
    tiers: TierSet = load_tiers(args.tiers) if args.tiers else parse_tiers(DEFAULT_TIERS)
    keys = load_keys(args.keys, tier_names=frozenset(t.name for t in tiers)) if args.keys else None
    admission = AdmissionConfig(
        max_queue_per_tier=args.max_queue,
        max_queue_total=args.max_queue * max(1, len(tiers)),
        max_in_flight=args.max_running,
    )
    return SidecarConfig(
        tiers=tiers,
        engine_url=engine_url,
        keys=keys,
        pool=args.pool,
        admission=admission,
        token_timeout_s=args.token_timeout_s,
        connect_timeout_s=args.connect_timeout_s,
        engine_stats_path=engine_stats or args.engine_stats,
        engine_socket=engine_socket,
        open_stats=args.open_stats,
    )


def server_limits(args: argparse.Namespace) -> ServerLimits:
    """The listener's timeouts and connection bound from the CLI flags."""
    return ServerLimits(
        header_timeout_s=args.header_timeout_s,
        body_timeout_s=args.body_timeout_s,
        idle_timeout_s=args.idle_timeout_s,
        max_connections=args.max_connections,
    )


async def _start_vllm(args: argparse.Namespace) -> VllmServer | int:
    """The embedded vLLM, started and healthy; or the exit status when it cannot be."""
    if importlib.util.find_spec("vllm") is None:
        print(
            "accelgen: error: vLLM is not installed (`make vllm` installs the CPU build); "
            "or use --engine sim, or --engine-url URL",
            file=sys.stderr,
        )
        return 2
    # The in-engine scheduler's side channel: the sidecar reads its preemptions.
    engine_stats = os.environ.get("ACCELGEN_STATS_FILE") or str(
        Path(tempfile.mkdtemp(prefix="accelgen-")) / "engine-stats.json"
    )
    cfg = embedded_config(
        Path(args.model) if args.model else None,
        tiers_file=Path(args.tiers).resolve() if args.tiers else None,
        stats_file=Path(engine_stats),
        extra_args=args.vllm_arg or (),
    )
    vllm = VllmServer(cfg, stop_grace_s=20.0)
    print(f"accelgen: starting vLLM on {vllm.base_url} (this takes a while)...", flush=True)
    try:
        await vllm.start_async()
    except BaseException as err:
        vllm.stop()  # whatever ended the start, no engine outlives it
        if not isinstance(err, RuntimeError):
            raise
        print(f"accelgen: error: {err}", file=sys.stderr)
        return 1
    return vllm


async def _stop_engine(cleanup: list[object]) -> None:
    """Stop the engine ``serve`` started (its runner or its process group), then remove its files."""
    for item in cleanup:
        if isinstance(item, web.AppRunner):
            await item.cleanup()
        elif isinstance(item, VllmServer):
            item.stop()
    for item in cleanup:  # after the engines that write into them
        if isinstance(item, tempfile.TemporaryDirectory):
            item.cleanup()


async def _start_sim_engine(
    args: argparse.Namespace, latency: LatencyModel, tiers: TierSet, cleanup: list[object]
) -> tuple[str, str, str]:
    """The in-process sim engine on a Unix socket: (url, its stats file, its socket).

    The sim engine writes the same in-engine stats file as accelgen.vllm does
    (--engine-stats, or a file of its own removed at exit); the sidecar reads it. It
    listens on a socket in a directory of this run's (mode 0700), never on a port.
    """
    run_dir = tempfile.TemporaryDirectory(prefix="accelgen-")
    cleanup.append(run_dir)
    engine_stats = args.engine_stats or str(Path(run_dir.name) / "engine-stats.json")
    engine_socket = str(Path(run_dir.name) / "engine.sock")
    config = SimEngineConfig(max_num_seqs=args.sim_max_num_seqs, policy=args.sim_policy)
    runner = await start_sim(
        latency, config, tiers=tiers, socket_path=Path(engine_socket), stats_path=Path(engine_stats)
    )
    cleanup.append(runner)
    return "http://sim-engine", engine_stats, engine_socket  # the host is only a name


async def serve(args: argparse.Namespace) -> int:
    """Start engine and sidecar, print where to send requests, run until told to stop."""
    latency = load_latency_model(args.latency_model)
    if args.sim_time_scale != 1.0:
        # Admission predicts with the slowed model too, so it sees the engine it fronts.
        latency = cast(LatencyModel, ScaledLatencyModel(latency, args.sim_time_scale))
    tiers = load_config(args, "http://unused").tiers  # fail fast on bad files before starting an engine
    cleanup: list[object] = []
    engine_stats: str | None = None
    engine_socket: str | None = None
    engine = args.engine or ("url" if args.engine_url else "vllm")
    if args.engine_url:
        url = args.engine_url
    elif engine == "sim":
        url, engine_stats, engine_socket = await _start_sim_engine(args, latency, tiers, cleanup)
    else:
        vllm = await _start_vllm(args)
        if isinstance(vllm, int):
            return vllm
        cleanup.append(vllm)
        url, engine_stats = vllm.base_url, str(vllm.cfg.stats_file)
    sidecar = Sidecar(load_config(args, url, engine_stats=engine_stats, engine_socket=engine_socket), Speed(latency))
    app = build_app(sidecar, tiers_path=args.tiers)
    runner, _ = await listen(
        app, args.host, args.port, server_limits(args), registry=sidecar.metrics.registry, pool=args.pool
    )
    shown = "127.0.0.1" if args.host in ("0.0.0.0", "::") else args.host
    engine_at = f"the sim engine on {engine_socket}" if engine_socket else url
    print(
        f"accelgen: sidecar on http://{shown}:{args.port} -> engine {engine_at}\n"
        f"  curl http://{shown}:{args.port}/v1/completions -H 'Content-Type: application/json' "
        '-d \'{"prompt": "Hello", "max_tokens": 16}\'',
        flush=True,
    )
    # Everything loaded so far lives as long as the process: keep the collector off it,
    # so a full collection never walks the imported modules in the middle of a stream.
    gc.collect()
    gc.freeze()
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    try:
        await stop.wait()
    finally:
        await runner.cleanup()
        await _stop_engine(cleanup)
    return 0
