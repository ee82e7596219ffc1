"""The HTTP client to the engine (a vLLM OpenAI server, or the sim engine on loopback).

Every generation is streamed from the engine, so the sidecar sees each token's time.
Timeouts: ``connect_timeout_s`` to open a connection and ``token_timeout_s`` between
two reads of a stream; neither failure ever hangs the client. The engine is on
localhost, so a dead one refuses at once, and a hung one still has its connections
accepted by the kernel (the token timeout and the health poll catch it). A connect
timeout therefore only fires when the node itself stalls (the event loop starved of CPU,
``accelgen_event_loop_lag_seconds``), when the kernel has completed the connect anyway:
a short limit would only turn such stalls into 503s, hence 30 s, as long as the token
timeout. Closing the response closes the connection,
which is how vLLM learns the client went away and aborts.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import AsyncIterator, Callable
from typing import Any

import aiohttp
from yarl import URL

from accelgen.server.engine_state import (
    EngineState,
    budget_of,
    latency_model_of,
    parse_engine_metrics,
    planner_of,
    preemptions_of,
    read_engine_stats,
)
from accelgen.server.errors import ApiError, normalize_engine_error
from accelgen.server.intake import engine_bytes

log = logging.getLogger("accelgen.server")
_JSON = {"Content-Type": "application/json"}
DONE = b"[DONE]"  # the end of a stream, as the last item of :meth:`EngineClient.batches`
_HEALTH_EVERY_S = 1.0  # /health between /metrics polls (a failed /metrics is noticed at once)
_POLL_TIMEOUT_S = 3.0  # a poll slower than this marks the engine not ready until the next


def _raise_if_error(data: bytes) -> None:
    """ApiError(502) if an event is the engine's in-band error object."""
    event = json.loads(data)
    if isinstance(event, dict) and ("error" in event or event.get("object") == "error"):
        err = normalize_engine_error(502, event)["error"]
        raise ApiError(502, f"engine: {err.get('message')}", code="engine_error")


