"""The sidecar's HTTP client to its engine, against a raw TCP server that misbehaves on cue.

No vLLM here: the point is a connection-level race that a real engine produces only by
chance (uvicorn closes a keep-alive connection after 5 s idle, just as the sidecar
reuses it). The server below is a real socket server speaking HTTP/1.1 by hand, so the
race happens every time.
"""

from __future__ import annotations

import asyncio

import pytest

from accelgen.server.engine import DONE, EngineClient
from accelgen.server.errors import ApiError

_STREAM = b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nContent-Length: {n}\r\nConnection: keep-alive\r\n\r\n"
_BODY = b'data: {"choices":[{"index":0,"text":"a","finish_reason":"length"}]}\n\ndata: [DONE]\n\n'


class Flaky:
    """Answers each connection's first request; closes it on the second, unanswered."""

    def __init__(self) -> None:
        self.requests = 0
        self.dropped = 0

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        served = 0
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                length = next(
                    int(line.split(b":")[1])
                    for line in head.lower().split(b"\r\n")
                    if line.startswith(b"content-length:")
                )
                await reader.readexactly(length)
                self.requests += 1
                if served:
                    self.dropped += 1
                    return  # as an idle-timeout close that crosses the request in flight
                served += 1
                writer.write(_STREAM.replace(b"{n}", str(len(_BODY)).encode()) + _BODY)
                await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            writer.close()


async def _stream_text(client: EngineClient) -> list[bytes]:
    resp = await client.open_stream("/v1/completions", {"prompt": "x", "max_tokens": 1, "stream": True})
    try:
        return [data async for data in client.events(resp)]
    finally:
        resp.close()


def test_a_keep_alive_connection_closed_under_a_request_is_retried_once() -> None:
    async def scenario() -> tuple[Flaky, list[list[bytes]]]:
        flaky = Flaky()
        server = await asyncio.start_server(flaky.handle, "127.0.0.1", 0)
        port = server.sockets[0].getsockname()[1]
        client = EngineClient(f"http://127.0.0.1:{port}")
        try:
            # The second request reuses the first one's connection, which the server drops.
            return flaky, [await _stream_text(client) for _ in range(2)]
        finally:
            await client.close()
            server.close()
            await server.wait_closed()

    flaky, streams = asyncio.run(scenario())
    assert flaky.dropped == 1 and flaky.requests == 3  # the retry went out on a new connection
    assert all(len(s) == 1 and DONE not in s and b'"text":"a"' in s[0] for s in streams)


def test_an_engine_that_refuses_connections_is_503_at_once_with_the_reason() -> None:
    async def scenario() -> ApiError:
        server = await asyncio.start_server(lambda r, w: None, "127.0.0.1", 0)
        port = server.sockets[0].getsockname()[1]
        server.close()
        await server.wait_closed()  # nothing listens there any more
        client = EngineClient(f"http://127.0.0.1:{port}")
        try:
            with pytest.raises(ApiError) as err:
                await client.open_stream("/v1/completions", {"prompt": "x"})
            return err.value
        finally:
            await client.close()

    err = asyncio.run(scenario())
    assert err.status == 503 and err.code == "engine_unavailable"
    assert "ClientConnectorError" in err.message and "Connect call failed" in err.message
