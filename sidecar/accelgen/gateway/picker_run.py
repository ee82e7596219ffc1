"""Running ``accelgen picker``: tiers and router from the flags, wait for a pod, serve until told to stop."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import signal
import time

from accelgen.config import load_tiers
from accelgen.core.errors import ConfigError
from accelgen.core.routing import make_router
from accelgen.core.tiers import SIDECAR_DEFAULT_TIERS, TierSet, parse_tiers
from accelgen.gateway.picker import EndpointPicker, PickerServer
from accelgen.gateway.picker_cmd import DEFAULT_STARTUP_TIMEOUT_S
from accelgen.gateway.placement import Placer
from accelgen.gateway.pods import PodSource, PodWatcher, parse_address


def pool_tiers(path: str | None) -> TierSet:
    """The pool's tiers: the file, else the sidecar's defaults (ConfigError for a bad file)."""
    return load_tiers(path) if path else parse_tiers(SIDECAR_DEFAULT_TIERS)


def _source(args: argparse.Namespace) -> tuple[PodSource, str]:
    if args.pods:
        return PodSource.static(args.pods), f"--pods {args.pods}"
    return PodSource.dns(args.pods_dns), f"--pods-dns {args.pods_dns}"


async def wait_for_a_pod(watcher: PodWatcher, timeout_s: float) -> bool:
    """Refresh until a pod is ready or ``timeout_s`` passes (0: one refresh); whether one is."""
    deadline = time.monotonic() + timeout_s
    while True:
        pods = await watcher.refresh()
        if any(p.ready for p in pods):
            return True
        if time.monotonic() >= deadline:
            return False
        await asyncio.sleep(watcher.refresh_s)


async def serve_picker(args: argparse.Namespace) -> int:
    """The picker's whole life (see :mod:`accelgen.gateway.picker_cmd`)."""
    tiers = pool_tiers(args.tiers)
    router = make_router(args.routing, tiers=tiers)
    source, where = _source(args)
    watcher = PodWatcher(source, refresh_s=args.refresh_s)
    timeout_s = args.startup_timeout_s
    if timeout_s is None:
        timeout_s = DEFAULT_STARTUP_TIMEOUT_S if args.pods else 0.0
    must_reach = timeout_s > 0
    if not await wait_for_a_pod(watcher, timeout_s) and must_reach:
        await watcher.close()
        raise ConfigError(f"no pod answered within {timeout_s:g} s ({where})")
    host, _ = parse_address(args.listen)
    health_listen = f"[{host}]:{args.health_port}" if ":" in host else f"{host}:{args.health_port}"
    placer = Placer(router, watcher)
    server = PickerServer(EndpointPicker(placer, tiers), listen=args.listen, health_listen=health_listen)
    try:
        await server.start()
    except (OSError, RuntimeError) as err:
        await watcher.close()
        raise ConfigError(f"cannot listen on {args.listen} / {health_listen}: {err}", field="--listen") from None
    ready = sum(p.ready for p in watcher.pods)
    print(
        f"accelgen: endpoint picker (Envoy ext_proc) on {args.listen}, gRPC health on {health_listen}; "
        f"routing {args.routing} over {ready}/{len(watcher.pods)} ready pods ({where})",
        flush=True,
    )
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    tasks = [asyncio.create_task(watcher.run()), asyncio.create_task(server.follow_pods())]
    try:
        await stop.wait()
    finally:
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        await placer.close()
        await server.stop()
        await watcher.close()
    return 0
