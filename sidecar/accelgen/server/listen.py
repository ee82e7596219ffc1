"""Where the sidecar listens, and what a slow, idle or malformed client may cost it.

Every connection is bounded in time and in number (:class:`ServerLimits`)::

    open ──► head (request line + headers) ──► body ──► handler ──► response ──► idle ─┐
      │  header_timeout_s: 408, closed     │ body_timeout_s:           idle_timeout_s:  │
      │  (closed without a word if not     │ 408, closed               closed           │
      │  a byte came)                      │                                            │
      └───────────── the next request's first byte starts the head clock again ◄───────┘

The head clock runs from the connection's opening (or, on a kept-alive connection, from
the next request's first byte) until the app sees the request; aiohttp's own
``keepalive_timeout`` is the idle one; the body's is :func:`accelgen.server.intake.read_body`'s.
A request pipelined behind another (its first bytes came while the one before it was
being answered) gets its head clock when that answer is done, as nginx and Node.js time
it: a stalled head behind a request costs the header timeout, not the idle one
(:class:`accelgen.server.framing.HeadFramer` tells whether such a head has begun).
Beyond ``max_connections`` open at once a new connection gets a 503 and is closed. Each
protocol error (a malformed request aiohttp refuses, a timeout, a refused connection) is
answered in the API's JSON error shape (:class:`JsonErrorHandler`), counted in
``accelgen_protocol_errors_total{cause}`` and logged at WARNING once per cause per minute,
without a traceback (an exception of the server's own that reaches aiohttp: at ERROR,
with it, as rarely).
"""

from __future__ import annotations

import asyncio
import json
import logging
import resource
import sys
import time
from dataclasses import dataclass
from typing import Any, cast

from aiohttp import web
from aiohttp.http_exceptions import HttpProcessingError
from prometheus_client import CollectorRegistry, Counter

from accelgen.server.errors import error_body
from accelgen.server.framing import HeadFramer
from accelgen.server.intake import BODY_TIMEOUT, RAW_BODIES

log = logging.getLogger("accelgen.server")
_FD_RESERVE = 256  # descriptors left for the engine's connections, files and logs


@dataclass(frozen=True, slots=True)
class ServerLimits:
    """How long each phase of a request may take, and how many connections may be open."""

    header_timeout_s: float = 10.0
    body_timeout_s: float = 30.0
    idle_timeout_s: float = 75.0
    max_connections: int = 4096

    def connections_allowed(self) -> int:
        """``max_connections``, or fewer when the process may not open that many files."""
        soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
        if soft == resource.RLIM_INFINITY:
            return self.max_connections
        return max(16, min(self.max_connections, soft - _FD_RESERVE))


def _answer(status: int, reason: str, message: str, code: str) -> bytes:
    body = json.dumps(error_body(status, message, code=code)).encode()
    head = (
        f"HTTP/1.1 {status} {reason}\r\nContent-Type: application/json\r\n"
        f"Content-Length: {len(body)}\r\nConnection: close\r\n"
    )
    if status == 503:
        head += "Retry-After: 1\r\n"
    return head.encode() + b"\r\n" + body


class ProtocolLog:
    """aiohttp's server logger: each cause counted, logged once a minute, no traceback.

    aiohttp logs a malformed request with ``exception()`` (``debug()`` for a first line
    that is not HTTP at all); both come here. Causes are aiohttp's exception class
    names (a fixed set) or the names this module gives, so the label stays bounded.
    """

    def __init__(self, registry: CollectorRegistry, *, pool: str | None, every_s: float = 60.0) -> None:
        labels = ("cause", "pool") if pool else ("cause",)
        self._counter = Counter(
            "accelgen_protocol_errors_total",
            "Requests or connections refused at the protocol level, by cause",
            labels,
            registry=registry,
        )
        self._pool = pool
        self._every_s = every_s
        self._last_s: dict[str, float] = {}
        self._quiet: dict[str, int] = {}
        self._log = logging.getLogger("accelgen.server.protocol")

    def count(self, cause: str, detail: str = "", *, bug: BaseException | None = None) -> None:
        """Count one error of ``cause``; log it unless this cause was logged under a minute ago.

        A client's error is a WARNING line; ``bug``, an exception of the server's own
        (not the client's doing), is logged at ERROR with its traceback, as rarely.
        """
        labels = {"cause": cause, "pool": self._pool} if self._pool else {"cause": cause}
        self._counter.labels(**labels).inc()
        now_s = time.monotonic()
        if now_s - self._last_s.get(cause, -1e9) < self._every_s:
            self._quiet[cause] = self._quiet.get(cause, 0) + 1
            return
        self._last_s[cause] = now_s
        quiet = self._quiet.pop(cause, 0)
        more = f" ({quiet} more since the last report)" if quiet else ""
        detail = f": {detail}" if detail else ""
        if bug is not None:
            self._log.error("error handling a request %s%s%s", cause, detail, more, exc_info=bug)
        else:
            self._log.warning("client protocol error %s%s%s", cause, detail, more)

    def _exc(self, exc: object) -> None:
        if isinstance(exc, HttpProcessingError):
            first_line = str(exc.message).strip().split("\n", 1)[0]
            self.count(type(exc).__name__, ascii(first_line)[:160])
        elif isinstance(exc, BaseException):
            self.count("unhandled_" + type(exc).__name__, ascii(str(exc))[:160], bug=exc)

    # The logger interface aiohttp's RequestHandler and Server use.
    def exception(self, msg: str, *args: Any, exc_info: object = None, **_: Any) -> None:
        if exc_info is True:
            exc_info = sys.exc_info()[1]
        if exc_info is not None:
            self._exc(exc_info)
        else:
            self.count("unhandled", ascii(msg % args if args else msg)[:160])

    def debug(self, msg: str, *args: Any, exc_info: object = None, **_: Any) -> None:
        if isinstance(exc_info, BaseException):
            self._exc(exc_info)

    def warning(self, msg: str, *args: Any, **kw: Any) -> None:
        self._log.warning(msg, *args, **kw)

    error = warning
    info = warning


