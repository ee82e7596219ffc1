"""``accelgen.bench.replay`` against a fake OpenAI server: token stamps, failures, one resend, drain."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
import pytest_asyncio
from aiohttp import web
from aiohttp.test_utils import TestServer

from accelgen.bench.replay import WARMUP_REQUESTS, Outcome, replay, write_request_log
from accelgen.core.tiers import parse_tiers
from accelgen.sim.metrics import Recorder
from accelgen.sim.workload import SimRequest

TIERS = parse_tiers(
    {
        "default_tier": "chat",
        "tiers": [
            {"name": "chat", "ttft_ms": 5000, "tbt_ms": 2000, "priority": 0},
            {"name": "batch", "deadline_s": 600, "priority": 1},
        ],
    }
)
# The fake server's behaviour by a request's output length (max_tokens).
HTTP_ERROR, CUT_SHORT, HANGS, RESET_ONCE = 7, 9, 11, 13


class FakeServer:
    """Streams ``max_tokens`` tokens two per chunk, with cumulative usage, as vLLM does."""

    def __init__(self) -> None:
        self.bodies: list[dict[str, Any]] = []
        self.resets = 0
        self.release = asyncio.Event()  # set at shutdown: a hanging request may end

    async def completions(self, request: web.Request) -> web.StreamResponse:
        body = await request.json()
        self.bodies.append(body)
        n = int(body["max_tokens"])
        if n == HTTP_ERROR:
            return web.Response(status=500, text="engine failed")
        if n == RESET_ONCE and self.resets == 0:
            self.resets += 1
            assert request.transport is not None
            request.transport.close()  # before any byte of an answer: a reset keep-alive connection
            return web.Response()
        if n == HANGS:
            await self.release.wait()
            return web.Response()
        resp = web.StreamResponse()
        await resp.prepare(request)
        sent = 0
        for sent in range(2, (n // 2 if n == CUT_SHORT else n) + 2, 2):
            usage = {"completion_tokens": min(sent, n)}
            chunk = {"choices": [{"text": "x"}], "usage": usage}
            await resp.write(f"data: {json.dumps(chunk)}\n\n".encode())
            await asyncio.sleep(0.001)
        await resp.write(b"data: [DONE]\n\n")
        return resp


@pytest_asyncio.fixture
async def server() -> AsyncIterator[tuple[str, FakeServer]]:
    fake = FakeServer()
    app = web.Application()
    app.router.add_post("/v1/completions", fake.completions)
    srv = TestServer(app, host="127.0.0.1")
    await srv.start_server()
    yield str(srv.make_url("")).rstrip("/"), fake
    fake.release.set()
    await srv.close()


def requests_of(*outputs: int) -> list[SimRequest]:
    return [SimRequest(f"r{i}", 0.02 * i, 16, n, "chat" if i % 2 == 0 else "batch") for i, n in enumerate(outputs)]


async def run_replay(
    base_url: str, requests: list[SimRequest], *, name: str = "accelgen", drain_s: float = 10.0
) -> tuple[Recorder, Outcome]:
    recorder = Recorder(requests, TIERS)
    outcome = await replay(base_url, name, requests, recorder, TIERS, vocab=100, seed=3, drain_s=drain_s)
    return recorder, outcome


@pytest.mark.asyncio
async def test_every_token_is_stamped_and_the_warm_up_goes_first(server: tuple[str, FakeServer]) -> None:
    base_url, fake = server
    requests = requests_of(5, 8, 3)
    recorder, outcome = await run_replay(base_url, requests)
    warm, sent = fake.bodies[:WARMUP_REQUESTS], fake.bodies[WARMUP_REQUESTS:]
    assert all(b["vllm_xargs"] == {"slo_tier": "chat"} for b in warm)
    assert sorted(b["max_tokens"] for b in sent) == [3, 5, 8]
    assert {json.dumps(b["vllm_xargs"]) for b in sent} == {'{"slo_tier": "chat"}', '{"slo_tier": "batch"}'}
    assert all("priority" not in b for b in sent)
    for req in requests:
        rec = recorder.records[req.request_id]
        assert rec.num_tokens == req.output_tokens and rec.finish_s is not None and not rec.dropped
        times = outcome.token_times_s[req.request_id]
        assert len(times) == (req.output_tokens + 1) // 2  # one stamp per chunk
        assert times == sorted(times) and times[0] >= req.arrival_s
    assert (outcome.failed, outcome.unfinished, outcome.retried) == ({}, [], [])
    assert len(outcome.late_sends_s) == len(requests) and min(outcome.late_sends_s) >= 0.0
    assert outcome.loop_lags_s and outcome.wall_s >= requests[-1].arrival_s
    assert outcome.start_wall_s > 0


@pytest.mark.asyncio
async def test_priority_configuration_sends_the_tiers_priority(server: tuple[str, FakeServer]) -> None:
    base_url, fake = server
    await run_replay(base_url, requests_of(4, 4), name="vllm-priority")
    sent = fake.bodies[WARMUP_REQUESTS:]
    assert sorted(b["priority"] for b in sent) == sorted(t.priority for t in TIERS)


@pytest.mark.asyncio
async def test_failures_are_counted_never_fatal(server: tuple[str, FakeServer]) -> None:
    base_url, _ = server
    requests = requests_of(HTTP_ERROR, CUT_SHORT, 4)
    recorder, outcome = await run_replay(base_url, requests)
    assert outcome.failed["r0"].startswith("RuntimeError: HTTP 500")
    assert outcome.failed["r1"] == f"RuntimeError: stream ended after 4 of {CUT_SHORT} tokens"
    assert recorder.records["r0"].dropped and recorder.records["r1"].dropped
    assert not recorder.records["r2"].dropped and recorder.records["r2"].num_tokens == 4


@pytest.mark.asyncio
async def test_a_connection_reset_before_any_token_is_sent_again(server: tuple[str, FakeServer]) -> None:
    base_url, fake = server
    recorder, outcome = await run_replay(base_url, requests_of(RESET_ONCE))
    assert fake.resets == 1 and outcome.retried == ["r0"] and outcome.failed == {}
    assert recorder.records["r0"].num_tokens == RESET_ONCE


@pytest.mark.asyncio
async def test_what_still_runs_at_the_drain_limit_is_cut_off(server: tuple[str, FakeServer], tmp_path: Path) -> None:
    base_url, _ = server
    recorder, outcome = await run_replay(base_url, requests_of(4, HANGS), drain_s=0.3)
    assert outcome.unfinished == ["r1"] and outcome.failed == {}
    assert recorder.records["r1"].finish_s is None and recorder.records["r0"].finish_s is not None
    log = tmp_path / "requests.jsonl"
    write_request_log(log, recorder, outcome)
    lines = [json.loads(line) for line in log.read_text().splitlines()]
    assert [line["id"] for line in lines] == ["r0", "r1"]
    assert lines[0]["tokens"] == 4 and lines[0]["late_gaps"] == [] and lines[0]["error"] is None
    assert {line["start_wall_s"] for line in lines} == {outcome.start_wall_s}


def test_request_log_names_late_gaps_and_errors(tmp_path: Path) -> None:
    requests = requests_of(3)
    recorder = Recorder(requests, TIERS)
    for t in (0.1, 0.2, 3.0):
        recorder.token("r0", t)
    outcome = Outcome(failed={"r0": "RuntimeError: boom"}, token_times_s={"r0": [0.1, 0.2, 3.0]}, start_wall_s=5.0)
    log = tmp_path / "requests.jsonl"
    write_request_log(log, recorder, outcome)
    (line,) = [json.loads(x) for x in log.read_text().splitlines()]
    assert line["late_gaps"] == [[3.0, 2.8]]  # the chat tier's TBT is 2 s
    assert (line["error"], line["start_wall_s"], line["tier"]) == ("RuntimeError: boom", 5.0, "chat")
