"""The endpoint picker's ext_proc conversation, against real sidecars (``--engine sim``) as pods.

No Envoy binary can run here: the tests play Envoy with a real gRPC client, the
``ExternalProcessor`` stub generated from Envoy's own protos (``xds-protos``), sending
what Envoy sends for a request (its headers, then its body in the configured body mode)
to the real picker, which reads the real sidecars' state over HTTP.
"""

from __future__ import annotations

import asyncio
import json
import threading
from collections.abc import Iterator
from typing import Any

import aiohttp
import pytest
from envoy.service.ext_proc.v3 import external_processor_pb2 as ext_proc
from grpc_health.v1 import health_pb2

from accelgen.core.tiers import parse_tiers
from accelgen.process import free_port
from accelgen.sim.realtime import SimEngineConfig
from tests.support.gateway import Mode, PickerThread, converse, destination, immediate, request_messages
from tests.support.sidecar import Stack, wait_for

pytestmark = pytest.mark.slow  # real sidecars and a real gRPC server
POST = {":method": "POST", ":path": "/v1/completions", "content-type": "application/json"}
SERVING, NOT_SERVING = health_pb2.HealthCheckResponse.SERVING, health_pb2.HealthCheckResponse.NOT_SERVING


@pytest.fixture(scope="module")
def stacks() -> Iterator[list[Stack]]:
    # Slowed steps: a request keeps its pod busy long enough to be seen there.
    started = [Stack(sim=SimEngineConfig(time_scale=4.0)).start() for _ in range(2)]
    yield started
    for stack in started:
        stack.stop()


@pytest.fixture(scope="module")
def pods(stacks: list[Stack]) -> list[str]:
    return [s.url.removeprefix("http://") for s in stacks]


@pytest.fixture
def picker(pods: list[str]) -> Iterator[PickerThread]:
    running = PickerThread(pods)
    yield running
    running.stop()


def _json(response: ext_proc.ImmediateResponse) -> dict[str, object]:
    doc: dict[str, object] = json.loads(response.body)
    return doc


def _headers(response: ext_proc.ImmediateResponse) -> dict[str, str]:
    return {o.header.key: (o.header.raw_value.decode() or o.header.value) for o in response.headers.set_headers}


def test_routed_request_names_one_pod_in_the_header_and_the_metadata(picker: PickerThread, pods: list[str]) -> None:
    # The client's own destination header is overwritten, never trusted.
    responses = converse(picker, {**POST, "x-gateway-destination-endpoint": "6.6.6.6:1"})
    (response,) = responses
    assert response.WhichOneof("response") == "request_headers"
    header, metadata = destination(responses)
    assert header in pods and header == metadata
    (option,) = response.request_headers.response.header_mutation.set_headers
    assert option.append_action == option.OVERWRITE_IF_EXISTS_OR_ADD
    assert response.request_headers.response.clear_route_cache


@pytest.mark.parametrize("mode", [Mode.BUFFERED, Mode.FULL_DUPLEX_STREAMED])
def test_body_modes_decide_on_the_body_and_keep_it(picker: PickerThread, pods: list[str], mode: int) -> None:
    body = json.dumps({"prompt": "word " * 400, "max_tokens": 8}).encode()
    # Envoy sends a buffered body as one message, a full-duplex streamed one in chunks.
    chunk_bytes = 500 if mode == Mode.FULL_DUPLEX_STREAMED else 0
    responses = converse(picker, POST, body, mode=mode, chunk_bytes=chunk_bytes)
    kinds = [r.WhichOneof("response") for r in responses]
    assert kinds == ["request_headers", "request_body"]
    header, metadata = destination(responses)
    assert header in pods and header == metadata
    if mode == Mode.FULL_DUPLEX_STREAMED:
        # The headers answer waits for the body; the body goes on whole, as received.
        assert responses[0].request_headers.response.header_mutation.set_headers
        streamed = responses[1].request_body.response.body_mutation.streamed_response
        assert streamed.body == body and streamed.end_of_stream
    else:
        # Buffered: the headers pass unchanged, the body's answer sets the destination.
        assert not responses[0].request_headers.response.header_mutation.set_headers
        assert responses[1].request_body.response.header_mutation.set_headers


def test_the_router_decides(pods: list[str]) -> None:
    picker = PickerThread(pods, routing="round-robin")
    try:
        chosen = [destination(converse(picker, POST))[0] for _ in range(4)]
    finally:
        picker.stop()
    assert chosen[0] != chosen[1] and chosen[:2] == chosen[2:] and set(chosen) == set(pods)


def test_subset_hint_limits_the_choice(picker: PickerThread, pods: list[str]) -> None:
    for _ in range(3):
        assert destination(converse(picker, POST, subset=[pods[1]])) == (pods[1], pods[1])
    refused = immediate(converse(picker, POST, subset=["10.9.9.9:80"]))
    assert refused is not None and refused.status.code == 503


def test_health_serving_while_a_pod_is_ready(picker: PickerThread) -> None:
    for service in ("liveness", "readiness", "", "envoy.service.ext_proc.v3.ExternalProcessor"):
        assert picker.health_status(service) == SERVING


def test_no_ready_pod_is_503_without_a_destination() -> None:
    picker = PickerThread([f"127.0.0.1:{free_port()}", f"127.0.0.1:{free_port()}"])  # nobody listens
    try:
        responses = converse(picker, POST)
        refused = immediate(responses)
        assert refused is not None and refused.status.code == 503
        assert destination(responses) == (None, None)
        assert _json(refused)["error"]["type"] == "service_unavailable"  # type: ignore[index]
        assert _headers(refused)["content-type"] == "application/json"
        assert picker.health_status("readiness") == NOT_SERVING
        assert picker.health_status("liveness") == SERVING
    finally:
        picker.stop()


