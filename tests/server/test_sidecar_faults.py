"""Faults: the engine dies mid-stream, is down, stalls; clients vanish by the hundred."""

from __future__ import annotations

import asyncio
import sys
import time
from collections.abc import Iterator

import httpx
import openai
import pytest

from accelgen.core.tiers import parse_tiers
from accelgen.process import ChildProcess, free_port
from accelgen.sim.realtime import SimEngineConfig
from tests.support.faults import kill_mid_stream_then_down, ready
from tests.support.sidecar import TIERS_CONFIG, Stack, disconnecting_clients, metric_value, server_errors, wait_for


class EngineProcess:
    """The sim engine as a separate process, so it can be killed like a real engine."""

    def __init__(self, port: int, *extra: str) -> None:
        self.port = port
        argv = [sys.executable, "-m", "accelgen.sim.http", "--port", str(port), *extra]
        self.proc = ChildProcess(argv, name="sim engine")
        self.proc.wait_ready(f"http://127.0.0.1:{port}/health", timeout_s=20)

    def kill(self) -> None:
        self.proc.kill()


@pytest.fixture
def engine_process() -> Iterator[EngineProcess]:
    # time-scale 4: about 20 ms per token, so a 100-token stream is still running when killed.
    engine = EngineProcess(free_port(), "--time-scale", "4")
    yield engine
    engine.kill()


def test_engine_killed_mid_stream_then_back(engine_process: EngineProcess) -> None:
    stack = Stack(engine_url=f"http://127.0.0.1:{engine_process.port}").start()
    try:
        client = openai.OpenAI(base_url=stack.url + "/v1", api_key="x", max_retries=0)
        kill_mid_stream_then_down(stack, client, model="m", max_tokens=100, kill=engine_process.kill, tier="standard")
        restarted = EngineProcess(engine_process.port)
        try:
            assert wait_for(lambda: ready(stack), 5)
            out = client.completions.create(model="m", prompt="x", max_tokens=3)
            assert out.usage is not None and out.usage.completion_tokens == 3
        finally:
            restarted.kill()
    finally:
        stack.stop()


def test_stalled_engine_is_502_after_the_token_timeout() -> None:
    # Each iteration takes ~25 s: the first token never comes within 0.5 s.
    stack = Stack(sim=SimEngineConfig(time_scale=5000), token_timeout_s=0.5).start()
    try:
        started = time.monotonic()
        resp = httpx.post(stack.url + "/v1/completions", json={"prompt": "x", "max_tokens": 5}, timeout=10)
        assert resp.status_code == 502 and "timeout" in resp.json()["error"]["message"]
        assert time.monotonic() - started < 3
    finally:
        stack.stop()


def test_200_clients_disconnecting_leave_nothing_running(caplog: pytest.LogCaptureFixture) -> None:
    # 64 released at a time (the default), the rest queued in the sidecar meanwhile; the
    # batch tier, so the queued ones wait for their turn rather than being refused.
    tiers = parse_tiers({**TIERS_CONFIG, "default_tier": "batch"})
    stack = Stack(tiers=tiers, sim=SimEngineConfig(max_num_seqs=256)).start()
    try:
        assert asyncio.run(disconnecting_clients(stack.url, 200, 2)) == 200
        engine = stack.engine
        assert engine is not None and stack.sidecar is not None
        sidecar = stack.sidecar
        assert wait_for(lambda: not engine.running and not engine.waiting, 5)
        assert engine.free_blocks == engine.config.num_kv_blocks  # every KV block back
        assert wait_for(lambda: sidecar.admission.in_flight == 0, 5)

        def engine_running() -> float:
            text = httpx.get(stack.url + "/metrics").text
            return float(metric_value(text, "accelgen_engine_requests_running"))  # the raw count

        assert wait_for(lambda: engine_running() == 0, 5)
        text = httpx.get(stack.url + "/metrics").text
        assert metric_value(text, "accelgen_requests_total", tier="batch", outcome="cancelled") == 200
        assert metric_value(text, "accelgen_requests_completed_total", tier="batch") == 0
        assert server_errors(caplog) == []
    finally:
        stack.stop()
