"""Run the operator in a thread with its own event loop (the tests and the benchmark).

kopf treats every task born in its loop after it started as its own and cancels what is
left when it stops; a separate loop keeps the caller's tasks (a test's fixtures, the
emulated API server) out of its reach, the way ``kopf.testing.KopfRunner`` does.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
from collections.abc import AsyncIterator, Collection

import kopf

from accelgen_operator.handlers import OperatorConfig, build_registry


@contextlib.asynccontextmanager
async def running_operator(
    cfg: OperatorConfig,
    *,
    namespaces: Collection[str] = (),
    standalone: bool = True,
    liveness_endpoint: str | None = None,
    start_timeout_s: float = 30.0,
) -> AsyncIterator[None]:
    """Start kopf with our handlers in a thread, wait until it is ready, stop it on exit."""
    stop, ready = threading.Event(), threading.Event()
    errors: list[BaseException] = []

    def run() -> None:
        try:
            asyncio.run(
                kopf.operator(
                    registry=build_registry(cfg),
                    standalone=standalone,
                    clusterwide=not namespaces,
                    namespaces=list(namespaces),
                    liveness_endpoint=liveness_endpoint,
                    stop_flag=stop,
                    ready_flag=ready,
                )
            )
        except BaseException as err:  # reported to the caller below
            errors.append(err)
        finally:
            ready.set()

    thread = threading.Thread(target=run, name="accelgen-operator", daemon=True)
    thread.start()
    loop = asyncio.get_running_loop()
    try:
        await loop.run_in_executor(None, ready.wait, start_timeout_s)
        if errors:
            raise RuntimeError("the operator stopped before it was ready") from errors[0]
        yield
    finally:
        stop.set()
        await loop.run_in_executor(None, thread.join, 30.0)
