"""The pod as an endpoint picker sees it: ``GET /pool/state`` and the vLLM counts on ``/metrics``.

A real ``accelgen serve --engine sim`` process. Contention is made by count, not by
speed: the sidecar releases one request at a time (``--max-running 1``), one long
interactive request holds that slot, and three batch requests queue behind it in the
sidecar. What is checked holds for as long as the long request runs, and the test waits
for that state rather than for a time; the long request is sized from the engine's own
latency model (tens of times what the checks need), so a slower machine only widens
the window.
"""

from __future__ import annotations

import asyncio
import dataclasses
import hashlib
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import aiohttp
import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from accelgen.core.routing import PodState
from accelgen.core.routing.estimate import headroom_tokens
from accelgen.gateway.pods import pod_from_state
from accelgen.server.pod_state import with_pod_counts
from accelgen.sim.realtime import SimEngineConfig
from tests.support.serve_process import ServeProcess
from tests.support.sidecar import TIERS, metric_value

KEY = "sk-pod-state"
NUM_QUEUED = 3
LONG_TOKENS = 1200  # ~8 s of the sim engine's decode steps: the window the checks run in
FIELDS = {f.name for f in dataclasses.fields(PodState)} - {"name", "address"}


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServeProcess]:
    tmp = tmp_path_factory.mktemp("pod-state")
    keys = tmp / "keys.yaml"
    keys.write_text(f"tenants:\n  - name: a\n    key_sha256: {hashlib.sha256(KEY.encode()).hexdigest()}\n")
    # One request in the engine at a time; a batch queue that three requests fill.
    running = ServeProcess(tmp, "--keys", str(keys), "--max-running", "1", "--max-queue", str(NUM_QUEUED))
    yield running
    running.stop()


def _state(server: ServeProcess) -> dict[str, Any]:
    resp = httpx.get(server.url + "/pool/state", timeout=10)  # no key: open as /metrics
    assert resp.status_code == 200, resp.text
    doc: dict[str, Any] = resp.json()
    return doc


def test_pool_state_has_exactly_the_pod_state_fields_and_needs_no_key(server: ServeProcess) -> None:
    doc = _state(server)
    assert set(doc) == FIELDS
    assert httpx.get(server.url + "/stats", timeout=10).status_code == 401  # /stats keeps its key
    pod = pod_from_state("p", "127.0.0.1:1", doc)  # the picker's own reader takes it whole
    assert {k: getattr(pod, k) for k in ("ready", "waiting", "running")} == {"ready": True, "waiting": 0, "running": 0}


def test_an_idle_pod_reports_room_in_every_tier(server: ServeProcess) -> None:
    doc = _state(server)
    assert doc["queued_tokens_by_tier"] == {t.name: 0 for t in TIERS}
    assert doc["queued_prefill_tokens"] == 0 and doc["long_prompts"] == 0
    assert doc["min_slack_s"] is None and doc["tightest_tbt_s"] is None
    assert doc["max_num_seqs"] == 1  # what the sidecar releases at once
    assert doc["decode_step_s"] > 0 and doc["prefill_s_per_token"] > 0
    # The sim engine publishes vLLM's cache_config_info: an idle pod's whole KV cache is free.
    sim = SimEngineConfig()
    assert doc["kv_free_tokens"] == sim.num_kv_blocks * sim.block_size_tokens
    assert set(doc["headroom"]) == {t.name for t in TIERS}
    assert all(v > 0 for v in doc["headroom"].values()), doc["headroom"]
    # A longer target fits more prompt tokens.
    assert doc["headroom"]["interactive"] < doc["headroom"]["standard"] < doc["headroom"]["batch"]


async def _first_token_then_drain(session: aiohttp.ClientSession, url: str, started: asyncio.Event) -> None:
    body = {"prompt": "hold the slot", "max_tokens": LONG_TOKENS, "stream": True}
    headers = {"Authorization": f"Bearer {KEY}", "x-accelgen-tier": "interactive"}
    async with session.post(url + "/v1/completions", json=body, headers=headers) as resp:
        assert resp.status == 200, await resp.text()
        async for line in resp.content:
            if line.startswith(b"data: {"):
                started.set()
    started.set()


