"""The AccelGen endpoint picker: Envoy's ``ext_proc`` over gRPC, running a core routing policy.

It follows the Endpoint Picker Protocol of the Gateway API Inference Extension
(kubernetes-sigs/gateway-api-inference-extension, ``docs/proposals/004-endpoint-picker-protocol``):
the picker implements ``envoy.service.ext_proc.v3.ExternalProcessor/Process``, a
bidirectional stream of one HTTP request's events, with the messages generated from
Envoy's own protos (the ``xds-protos`` package). Per request::

    Envoy ──request_headers──► picker          (end_of_stream, or a body mode that
          ◄─headers response──                  does not hold the body: decided here)
          ──request_body(s)──►                 (BUFFERED / FULL_DUPLEX_STREAMED: the
          ◄─headers response─                   body is read for the prompt's size,
          ◄─body response─────                  then decided)

The decision is answered as the protocol asks:

* routed: a header mutation setting ``x-gateway-destination-endpoint: ip:port`` (the
  client's own value overwritten) with the route cache cleared, and the same value in
  the response's dynamic metadata, ``{"envoy.lb": {"x-gateway-destination-endpoint": ...}}``;
* shed (a request no pod can serve in time, sheddable or queued past its deadline):
  an ImmediateResponse 429 with a JSON error body and ``Retry-After``;
* no ready pod (or none in the gateway's subset hint, the request metadata
  ``envoy.lb.subset_hint`` / ``x-gateway-destination-endpoint-subset``): an
  ImmediateResponse 503 with a JSON error body, and no destination header;
* a malformed target header, or a tier name neither the picker's tiers nor any pod
  knows: an ImmediateResponse 400, as the sidecar would answer.

Response events (headers, body, trailers), when the gateway sends them, are let through
unchanged. The gRPC health service answers ``liveness`` (always SERVING), and
``readiness``, ``""`` and the ext_proc service name (SERVING while a pod is ready).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
import uuid
from collections.abc import AsyncIterator, Callable, Mapping
from dataclasses import dataclass, field

import grpc
from envoy.config.core.v3 import base_pb2
from envoy.extensions.filters.http.ext_proc.v3 import processing_mode_pb2
from envoy.service.ext_proc.v3 import external_processor_pb2 as ext_proc
from envoy.service.ext_proc.v3 import external_processor_pb2_grpc as ext_proc_grpc
from envoy.type.v3 import http_status_pb2
from google.protobuf import struct_pb2
from grpc_health.v1 import health, health_pb2, health_pb2_grpc

from accelgen.core.routing import RouteRequest
from accelgen.core.tier_headers import TierHeaderError
from accelgen.core.tiers import TierSet
from accelgen.gateway.intake import error_json, route_request
from accelgen.gateway.placement import ROUTED, Placement, Placer

log = logging.getLogger(__name__)

DESTINATION_HEADER = "x-gateway-destination-endpoint"
METADATA_NAMESPACE = "envoy.lb"
SUBSET_NAMESPACE = "envoy.lb.subset_hint"
SUBSET_KEY = "x-gateway-destination-endpoint-subset"
EXT_PROC_SERVICE = ext_proc.DESCRIPTOR.services_by_name["ExternalProcessor"].full_name
READINESS, LIVENESS = "readiness", "liveness"

_Mode = processing_mode_pb2.ProcessingMode
# Body modes in which the gateway holds the request until the picker answers its body.
_BODY_HELD = (_Mode.BUFFERED, _Mode.BUFFERED_PARTIAL, _Mode.FULL_DUPLEX_STREAMED)


def _headers(message: ext_proc.HttpHeaders) -> dict[str, str]:
    """Envoy's header map by lower-case name (Envoy sends ``raw_value``, older ones ``value``)."""
    out: dict[str, str] = {}
    for header in message.headers.headers:
        value = header.raw_value.decode("utf-8", "replace") if header.raw_value else header.value
        out[header.key.lower()] = value
    return out