def _first_line(exc: BaseException | None) -> str:
    """What aiohttp says went wrong, its first line, printable and short."""
    text = str(exc.message if isinstance(exc, HttpProcessingError) else exc or "").strip()
    line = text.split("\n", 1)[0].rstrip(":")
    return ascii(line)[1:-1][:120]


class JsonErrorHandler(web.RequestHandler):
    """aiohttp's protocol for one connection, its own error answers in the API's JSON shape.

    aiohttp answers a request its parser refuses (and a failure outside the app's
    handler) from ``RequestHandler.handle_error``, in plain text, before any middleware
    could see it; aiohttp has no hook for that answer (aio-libs/aiohttp#3287, open), so
    this subclass overrides the method. aiohttp's own version still runs first: it logs
    (through :class:`ProtocolLog`: counted, no traceback) and refuses when a response
    has already begun. ``tests/server/test_sidecar_hostile.py`` pins the signature.
    """

    __slots__ = ()

    def handle_error(
        self,
        request: web.BaseRequest,
        status: int = 500,
        exc: BaseException | None = None,
        message: str | None = None,
    ) -> web.StreamResponse:
        super().handle_error(request, status, exc, message)
        if status >= 500:
            body = error_body(status, "internal error in the sidecar", code="internal_error")
        else:
            cause = type(exc).__name__ if exc is not None else "BadHttpMessage"
            detail = _first_line(exc)
            text = f"malformed HTTP request ({cause}{': ' + detail if detail else ''})"
            body = error_body(status, text, code="malformed_http")
        response = web.json_response(body, status=status)
        response.force_close()
        return response


class _Guarded(asyncio.Protocol):
    """aiohttp's protocol for one connection, behind the head clock and the connection count."""

    def __init__(self, inner: asyncio.Protocol, guard: Guard) -> None:
        self._inner = inner
        self._guard = guard
        self._transport: asyncio.Transport | None = None
        self._timer: asyncio.TimerHandle | None = None
        self._framer = HeadFramer()
        self._got_bytes = False  # since the last request reached the app
        self._busy = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = cast(asyncio.Transport, transport)
        self._guard.num_open += 1
        self._inner.connection_made(transport)
        self._arm()

    def _arm(self) -> None:
        loop = asyncio.get_running_loop()
        self._timer = loop.call_later(self._guard.limits.header_timeout_s, self._head_late)

    def _head_late(self) -> None:
        self._timer = None
        transport = self._transport
        if transport is None or transport.is_closing():
            return
        if self._head_begun():
            self._guard.log.count("header_timeout")
            transport.write(self._guard.head_timeout_answer)
        transport.close()

    def _head_begun(self) -> bool:
        """Has a request's head begun and not yet reached the app?

        Where the framing is not followed (after a chunked body), any byte since the
        last request counts, as a body's late bytes would.
        """
        return self._framer.pending if self._framer.known else self._got_bytes

    def data_received(self, data: bytes) -> None:
        self._got_bytes = True
        self._framer.feed(data)
        if self._timer is None and not self._busy and self._head_begun():
            self._arm()
        self._inner.data_received(data)

    def eof_received(self) -> bool | None:
        return self._inner.eof_received()

    def connection_lost(self, exc: Exception | None) -> None:
        self._guard.num_open -= 1
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        self._transport = None
        self._inner.connection_lost(exc)

    def pause_writing(self) -> None:
        self._inner.pause_writing()

    def resume_writing(self) -> None:
        self._inner.resume_writing()

    def started(self) -> None:
        """The app has the request's head: no head clock until the next request."""
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        self._busy = True
        self._got_bytes = False

    def finished(self) -> None:
        """The answer is done: a head already waiting behind it gets its clock now."""
        self._busy = False
        if self._timer is None and self._framer.pending:
            self._arm()