@pytest.mark.parametrize(
    "headers",
    [{"x-llm-d-inference-objective": "gold"}, {"x-accelgen-tier": "gold"}, {"x-llm-d-slo-ttft-ms": "fast"}],
)
def test_bad_tier_header_is_400_as_the_sidecar_answers(picker: PickerThread, headers: dict[str, str]) -> None:
    refused = immediate(converse(picker, {**POST, **headers}))
    assert refused is not None and refused.status.code == 400
    assert _json(refused)["error"]["code"] in ("unknown_tier", "bad_header")  # type: ignore[index]


class _Load:
    """Streaming requests held open on every pod (each slowed sim step keeps them running)."""

    def __init__(self, urls: list[str], per_pod: int) -> None:
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()
        self.task = self._call(self._spawn(urls, per_pod))

    def _call(self, coro: Any) -> Any:
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(30)

    async def _spawn(self, urls: list[str], per_pod: int) -> asyncio.Task[None]:
        return asyncio.create_task(self._run(urls, per_pod))

    async def _run(self, urls: list[str], per_pod: int) -> None:
        body = {"prompt": "busy " * 64, "max_tokens": 4000, "stream": True}
        async with aiohttp.ClientSession() as session:

            async def one(url: str) -> None:
                async with session.post(url + "/v1/completions", json=body) as resp:
                    async for _ in resp.content.iter_any():
                        pass

            await asyncio.gather(*(one(u) for u in urls for _ in range(per_pod)))

    def stop(self) -> None:
        async def cancel() -> None:
            self.task.cancel()
            await asyncio.gather(self.task, return_exceptions=True)

        self._call(cancel())  # the clients hang up: the sidecars abort their requests
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(timeout=10)


def test_tier_from_gateway_headers_decides_what_is_shed(picker: PickerThread, stacks: list[Stack]) -> None:
    load = _Load([s.url for s in stacks], per_pod=4)
    try:
        assert wait_for(lambda: all(p.load > 0 for p in picker.watcher.pods), 30.0), picker.watcher.pods
        # A prompt far past what any pod prefills within the tier's first-token target.
        huge = {**POST, "content-length": str(40_000_000)}
        sheddable = [
            {"x-llm-d-inference-objective": "standard"},
            {"x-llm-d-slo-ttft-ms": "3000", "x-llm-d-slo-tpot-ms": "300"},  # -> standard
            {"x-accelgen-tier": "batch"},
        ]
        for headers in sheddable:
            responses = converse(picker, {**huge, **headers})
            refused = immediate(responses)
            assert refused is not None and refused.status.code == 429, headers
            assert destination(responses) == (None, None)
            assert _headers(refused)["retry-after"] == "1"
            assert _json(refused)["error"]["type"] == "rate_limit_error"  # type: ignore[index]
        protected = [
            {"x-llm-d-inference-objective": "interactive"},
            {"x-llm-d-slo-ttft-ms": "400", "x-llm-d-slo-tpot-ms": "80"},  # tighter than every tier: interactive
        ]
        for headers in protected:
            header, metadata = destination(converse(picker, {**huge, **headers}))
            assert header is not None and header == metadata, headers  # never shed: the most room
    finally:
        load.stop()


def test_a_plain_vllm_pod_is_read_from_its_metrics(stacks: list[Stack]) -> None:
    # The sim engine's own vLLM-like API: /metrics with vllm:* series, no /pool/state.
    assert stacks[0].sidecar is not None
    engine = stacks[0].sidecar.config.engine_url.removeprefix("http://")
    picker = PickerThread([engine])
    try:
        (pod,) = picker.watcher.pods
        assert pod.ready and pod.headroom == {} and pod.decode_step_s is None
        assert destination(converse(picker, POST)) == (engine, engine)
    finally:
        picker.stop()


def test_a_streamed_body_ending_in_trailers_is_decided_on_the_trailers(picker: PickerThread, pods: list[str]) -> None:
    body = json.dumps({"prompt": "word " * 50}).encode()
    messages = list(request_messages(POST, body, mode=Mode.FULL_DUPLEX_STREAMED))
    messages[-1].request_body.end_of_stream = False  # the body ends in trailers instead
    messages.append(ext_proc.ProcessingRequest(request_trailers=ext_proc.HttpTrailers()))
    responses = list(picker.stub.Process(iter(messages), timeout=30))
    assert [r.WhichOneof("response") for r in responses] == ["request_headers", "request_body", "request_trailers"]
    header, metadata = destination(responses)
    assert header in pods and header == metadata
    assert responses[1].request_body.response.body_mutation.streamed_response.body == body


def test_a_tier_the_picker_was_not_given_but_the_pods_serve_is_routed(pods: list[str]) -> None:
    only_standard = parse_tiers(
        {"default_tier": "standard", "tiers": [{"name": "standard", "ttft_ms": 2000, "tbt_ms": 250}]}
    )
    picker = PickerThread(pods, tiers=only_standard)
    try:
        assert wait_for(lambda: all("interactive" in p.headroom for p in picker.watcher.pods), 10.0)
        header, metadata = destination(converse(picker, {**POST, "x-accelgen-tier": "interactive"}))
        assert header in pods and header == metadata
        refused = immediate(converse(picker, {**POST, "x-accelgen-tier": "gold"}))
        assert refused is not None and refused.status.code == 400
    finally:
        picker.stop()