def _subset(metadata: base_pb2.Metadata) -> list[str] | None:
    """The gateway's subset hint: the only endpoints the picker may choose (None: any)."""
    if SUBSET_NAMESPACE not in metadata.filter_metadata:
        return None
    hint = metadata.filter_metadata[SUBSET_NAMESPACE]
    if SUBSET_KEY not in hint.fields:
        return None
    value = hint.fields[SUBSET_KEY]
    if value.HasField("list_value"):
        return [v.string_value for v in value.list_value.values]
    return [part.strip() for part in value.string_value.split(",") if part.strip()]


def _routed(address: str) -> ext_proc.CommonResponse:
    mutation = ext_proc.HeaderMutation(set_headers=[_header(DESTINATION_HEADER, address)])
    return ext_proc.CommonResponse(header_mutation=mutation, clear_route_cache=True)


def _metadata(address: str) -> struct_pb2.Struct:
    metadata = struct_pb2.Struct()
    metadata.update({METADATA_NAMESPACE: {DESTINATION_HEADER: address}})
    return metadata


def _header(key: str, value: str) -> base_pb2.HeaderValueOption:
    return base_pb2.HeaderValueOption(
        header=base_pb2.HeaderValue(key=key, raw_value=value.encode()),
        append_action=base_pb2.HeaderValueOption.OVERWRITE_IF_EXISTS_OR_ADD,
    )


def immediate(
    status: int, message: str, *, code: str, retry_after_s: float | None = None
) -> ext_proc.ProcessingResponse:
    """An ImmediateResponse: ``status`` with the OpenAI JSON error body (and ``Retry-After``)."""
    headers = [("content-type", "application/json")]
    if retry_after_s is not None:
        headers.append(("retry-after", str(max(1, round(retry_after_s)))))
    mutation = ext_proc.HeaderMutation(set_headers=[_header(k, v) for k, v in headers])
    return ext_proc.ProcessingResponse(
        immediate_response=ext_proc.ImmediateResponse(
            status=http_status_pb2.HttpStatus(code=status),
            headers=mutation,
            body=error_json(status, message, code=code),
            details=code,
        )
    )


def _refusal(placement: Placement) -> ext_proc.ProcessingResponse:
    code = "shed" if placement.status == 429 else "no_ready_endpoint"
    return immediate(placement.status, placement.reason, code=code, retry_after_s=placement.retry_after_s)


@dataclass(slots=True)
class _Exchange:
    """One request's stream: what has been seen of it so far."""

    headers: dict[str, str] = field(default_factory=dict)
    body: bytearray = field(default_factory=bytearray)
    request_mode: int = _Mode.NONE
    response_mode: int = _Mode.NONE
    subset: list[str] | None = None
    decided: bool = False