class _Refused(asyncio.Protocol):
    def __init__(self, answer: bytes) -> None:
        self._answer = answer

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        cast(asyncio.Transport, transport).write(self._answer)
        transport.close()


class Guard:
    """The protocol factory in front of aiohttp's: counts connections, runs head clocks."""

    def __init__(
        self, server: web.Server, limits: ServerLimits, protocol_log: ProtocolLog, handler_args: dict[str, Any]
    ) -> None:
        self.server = server
        self._handler_args = handler_args
        self.limits = limits
        self.log = protocol_log
        self.num_open = 0
        self.max_open = limits.connections_allowed()
        self.head_timeout_answer = _answer(
            408,
            "Request Timeout",
            f"the request head did not arrive within {limits.header_timeout_s:g} s",
            "header_timeout",
        )
        self._full_answer = _answer(
            503, "Service Unavailable", f"too many connections (limit {self.max_open})", "too_many_connections"
        )

    def __call__(self) -> asyncio.Protocol:
        if self.num_open >= self.max_open:
            self.log.count("too_many_connections")
            return _Refused(self._full_answer)
        loop = asyncio.get_running_loop()
        return _Guarded(JsonErrorHandler(self.server, loop=loop, **self._handler_args), self)


class GuardedSite(web.BaseSite):
    """A TCP site whose connections go through a :class:`Guard`."""

    __slots__ = ("_guard", "_host", "_port")

    def __init__(self, runner: web.BaseRunner, host: str, port: int, guard: Guard, *, backlog: int = 1024) -> None:
        super().__init__(runner, backlog=backlog)
        self._host, self._port, self._guard = host, port, guard

    @property
    def name(self) -> str:
        return f"http://{self._host}:{self._port}"

    async def start(self) -> None:
        await super().start()
        loop = asyncio.get_running_loop()
        self._server = await loop.create_server(
            self._guard, self._host, self._port, backlog=self._backlog, reuse_address=True
        )
        self._port = self._server.sockets[0].getsockname()[1]

    @property
    def port(self) -> int:
        return self._port


PROTOCOL_LOG = web.AppKey("protocol_log", ProtocolLog)


def request_started(request: web.Request) -> None:
    """Stop the connection's head clock (the app's first middleware calls this)."""
    transport = request.transport
    protocol = transport.get_protocol() if transport is not None else None
    if isinstance(protocol, _Guarded):
        protocol.started()


def request_finished(request: web.Request) -> None:
    """The handler is done: the connection's next bytes start a new head clock."""
    transport = request.transport
    protocol = transport.get_protocol() if transport is not None else None
    if isinstance(protocol, _Guarded):
        protocol.finished()


def count_protocol_error(request: web.Request, cause: str) -> None:
    protocol_log = request.app.get(PROTOCOL_LOG)
    if protocol_log is not None:
        protocol_log.count(cause)


async def listen(
    app: web.Application,
    host: str,
    port: int,
    limits: ServerLimits,
    *,
    registry: CollectorRegistry,
    pool: str | None = None,
) -> tuple[web.AppRunner, GuardedSite]:
    """Serve ``app`` on ``host:port`` within ``limits``; the runner (clean it up) and the site.

    Bodies reach the app undecoded (:mod:`accelgen.server.intake` decodes them, bounded),
    and aiohttp logs through a :class:`ProtocolLog` counting into ``registry``.
    """
    protocol_log = ProtocolLog(registry, pool=pool)
    app[RAW_BODIES] = True
    app[BODY_TIMEOUT] = limits.body_timeout_s
    app[PROTOCOL_LOG] = protocol_log
    # What aiohttp's Server would pass each connection's RequestHandler; here the guard
    # builds a JsonErrorHandler with them instead.
    handler_args: dict[str, Any] = {
        "access_log": None,
        "keepalive_timeout": limits.idle_timeout_s,
        "auto_decompress": False,
        "logger": cast(logging.Logger, protocol_log),
    }
    runner = web.AppRunner(app, handler_cancellation=True, **handler_args)
    await runner.setup()
    assert runner.server is not None
    guard = Guard(runner.server, limits, protocol_log, handler_args)
    if guard.max_open < limits.max_connections:
        log.warning(
            "at most %d connections (the open-files limit allows no more; asked %d)",
            guard.max_open,
            limits.max_connections,
        )
    site = GuardedSite(runner, host, port, guard)
    await site.start()
    return runner, site
