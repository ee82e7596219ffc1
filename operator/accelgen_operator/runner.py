"""Run the operator in the current event loop (the CLI, the tests and the benchmark)."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Collection

import kopf

from accelgen_operator.handlers import OperatorConfig, build_registry


@contextlib.asynccontextmanager
async def running_operator(
    cfg: OperatorConfig,
    *,
    namespaces: Collection[str] = (),
    standalone: bool = True,
    start_timeout_s: float = 30.0,
) -> AsyncIterator[asyncio.Task[None]]:
    """Start kopf with our handlers, wait until it is ready, stop it on exit."""
    stop, ready = asyncio.Event(), asyncio.Event()
    task = asyncio.create_task(
        kopf.operator(
            registry=build_registry(cfg),
            standalone=standalone,
            clusterwide=not namespaces,
            namespaces=list(namespaces),
            stop_flag=stop,
            ready_flag=ready,
        )
    )
    try:
        done, _ = await asyncio.wait(
            [task, asyncio.ensure_future(ready.wait())],
            timeout=start_timeout_s,
            return_when=asyncio.FIRST_COMPLETED,
        )
        if task in done:
            task.result()  # it stopped before it was ready: raise why
        yield task
    finally:
        stop.set()
        with contextlib.suppress(asyncio.CancelledError):
            await asyncio.wait_for(task, timeout=30)