class EndpointPicker(ext_proc_grpc.ExternalProcessorServicer):  # type: ignore[misc]  # generated, untyped
    """The ``ExternalProcessor`` service: each stream is one request to place.

    Args:
        placer: The router and the pods.
        tiers: The pool's tiers (as its sidecars have them).
        clock: The placer's clock.
    """

    def __init__(self, placer: Placer, tiers: TierSet, *, clock: Callable[[], float] = time.monotonic) -> None:
        self.placer = placer
        self.tiers = tiers
        self.clock = clock

    async def Process(  # the generated service's method name
        self, request_iterator: AsyncIterator[ext_proc.ProcessingRequest], context: grpc.aio.ServicerContext
    ) -> AsyncIterator[ext_proc.ProcessingResponse]:
        exchange = _Exchange()
        async for message in request_iterator:
            for response in await self._on(exchange, message):
                yield response
                if response.HasField("immediate_response"):
                    return

    async def _on(self, ex: _Exchange, msg: ext_proc.ProcessingRequest) -> list[ext_proc.ProcessingResponse]:
        kind = msg.WhichOneof("request")
        if msg.HasField("protocol_config"):
            ex.request_mode = msg.protocol_config.request_body_mode
            ex.response_mode = msg.protocol_config.response_body_mode
        if kind == "request_headers":
            ex.headers = _headers(msg.request_headers)
            ex.subset = _subset(msg.metadata_context)
            if msg.request_headers.end_of_stream or ex.request_mode not in _BODY_HELD:
                return [await self._decide(ex, body=None)]
            if ex.request_mode == _Mode.FULL_DUPLEX_STREAMED:
                return []  # the headers are answered with the decision, once the body is in
            return [ext_proc.ProcessingResponse(request_headers=ext_proc.HeadersResponse())]
        if kind == "request_body":
            return await self._on_body(ex, msg.request_body)
        if kind == "request_trailers" and not ex.decided:
            # A streamed body that ends in trailers: decide on what came, then let them pass.
            held = await self._on_body(ex, ext_proc.HttpBody(end_of_stream=True))
            return [*held, ext_proc.ProcessingResponse(request_trailers=ext_proc.TrailersResponse())]
        return [_pass_through(kind, msg, ex.response_mode)]

    async def _on_body(self, ex: _Exchange, chunk: ext_proc.HttpBody) -> list[ext_proc.ProcessingResponse]:
        if ex.decided:  # the body of a request decided at its headers
            return [_continue_body(chunk, streamed=ex.request_mode == _Mode.FULL_DUPLEX_STREAMED)]
        ex.body += chunk.body
        if not chunk.end_of_stream and ex.request_mode == _Mode.FULL_DUPLEX_STREAMED:
            return []  # gather the chunks; buffered modes send one message (a partial one past the limit)
        decision = await self._decide(ex, body=bytes(ex.body))
        if decision.HasField("immediate_response"):
            return [decision]
        common = decision.request_headers.response
        if ex.request_mode == _Mode.FULL_DUPLEX_STREAMED:
            streamed = ext_proc.StreamedBodyResponse(body=bytes(ex.body), end_of_stream=True)
            body = ext_proc.ProcessingResponse(
                request_body=ext_proc.BodyResponse(
                    response=ext_proc.CommonResponse(
                        status=ext_proc.CommonResponse.CONTINUE_AND_REPLACE,
                        body_mutation=ext_proc.BodyMutation(streamed_response=streamed),
                    )
                )
            )
            return [decision, body]
        # Buffered: the headers were let through unchanged; the body's answer sets them.
        answer = ext_proc.ProcessingResponse(
            request_body=ext_proc.BodyResponse(response=common), dynamic_metadata=decision.dynamic_metadata
        )
        return [answer]

    async def _decide(self, ex: _Exchange, *, body: bytes | None) -> ext_proc.ProcessingResponse:
        ex.decided = True
        try:
            request = self._request(ex.headers, body)
        except TierHeaderError as err:
            return immediate(400, err.message, code=err.code)
        placement = await self.placer.place(request, subset=ex.subset)
        if placement.status != ROUTED or placement.address is None:
            log.info("request %s refused %d: %s", request.request_id, placement.status, placement.reason)
            return _refusal(placement)
        return ext_proc.ProcessingResponse(
            request_headers=ext_proc.HeadersResponse(response=_routed(placement.address)),
            dynamic_metadata=_metadata(placement.address),
        )

    def _request(self, headers: Mapping[str, str], body: bytes | None) -> RouteRequest:
        request_id = headers.get("x-request-id") or uuid.uuid4().hex[:16]
        pod_tiers = {name for pod in self.placer.watcher.pods for name in pod.headroom}
        return route_request(headers, body, self.tiers, now=self.clock(), request_id=request_id, pod_tiers=pod_tiers)


