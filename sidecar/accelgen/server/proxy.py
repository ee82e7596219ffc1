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
from collections.abc import AsyncIterator
from typing import TYPE_CHECKING, Any

from aiohttp import web

from accelgen.server.body import Parsed, engine_body, parse
from accelgen.server.engine import DONE
from accelgen.server.errors import ApiError
from accelgen.server.intake import loads, read_body
from accelgen.server.pod_state import InEngine
from accelgen.server.stream import Assembler, Timing
from accelgen.server.tiering import resolve_tier

if TYPE_CHECKING:
    from accelgen.server.state import Sidecar

_SSE_HEADERS = {"Content-Type": "text/event-stream", "Cache-Control": "no-cache"}


class _SSEResponse(web.StreamResponse):
    """A stream whose headers leave with its first event: one write, not two."""

    _send_headers_immediately = False


async def read_json(request: web.Request) -> Any:
    """The body as JSON: read in time, decoded, size- and depth-limited (:mod:`.intake`)."""
    return loads(await read_body(request))


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
    sidecar.metrics.series(tier.name).queue_time.observe(time.monotonic() - ticket.arrival_s)
    timing = Timing(tier=tier, arrival_s=ticket.arrival_s)
    sidecar.in_engine[id(ticket)] = InEngine(ticket, timing)
    outcome = "failed"
    try:
        response = await _run(request, sidecar, parsed, tier, timing)
        outcome = "completed"
        return response
    except (asyncio.CancelledError, ClientGone):
        outcome = "cancelled"
        raise
    finally:
        del sidecar.in_engine[id(ticket)]
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
            async for batch in engine.batches(upstream):
                now_s = time.monotonic()
                for data in batch:
                    if data is DONE:
                        break
                    event = _parse_event(data)
                    timing.observe(event, now_s)
                    assembler.feed(event)
            return web.json_response(assembler.result())
        response = _SSEResponse(headers=_SSE_HEADERS)
        try:
            return await _relay(request, response, engine.batches(upstream), timing, parsed.include_usage)
        except ConnectionResetError:
            raise ClientGone(response) from None
    finally:
        upstream.close()  # closes the connection if unread: the engine aborts the request


async def _relay(
    request: web.Request,
    response: web.StreamResponse,
    batches: AsyncIterator[list[bytes]],
    timing: Timing,
    include_usage: bool,
) -> web.StreamResponse:
    """Forward the engine's events to a streaming client as they arrive, timing each."""
    await response.prepare(request)
    try:
        async for batch in batches:
            # One clock read and one write per batch: the events came in together.
            now_s = time.monotonic()
            out = []
            for data in batch:
                if data is DONE:
                    out.append(b"data: [DONE]\n\n")
                    await response.write_eof(b"".join(out))  # the stream's end, one write
                    return response
                if timing.observe_raw(data, now_s) or include_usage:
                    out.append(b"data: " + data + b"\n\n")
            if out:
                await response.write(out[0] if len(out) == 1 else b"".join(out))
    except ApiError as err:
        # Headers are gone: report in-band, as vLLM does, then end the stream.
        await response.write_eof(b"data: " + json.dumps(err.body()).encode() + b"\n\n")
        raise StreamFailed(response) from err
    raise AssertionError("unreachable: batches() ends with DONE or raises")  # pragma: no cover


def _parse_event(data: bytes) -> dict[str, Any]:
    try:
        event = json.loads(data)
    except ValueError:
        event = None
    if not isinstance(event, dict):
        raise ApiError(502, "engine sent a malformed stream event", code="engine_error")
    return event


class StreamFailed(Exception):
    """A stream that failed after its headers were sent (the client got an error event)."""

    def __init__(self, response: web.StreamResponse) -> None:
        super().__init__("stream failed")
        self.response = response


class ClientGone(StreamFailed):
    """The client hung up mid-stream (a write failed).

    The handler returns the response it was writing, so aiohttp ends the exchange as a
    premature disconnection (quietly) instead of logging a 500 for every hang-up.
    """
