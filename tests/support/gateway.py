"""The endpoint picker in a thread of its own, and Envoy's side of the ext_proc conversation.

No Envoy binary can run here, so the tests play Envoy with a real gRPC client: the
generated ``ExternalProcessor`` stub of Envoy's own protos (``xds-protos``), sending the
messages Envoy sends for one request (headers, then the body in the configured mode)
and reading what the picker answers.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Coroutine, Iterator, Mapping
from concurrent.futures import Future
from typing import Any, TypeVar

import grpc
from envoy.config.core.v3 import base_pb2
from envoy.extensions.filters.http.ext_proc.v3 import processing_mode_pb2
from envoy.service.ext_proc.v3 import external_processor_pb2 as ext_proc
from envoy.service.ext_proc.v3 import external_processor_pb2_grpc as ext_proc_grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from accelgen.core.routing import make_router
from accelgen.core.tiers import TierSet
from accelgen.gateway.picker import DESTINATION_HEADER, EndpointPicker, PickerServer
from accelgen.gateway.placement import Placer
from accelgen.gateway.pods import PodSource, PodWatcher
from tests.support.sidecar import TIERS

T = TypeVar("T")
Mode = processing_mode_pb2.ProcessingMode


_LOOP: asyncio.AbstractEventLoop | None = None


def _shared_loop() -> asyncio.AbstractEventLoop:
    """One event loop in a thread for every picker of the test session.

    NOTE: grpc.aio keeps process-wide state tied to the loop it first runs on; one loop
    for every picker does not depend on how it moves between loops (a picker's start
    once timed out, unexplained, when each had a loop of its own).
    """
    global _LOOP
    if _LOOP is None:
        _LOOP = asyncio.new_event_loop()
        threading.Thread(target=_LOOP.run_forever, name="picker-loop", daemon=True).start()
    return _LOOP


class PickerThread:
    """``EndpointPicker`` over ``pods`` on free loopback ports, on the tests' picker loop thread."""

    def __init__(self, pods: list[str], *, routing: str = "accelgen", tiers: TierSet = TIERS, refresh_s: float = 0.05):
        self.loop = _shared_loop()
        self.watcher = PodWatcher(PodSource(addresses=tuple(pods)), refresh_s=refresh_s)
        self.placer = Placer(make_router(routing, tiers=tiers), self.watcher)
        self.server = PickerServer(
            EndpointPicker(self.placer, tiers), listen="127.0.0.1:0", health_listen="127.0.0.1:0"
        )
        self.run(self._start())
        self.channel = grpc.insecure_channel(f"127.0.0.1:{self.server.ports[0]}")
        self.stub = ext_proc_grpc.ExternalProcessorStub(self.channel)
        self.health_channel = grpc.insecure_channel(f"127.0.0.1:{self.server.ports[1]}")
        self.health = health_pb2_grpc.HealthStub(self.health_channel)

    def run(self, coro: Coroutine[Any, Any, T], timeout_s: float = 30.0) -> T:
        future: Future[T] = asyncio.run_coroutine_threadsafe(coro, self.loop)
        return future.result(timeout_s)

    async def _start(self) -> None:
        await self.watcher.refresh()
        await self.server.start()
        self._tasks = [asyncio.create_task(self.watcher.run()), asyncio.create_task(self.server.follow_pods())]

    def health_status(self, service: str) -> int:
        status: int = self.health.Check(health_pb2.HealthCheckRequest(service=service), timeout=5).status
        return status

    def stop(self) -> None:
        async def cleanup() -> None:
            for task in self._tasks:
                task.cancel()
            await asyncio.gather(*self._tasks, return_exceptions=True)
            await self.placer.close()
            await self.server.stop(0.1)
            await self.watcher.close()

        self.channel.close()
        self.health_channel.close()
        self.run(cleanup())


def request_messages(
    headers: Mapping[str, str],
    body: bytes | None = None,
    *,
    mode: int = Mode.NONE,
    chunk_bytes: int = 0,
    subset: list[str] | None = None,
) -> Iterator[ext_proc.ProcessingRequest]:
    """What Envoy sends the picker for one request: headers, then its body in ``mode``."""
    header_map = base_pb2.HeaderMap(
        headers=[base_pb2.HeaderValue(key=k, raw_value=v.encode()) for k, v in headers.items()]
    )
    first = ext_proc.ProcessingRequest(
        request_headers=ext_proc.HttpHeaders(headers=header_map, end_of_stream=body is None),
        protocol_config=ext_proc.ProtocolConfiguration(request_body_mode=mode),
    )
    if subset is not None:
        first.metadata_context.filter_metadata["envoy.lb.subset_hint"].update(
            {"x-gateway-destination-endpoint-subset": subset}
        )
    yield first
    if body is None:
        return
    size = chunk_bytes or max(1, len(body))
    chunks = [body[i : i + size] for i in range(0, len(body), size)] or [b""]
    for i, chunk in enumerate(chunks):
        yield ext_proc.ProcessingRequest(request_body=ext_proc.HttpBody(body=chunk, end_of_stream=i == len(chunks) - 1))


def converse(
    picker: PickerThread, headers: Mapping[str, str], body: bytes | None = None, **kwargs: Any
) -> list[ext_proc.ProcessingResponse]:
    """One request's whole ext_proc stream; every response the picker sent."""
    messages = list(request_messages(headers, body, **kwargs))
    return list(picker.stub.Process(iter(messages), timeout=30))


def destination(responses: list[ext_proc.ProcessingResponse]) -> tuple[str | None, str | None]:
    """(the ``x-gateway-destination-endpoint`` header set, the ``envoy.lb`` metadata's value)."""
    header = metadata = None
    for response in responses:
        kind = response.WhichOneof("response")
        if kind in ("request_headers", "request_body"):
            common = getattr(response, kind).response
            for option in common.header_mutation.set_headers:
                if option.header.key == DESTINATION_HEADER:
                    header = option.header.raw_value.decode() or option.header.value
        if "envoy.lb" in response.dynamic_metadata.fields:
            metadata = response.dynamic_metadata.fields["envoy.lb"].struct_value.fields[DESTINATION_HEADER].string_value
    return header, metadata


def immediate(responses: list[ext_proc.ProcessingResponse]) -> ext_proc.ImmediateResponse | None:
    """The ImmediateResponse the picker answered, if it did."""
    found = [r.immediate_response for r in responses if r.HasField("immediate_response")]
    return found[0] if found else None