def _continue_body(chunk: ext_proc.HttpBody, *, streamed: bool) -> ext_proc.ProcessingResponse:
    if not streamed:
        return ext_proc.ProcessingResponse(request_body=ext_proc.BodyResponse())
    mutation = ext_proc.BodyMutation(
        streamed_response=ext_proc.StreamedBodyResponse(body=chunk.body, end_of_stream=chunk.end_of_stream)
    )
    common = ext_proc.CommonResponse(status=ext_proc.CommonResponse.CONTINUE_AND_REPLACE, body_mutation=mutation)
    return ext_proc.ProcessingResponse(request_body=ext_proc.BodyResponse(response=common))


def _pass_through(kind: str | None, msg: ext_proc.ProcessingRequest, response_mode: int) -> ext_proc.ProcessingResponse:
    """The answer that leaves a response event (or trailers) as it is."""
    if kind == "response_headers":
        return ext_proc.ProcessingResponse(response_headers=ext_proc.HeadersResponse())
    if kind == "response_body":
        if response_mode == _Mode.FULL_DUPLEX_STREAMED:
            chunk = msg.response_body
            mutation = ext_proc.BodyMutation(
                streamed_response=ext_proc.StreamedBodyResponse(body=chunk.body, end_of_stream=chunk.end_of_stream)
            )
            common = ext_proc.CommonResponse(body_mutation=mutation)
            return ext_proc.ProcessingResponse(response_body=ext_proc.BodyResponse(response=common))
        return ext_proc.ProcessingResponse(response_body=ext_proc.BodyResponse())
    if kind == "request_trailers":
        return ext_proc.ProcessingResponse(request_trailers=ext_proc.TrailersResponse())
    return ext_proc.ProcessingResponse(response_trailers=ext_proc.TrailersResponse())


class PickerServer:
    """The picker's gRPC servers: ext_proc (with health) on ``listen``, health alone on ``health_port``."""

    def __init__(self, picker: EndpointPicker, *, listen: str, health_listen: str | None) -> None:
        self.picker = picker
        self.listen = listen
        self.health_listen = health_listen
        self.health = health.aio.HealthServicer()
        self._servers: list[grpc.aio.Server] = []
        self.ports: list[int] = []

    async def start(self) -> None:
        """Bind and serve (``port 0`` binds a free port: see :attr:`ports`); liveness SERVING."""
        main = grpc.aio.server()
        ext_proc_grpc.add_ExternalProcessorServicer_to_server(self.picker, main)
        health_pb2_grpc.add_HealthServicer_to_server(self.health, main)
        self._servers.append(main)
        if self.health_listen is not None:
            only_health = grpc.aio.server()
            health_pb2_grpc.add_HealthServicer_to_server(self.health, only_health)
            self._servers.append(only_health)
        for server, address in zip(self._servers, (self.listen, self.health_listen), strict=False):
            port = server.add_insecure_port(str(address))
            if port == 0:
                raise OSError(f"cannot listen on {address}")
            self.ports.append(port)
        for server in self._servers:
            await server.start()
        await self.health.set(LIVENESS, health_pb2.HealthCheckResponse.SERVING)
        await self.set_ready(False)

    async def set_ready(self, ready: bool) -> None:
        status = health_pb2.HealthCheckResponse.SERVING if ready else health_pb2.HealthCheckResponse.NOT_SERVING
        for service in (READINESS, health.OVERALL_HEALTH, EXT_PROC_SERVICE):
            await self.health.set(service, status)

    async def follow_pods(self) -> None:
        """Readiness follows the pods: SERVING while one is ready (until cancelled)."""
        watcher = self.picker.placer.watcher
        while True:
            await self.set_ready(any(p.ready for p in watcher.pods))
            await watcher.wait_changed(max(1.0, 4 * watcher.refresh_s))

    async def stop(self, grace_s: float = 1.0) -> None:
        with contextlib.suppress(Exception):
            await self.health.enter_graceful_shutdown()
        await asyncio.gather(*(server.stop(grace_s) for server in self._servers))