class EngineClient:
    """Streams generations from one engine and keeps :class:`EngineState` fresh."""

    def __init__(
        self,
        base_url: str,
        *,
        connect_timeout_s: float = 30.0,
        token_timeout_s: float = 30.0,
        stats_path: str | None = None,
        unix_socket: str | None = None,
    ) -> None:
        self.base_url = base_url.rstrip("/")
        self.unix_socket = unix_socket  # the embedded sim engine's socket; base_url names no port then
        self.stats_path = stats_path  # AccelGen's in-engine side channel, if known
        self.connect_timeout_s = connect_timeout_s
        self.token_timeout_s = token_timeout_s
        self.state = EngineState()
        self.send_priority = True  # off once the engine says priority scheduling is off
        self.default_model: str | None = None  # filled in for requests that name none
        self._session: aiohttp.ClientSession | None = None
        self._urls: dict[str, URL] = {}  # parsed once, not per request
        self._health_s = -1e9  # when /health was last asked

    @property
    def session(self) -> aiohttp.ClientSession:
        if self._session is None:
            timeout = aiohttp.ClientTimeout(
                total=None, sock_connect=self.connect_timeout_s, sock_read=self.token_timeout_s
            )
            # limit=0: the admission layer bounds concurrency, not the connector.
            # Idle connections are dropped before uvicorn's own 5 s keep-alive drops them.
            connector: aiohttp.BaseConnector = (
                aiohttp.UnixConnector(self.unix_socket, limit=0, keepalive_timeout=4.0)
                if self.unix_socket
                else aiohttp.TCPConnector(limit=0, force_close=False, keepalive_timeout=4.0)
            )
            # No cookies between the sidecar and its engine: skip the jar's work per request.
            self._session = aiohttp.ClientSession(
                timeout=timeout, connector=connector, cookie_jar=aiohttp.DummyCookieJar()
            )
        return self._session

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None

    async def open_stream(self, path: str, body: dict[str, Any]) -> aiohttp.ClientResponse:
        """POST a streaming generation; the 200 response, or ApiError (engine's own 4xx kept)."""
        if not self.send_priority:
            body.pop("priority", None)
        url = self._urls.get(path)
        if url is None:
            url = self._urls[path] = URL(self.base_url + path)
        data = engine_bytes(body)  # 413 if it outgrew the engine's body limit
        try:
            try:
                resp = await self.session.post(url, data=data, headers=_JSON)
            except (aiohttp.ServerDisconnectedError, aiohttp.ClientOSError) as err:
                if isinstance(err, aiohttp.ClientConnectorError):
                    raise  # no connection at all: the engine is down, say so at once
                # NOTE: a pooled keep-alive connection the engine closed as it was reused
                # (uvicorn drops idle ones after 5 s). vLLM aborts a request whose
                # connection broke, so one retry on a fresh connection duplicates nothing.
                log.info("engine connection broke before its response (%s); retrying once", err)
                resp = await self.session.post(url, data=data, headers=_JSON)
        except (aiohttp.ClientConnectionError, TimeoutError, OSError) as err:
            self.state.ready = False
            raise ApiError(
                503,
                f"engine unreachable: {type(err).__name__}: {err}",
                code="engine_unavailable",
                retry_after_s=1.0,
            ) from None
        if resp.status == 200:
            return resp
        try:
            payload: object = await resp.json(content_type=None)
        except (ValueError, aiohttp.ClientError, TimeoutError):
            payload = None
        finally:
            resp.release()
        error = normalize_engine_error(resp.status, payload)
        message = str(error["error"].get("message", ""))
        if resp.status == 400 and "priority" in message.lower() and "priority" in body:
            # NOTE: vLLM refuses a non-zero priority unless started with priority scheduling.
            log.warning("engine refuses request priority; forwarding without it from now on")
            self.send_priority = False
            return await self.open_stream(path, body)
        status = resp.status if 400 <= resp.status < 500 else 502
        raise ApiError(
            status,
            f"engine: {message}" if status == 502 else message,
            code=str(error["error"].get("code") or "engine_error"),
        )

    @staticmethod
    async def batches(resp: aiohttp.ClientResponse) -> AsyncIterator[list[bytes]]:
        """The data of the SSE events up to ``[DONE]``, in the batches they arrived in.

        Reads whatever the socket has (not line by line), so a relayed token costs one
        read, a few substring checks and one write. Events are not parsed here (see
        :func:`accelgen.server.stream.peek`); ApiError(502) if the stream breaks. The
        last batch ends with :data:`DONE` itself.
        """
        content = resp.content
        tail = b""
        try:
            while True:
                block = await content.readany()
                if not block:
                    if not tail:
                        break
                    block = b"\n"  # the last line had no newline
                if tail:
                    block, tail = tail + block, b""
                lines = block.split(b"\n")
                tail = lines.pop()  # an incomplete line, or b"" after a final newline
                batch: list[bytes] = []
                for line in lines:
                    if not line.startswith(b"data:"):
                        continue
                    data = line[5:].strip()
                    if data == b"[DONE]":
                        # Read to the end so the connection goes back to the pool for reuse.
                        await content.read()
                        batch.append(DONE)  # last, so the caller can end in one write
                        yield batch
                        return
                    if b'"error"' in data[:40]:  # {"error": ...} or {"object": "error", ...}
                        _raise_if_error(data)
                    batch.append(data)
                if batch:
                    yield batch
        except (TimeoutError, aiohttp.ServerTimeoutError):
            raise ApiError(502, "engine stopped sending tokens (inter-token timeout)", code="engine_timeout") from None
        except (aiohttp.ClientError, ValueError) as err:
            raise ApiError(502, f"engine stream broke: {type(err).__name__}", code="engine_error") from None
        raise ApiError(502, "engine stream ended without [DONE]", code="engine_error")

    @classmethod
    async def events(cls, resp: aiohttp.ClientResponse) -> AsyncIterator[bytes]:
        """The data of each SSE event up to ``[DONE]``, one by one (see :meth:`batches`)."""
        async for batch in cls.batches(resp):
            for data in batch:
                if data is not DONE:
                    yield data

    async def get_json(self, path: str) -> Any:
        async with self.session.get(self.base_url + path) as resp:
            resp.raise_for_status()
            return await resp.json(content_type=None)

    async def poll_once(self) -> None:
        """Refresh :attr:`state` from the engine's ``/metrics`` and (each second) ``/health``.

        While ready, ``/health`` is asked once a second: the page that matters for
        release, ``/metrics``, fails at once when the engine goes away.
        """
        state = self.state
        now_s = time.monotonic()
        try:
            timeout = aiohttp.ClientTimeout(total=_POLL_TIMEOUT_S)
            healthy = state.ready
            if not state.ready or now_s - self._health_s >= _HEALTH_EVERY_S:
                async with self.session.get(self.base_url + "/health", timeout=timeout) as resp:
                    healthy = resp.status == 200
                self._health_s = now_s
            async with self.session.get(self.base_url + "/metrics", timeout=timeout) as resp:
                text = await resp.text() if resp.status == 200 else ""
        except (aiohttp.ClientError, TimeoutError, OSError) as err:
            if state.ready:
                log.warning("engine not ready: %s", type(err).__name__)
            state.ready, state.error = False, f"engine unreachable: {type(err).__name__}"
            return
        state.waiting_before = state.waiting
        state.running, state.waiting, state.kv_usage, state.vllm_text = parse_engine_metrics(text)
        snapshot = read_engine_stats(self.stats_path) if self.stats_path is not None else None
        if snapshot is not None:  # a missing file keeps what was last seen
            total = preemptions_of(snapshot)
            if total is not None:
                state.preempting = total > state.preemptions
                state.preemptions = total
            state.budget_tokens = budget_of(snapshot)
            state.planner_s = planner_of(snapshot)
            state.latency_model = latency_model_of(snapshot)
        if healthy and self.default_model is None:
            await self._learn_model()
        state.updated_s = time.monotonic()
        if healthy and not state.ready:
            log.info("engine ready at %s", self.base_url)
        state.ready, state.error = healthy, "" if healthy else "engine /health not OK"

    async def _learn_model(self) -> None:
        try:
            listing = await self.get_json("/v1/models")
            self.default_model = str(listing["data"][0]["id"])
        except (aiohttp.ClientError, TimeoutError, KeyError, IndexError, TypeError, ValueError):
            pass

    async def monitor(self, interval_s: float, on_update: Callable[[], None]) -> None:
        """Poll forever (a background task); ``on_update`` runs after each poll."""
        while True:
            await self.poll_once()
            on_update()
            await asyncio.sleep(interval_s)
