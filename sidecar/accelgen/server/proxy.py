"""The generation handlers: authenticate, pick the tier, admit, stream from the engine.

The engine is always asked to stream. A streaming client gets each chunk as it
arrives; a non-streaming one gets the reassembled response. If the client goes away
(aiohttp cancels the handler, or a write fails), the engine response is closed, which
closes its connection and makes vLLM abort the request and free its KV.
"""

from __future__ import annotations

import asyncio
import json
import time
from typing import TYPE_CHECKING, Any

from aiohttp import web

from accelgen.server.body import Parsed, engine_body, parse
from accelgen.server.errors import ApiError
from accelgen.server.stream import Assembler, Timing
from accelgen.server.tiering import resolve_tier

if TYPE_CHECKING:
    from accelgen.server.state import Sidecar

_SSE_HEADERS = {"Content-Type": "text/event-stream", "Cache-Control": "no-cache"}


async def read_json(request: web.Request) -> Any:
    try:
        raw = await request.read()
    except web.HTTPRequestEntityTooLarge:
        raise ApiError(
            413,
            f"request body too large (limit {request.app._client_max_size} bytes)",
            code="body_too_large",
        ) from None
    try:
        return json.loads(raw)
    except (ValueError, UnicodeDecodeError):
        raise ApiError(400, "the request body is not valid JSON", code="invalid_json") from None


async def generate(request: web.Request, sidecar: Sidecar, *, chat: bool) -> web.StreamResponse:
    """``POST /v1/completions`` and ``/v1/chat/completions``."""
    tenant = sidecar.authenticate(request.headers.get("Authorization"))
    parsed = parse(await read_json(request), chat=chat)
    tier = resolve_tier(request.headers, sidecar.tiers, tenant)
    if tenant is not None:
        wait_s = sidecar.limiter.try_acquire(tenant, time.monotonic())
        if wait_s is not None:
            sidecar.rejected(tier.name)
            raise ApiError(
                429,
                f"tenant {tenant.name!r} is over its rate or concurrency limit",
                code="tenant_limit",
                retry_after_s=wait_s,
            )
    try:
        return await _admitted(request, sidecar, parsed, tier)
    finally:
        if tenant is not None:
            sidecar.limiter.release(tenant)


async def _admitted(request: web.Request, sidecar: Sidecar, parsed: Parsed, tier: Any) -> web.StreamResponse:
    admission = sidecar.admission
    ticket = admission.make_ticket(tier, parsed.num_prompt_tokens, parsed.max_tokens)
    try:
        admission.admit(ticket)
    except ApiError:
        sidecar.rejected(tier.name)
        raise
    sidecar.metrics.count(tier.name, "admitted")
    try:
        await admission.wait(ticket)  # ApiError(503) if shed (counted by the shed hook)
    except asyncio.CancelledError:
        sidecar.metrics.count(tier.name, "cancelled")
        raise
    sidecar.metrics.queue_time.labels(**sidecar.metrics.labels(tier.name)).observe(time.monotonic() - ticket.arrival_s)
    timing = Timing(tier=tier, arrival_s=ticket.arrival_s)
    outcome = "failed"
    try:
        response = await _run(request, sidecar, parsed, tier, timing)
        outcome = "completed"
        return response
    except (asyncio.CancelledError, ConnectionResetError):
        outcome = "cancelled"
        raise
    finally:
        admission.leave(ticket)
        if outcome == "completed":
            sidecar.completed(timing, time.monotonic())
        else:
            sidecar.metrics.count(tier.name, outcome)


async def _run(request: web.Request, sidecar: Sidecar, parsed: Parsed, tier: Any, timing: Timing) -> web.StreamResponse:
    engine = sidecar.engine
    path = "/v1/chat/completions" if parsed.chat else "/v1/completions"
    body = engine_body(parsed, tier, send_priority=engine.send_priority)
    if not body.get("model") and engine.default_model:
        body["model"] = engine.default_model
    upstream = await engine.open_stream(path, body)
    try:
        if not parsed.stream:
            assembler = Assembler(chat=parsed.chat)
            async for data in engine.events(upstream):
                event = _parse_event(data)
                timing.observe(event, time.monotonic())
                assembler.feed(event)
            return web.json_response(assembler.result())
        response = web.StreamResponse(headers=_SSE_HEADERS)
        await response.prepare(request)
        try:
            async for data in engine.events(upstream):
                timing.observe_raw(data, time.monotonic())
                if parsed.include_usage or not _is_usage_only(data):
                    await response.write(b"data: " + data + b"\n\n")
        except ApiError as err:
            # Headers are gone: report in-band, as vLLM does, then end the stream.
            await response.write(b"data: " + json.dumps(err.body()).encode() + b"\n\n")
            await response.write_eof()
            raise StreamFailed(response) from err
        await response.write(b"data: [DONE]\n\n")
        await response.write_eof()
        return response
    finally:
        upstream.close()  # closes the connection if unread: the engine aborts the request


def _parse_event(data: bytes) -> dict[str, Any]:
    try:
        event = json.loads(data)
    except ValueError:
        event = None
    if not isinstance(event, dict):
        raise ApiError(502, "engine sent a malformed stream event", code="engine_error")
    return event


def _is_usage_only(data: bytes) -> bool:
    """The final usage chunk (no choices), which only clients that asked for it get."""
    return b'"choices":[]' in data or b'"choices": []' in data


class StreamFailed(Exception):
    """A stream that failed after its headers were sent (the client got an error event)."""

    def __init__(self, response: web.StreamResponse) -> None:
        super().__init__("stream failed")
        self.response = response