async def _batch(session: aiohttp.ClientSession, url: str) -> int:
    body = {"prompt": "a queued batch job " * 8, "max_tokens": 4}
    headers = {"Authorization": f"Bearer {KEY}", "x-accelgen-tier": "batch"}
    async with session.post(url + "/v1/completions", json=body, headers=headers) as resp:
        await resp.read()
        return resp.status


async def _until(check: Any, what: str, timeout_s: float = 30.0) -> Any:
    """Poll ``check`` (a coroutine function) until truthy; a generous bound on a hang only."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout_s
    while True:
        found = await check()
        if found:
            return found
        assert loop.time() < deadline, f"timed out waiting for {what}"
        await asyncio.sleep(0.05)


async def _loaded(url: str) -> tuple[dict[str, Any], str, dict[str, Any]]:
    """(state, metrics, state again) while the long request runs and the batch ones queue."""
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=120)) as session:

        async def get(path: str) -> Any:
            async with session.get(url + path) as resp:
                return await (resp.json() if path == "/pool/state" else resp.text())

        async def empty() -> bool:
            s = await get("/pool/state")
            return bool(s["waiting"] == 0 and s["running"] == 0)

        await _until(empty, "an idle pod to start from")  # what an earlier test sent has left
        started = asyncio.Event()
        tasks: list[asyncio.Task[Any]] = [asyncio.create_task(_first_token_then_drain(session, url, started))]
        await asyncio.wait_for(started.wait(), 30)
        tasks += [asyncio.create_task(_batch(session, url)) for _ in range(NUM_QUEUED)]

        async def settled() -> Any:
            s = await get("/pool/state")
            # The engine's own figures come from its poll: wait until it has seen the long one.
            m = await get("/metrics")
            ok = s["waiting"] == NUM_QUEUED and s["running"] == 1
            return (s, m) if ok and metric_value(m, "accelgen_engine_requests_running") == 1 else None

        state, metrics = await _until(settled, f"{NUM_QUEUED} queued behind one running")
        again = await get("/pool/state")
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
    return state, metrics, again


def test_waiting_counts_the_sidecars_queue_and_headroom_follows_it(server: ServeProcess) -> None:
    idle = _state(server)
    assert idle["waiting"] == 0 and idle["running"] == 0
    state, metrics, again = asyncio.run(_loaded(server.url))
    assert again["waiting"] == NUM_QUEUED and again["running"] == 1, "the long request ended too soon"

    # vLLM's series, as a gateway's picker reads them, count the sidecar's queue...
    assert metric_value(metrics, "vllm:num_requests_waiting") == NUM_QUEUED
    assert metric_value(metrics, "vllm:num_requests_running") == 1
    # ...and the engine's raw figures keep names of their own.
    assert metric_value(metrics, "accelgen_engine_requests_waiting") == 0
    assert metric_value(metrics, "accelgen_queue_depth", tier="batch") == NUM_QUEUED

    queued = state["queued_tokens_by_tier"]
    assert queued["batch"] > 0 and queued["interactive"] == 0 and queued["standard"] == 0
    assert state["queued_prefill_tokens"] == queued["batch"]  # the long one has its first token
    assert state["tightest_tbt_s"] == pytest.approx(0.1)  # the interactive tier's TBT, running
    assert state["min_slack_s"] is not None and state["min_slack_s"] <= 0.1
    # Headroom is the core's estimate of exactly the reported state...
    expected = headroom_tokens(
        TIERS,
        queued_tokens_by_tier=queued,
        decode_step_s=state["decode_step_s"],
        prefill_s_per_token=state["prefill_s_per_token"],
        tightest_tbt_s=state["tightest_tbt_s"],
        kv_free_tokens=state["kv_free_tokens"],
    )
    assert state["headroom"]["interactive"] == pytest.approx(expected["interactive"], abs=0.1)
    assert state["headroom"]["standard"] == pytest.approx(expected["standard"], abs=0.1)
    # ...queued batch work costs the batch tier, not the tighter tiers it goes after...
    assert state["headroom"]["interactive"] > 0
    unqueued = headroom_tokens(
        TIERS,
        queued_tokens_by_tier={t.name: 0 for t in TIERS},
        decode_step_s=state["decode_step_s"],
        prefill_s_per_token=state["prefill_s_per_token"],
        tightest_tbt_s=state["tightest_tbt_s"],
        kv_free_tokens=state["kv_free_tokens"],
    )
    assert expected["batch"] == pytest.approx(unqueued["batch"] - queued["batch"])
    assert expected["interactive"] == pytest.approx(unqueued["interactive"])
    # ...the running interactive request's TBT leaves prefill only part of each step...
    assert state["tightest_tbt_s"] is not None and idle["tightest_tbt_s"] is None
    assert state["running_by_tier"] == {"interactive": 1, "standard": 0, "batch": 0}
    # ...and a full tier queue leaves that tier none: a request sent there is refused.
    assert state["headroom"]["batch"] <= 0
    assert metric_value(metrics, "accelgen_tier_headroom_tokens", tier="batch") <= 0
    assert metric_value(metrics, "accelgen_tier_headroom_tokens", tier="interactive") == pytest.approx(
        state["headroom"]["interactive"], rel=0.01
    )


def test_cancelled_requests_leave_the_pod_state(server: ServeProcess) -> None:
    asyncio.run(_loaded(server.url))

    async def empty() -> bool:
        doc = _state(server)
        return bool(doc["waiting"] == 0 and doc["running"] == 0 and doc["queued_prefill_tokens"] == 0)

    asyncio.run(_until(empty, "the pod empty again"))
    assert _state(server)["min_slack_s"] is None


def _parse(text: str) -> dict[str, list[tuple[dict[str, str], float]]]:
    out: dict[str, list[tuple[dict[str, str], float]]] = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            out.setdefault(s.name, []).append((s.labels, s.value))
    return out


def test_the_vllm_counts_keep_their_labels_and_sum_to_the_pods() -> None:
    page = (
        "# HELP vllm:num_requests_waiting Number of requests waiting.\n"
        "# TYPE vllm:num_requests_waiting gauge\n"
        'vllm:num_requests_waiting{engine="0",model_name="m"} 0.0\n'
        'vllm:num_requests_waiting{engine="1",model_name="m"} 2.0\n'
        "# TYPE vllm:kv_cache_usage_perc gauge\n"
        'vllm:kv_cache_usage_perc{engine="0",model_name="m"} 0.25\n'
    )
    parsed = _parse(with_pod_counts(page, waiting=7, running=3))
    assert parsed["vllm:num_requests_waiting"] == [
        ({"engine": "0", "model_name": "m"}, 7.0),
        ({"engine": "1", "model_name": "m"}, 0.0),
    ]
    assert parsed["vllm:kv_cache_usage_perc"] == [({"engine": "0", "model_name": "m"}, 0.25)]  # untouched
    assert parsed["vllm:num_requests_running"] == [({}, 3.0)]  # absent from the page: added
    assert "sidecar" in with_pod_counts(page, waiting=0, running=0).split("\n", 1)[0]  # its HELP says so
    assert _parse(with_pod_counts("", waiting=1, running=0))["vllm:num_requests_waiting"] == [({}, 1.0)]


def test_pool_state_is_in_the_published_schema() -> None:
    doc = json.loads((Path(__file__).parents[2] / "sidecar/accelgen/server/openapi.json").read_text())
    schema = doc["components"]["schemas"]["PoolState"]
    assert set(schema["properties"]) == FIELDS == set(schema["required"])
    assert "/pool/state" in doc["paths"]


def test_the_state_counts_every_prompt_token_not_yet_prefilled() -> None:
    """The sidecar's own objects, no server: released requests with and without a first
    token, queued ones, the engine's snapshot, and what the state makes of them."""
    from accelgen.server.pod_state import LONG_PROMPT_TOKENS, InEngine, pod_state
    from accelgen.server.speed import DEFAULT_SIM_MODEL, Speed
    from accelgen.server.state import Sidecar, SidecarConfig
    from accelgen.server.stream import Timing
    from accelgen.server.tickets import AdmissionConfig

    async def run() -> tuple[dict[str, Any], float, float]:
        admission = AdmissionConfig(max_in_flight=3, max_queue_per_tier=2)
        sidecar = Sidecar(
            SidecarConfig(tiers=TIERS, engine_url="http://127.0.0.1:9", admission=admission), Speed(DEFAULT_SIM_MODEL)
        )
        sidecar.engine.state.ready, sidecar.engine.state.waiting = True, 1
        queue = sidecar.admission
        tiers = {t.name: t for t in TIERS}
        released = []
        for tier, prompt in (("interactive", 100), ("standard", 300), ("batch", LONG_PROMPT_TOKENS + 10)):
            ticket = queue.make_ticket(tiers[tier], prompt, 8)
            queue.admit(ticket)
            queue.pump()
            assert ticket.outcome == "released"
            released.append(ticket)
        for prompt in (40, 60):  # the engine is full: these two stay in the standard queue
            queue.admit(queue.make_ticket(tiers["standard"], prompt, 8))
        now_s = released[0].arrival_s + 1.0
        decoding = Timing(tier=tiers["interactive"], arrival_s=released[0].arrival_s)
        decoding.timeline.token(now_s - 0.03)  # its first token 30 ms ago
        for ticket in released:
            timing = decoding if ticket is released[0] else Timing(tier=ticket.tier, arrival_s=ticket.arrival_s)
            sidecar.in_engine[id(ticket)] = InEngine(ticket, timing)
        return pod_state(sidecar, now_s), now_s, decoding.timeline.last_token_s or 0.0

    state, now_s, last_token_s = asyncio.run(run())
    assert set(state) == FIELDS
    assert (state["waiting"], state["running"]) == (2 + 1, 3 - 1)  # the engine's one waiting, counted once
    by_tier = {"interactive": 0, "standard": 300 + 40 + 60, "batch": LONG_PROMPT_TOKENS + 10}
    assert state["queued_tokens_by_tier"] == by_tier  # the decoding request's prompt is done
    assert state["queued_prefill_tokens"] == sum(by_tier.values())
    assert state["long_prompts"] == 1
    assert state["running_by_tier"] == {"interactive": 1, "standard": 1, "batch": 1}
    assert state["tightest_tbt_s"] == pytest.approx(0.1)
    assert state["min_slack_s"] == pytest.approx(last_token_s + 0.1 - now_s)  # 70 ms to its next token
    expected = headroom_tokens(
        TIERS,
        queued_tokens_by_tier=by_tier,
        decode_step_s=state["decode_step_s"],
        prefill_s_per_token=state["prefill_s_per_token"],
        tightest_tbt_s=0.1,
    )
    assert state["headroom"]["interactive"] == pytest.approx(expected["interactive"], abs=0.1)
    assert state["headroom"]["batch"] == pytest.approx(expected["batch"], abs=0.1)
    assert expected["standard"] > 0 and state["headroom"]["standard"] == 0  # its queue (2) is full


def test_free_kv_comes_from_vllms_cache_config_info() -> None:
    from accelgen.server.pod_state import kv_free_tokens

    page = (
        "# HELP vllm:cache_config_info Information of the LLMEngine CacheConfig\n"
        "# TYPE vllm:cache_config_info gauge\n"
        'vllm:cache_config_info{block_size="16",num_gpu_blocks="1000",cache_dtype="auto"} 1.0\n'
        'vllm:kv_cache_usage_perc{model_name="m"} 0.25\n'
    )
    assert kv_free_tokens(page, 0.25) == 12_000
    assert kv_free_tokens(page, 1.5) == 0
    assert kv_free_tokens('vllm:kv_cache_usage_perc{model_name="m"} 0.25\n', 0.25) is None  # not reported
    assert kv_free_tokens('vllm:cache_config_info{block_size="16"} 1.0\n', 0.0) is None
