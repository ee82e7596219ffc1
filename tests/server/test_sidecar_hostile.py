"""``accelgen serve --engine sim`` under hostile clients: one regression test per defect.

Each test drives the real CLI process (its own event loop, its own log, the server run
by ``listen()`` with the flags' limits) over raw sockets or httpx, as an outside probe
would. Timeouts are short here (about a second) so the slow-client tests finish fast;
their bounds are generous upper limits, never speeds.

The defects of issue #16's outside probe and the tests that fail on them (run against
the sidecar before its fixes, commit 3c4eacd; the pipelined-head tests against the
listen.py before theirs):

1. nested JSON a 500 with a traceback: ``test_deep_nesting_is_400_without_traceback``;
2. a body not in its ``Content-Encoding`` a 500, ``br`` a plain-text 400:
   ``test_body_not_in_its_encoding_is_400_json``, ``test_unsupported_encoding_is_415_json``
   (and ``test_decompression_bomb_is_413``);
3. stalled and idle connections never closed: ``test_body_that_never_arrives_gets_408_and_a_close``,
   ``test_stalled_head_is_closed``, ``test_trickled_head_is_closed_at_the_header_timeout``,
   ``test_idle_keep_alive_is_closed``, ``test_connections_beyond_the_bound_get_503``,
   ``test_pipelined_stalled_head_gets_the_header_timeout``,
   ``test_stalled_head_sent_during_an_answer_gets_the_header_timeout``;
4. a traceback at ERROR per malformed request (and its plain-text answer):
   ``test_malformed_requests_are_400_json_counted_and_logged_once_without_traceback``;
5. ``/stats`` without a key, the embedded engine on a TCP port:
   ``test_stats_needs_the_key_when_keys_are_configured``, ``test_embedded_engine_has_no_tcp_port``
   (``test_probe_and_scrape_routes_need_no_key`` pins what stays open, by decision);
6. invalid values reaching the engine: ``test_non_finite_numbers_are_400``,
   ``test_fields_are_checked_against_the_published_schema``,
   ``test_target_headers_take_plain_decimals_in_range_only``;
7. the engine's 413 for a body under the limit: ``test_body_under_the_limit_reaches_the_engine``;
8. a 405 without ``Allow``, a non-ASCII value echoed as a surrogate: ``test_405_carries_allow``,
   ``test_non_ascii_tier_is_shown_printably``.
"""

from __future__ import annotations

import gzip
import hashlib
import inspect
import json
import socket
import time
import zlib
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from aiohttp import web

from accelgen.server.listen import JsonErrorHandler, ServerLimits
from tests.support.serve_process import ServeProcess
from tests.support.sidecar import Stack

HEAD_TIMEOUT_S = 1.0
BODY_TIMEOUT_S = 1.0
IDLE_TIMEOUT_S = 1.5
MAX_CONNECTIONS = 64
HANG_S = 20.0  # far above every timeout: a connection still open by then was never closed
KEY = "sk-hostile-test"
OK_BODY = {"prompt": "Hello", "max_tokens": 2}


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServeProcess]:
    running = ServeProcess(
        tmp_path_factory.mktemp("hostile"),
        "--header-timeout-s",
        str(HEAD_TIMEOUT_S),
        "--body-timeout-s",
        str(BODY_TIMEOUT_S),
        "--idle-timeout-s",
        str(IDLE_TIMEOUT_S),
        "--max-connections",
        str(MAX_CONNECTIONS),
    )
    yield running
    running.stop()


@pytest.fixture(scope="module")
def keyed(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServeProcess]:
    tmp = tmp_path_factory.mktemp("keyed")
    keys = tmp / "keys.yaml"
    keys.write_text(f"tenants:\n  - name: a\n    key_sha256: {hashlib.sha256(KEY.encode()).hexdigest()}\n")
    running = ServeProcess(tmp, "--keys", str(keys))
    yield running
    running.stop()


def _post(server: ServeProcess, content: bytes, path: str = "/v1/completions", **headers: str) -> httpx.Response:
    return httpx.post(server.url + path, content=content, headers=headers, timeout=30)


def _error(resp: httpx.Response, status: int) -> dict[str, object]:
    assert resp.status_code == status, resp.text[:500]
    assert resp.headers["content-type"].startswith("application/json")
    error: dict[str, object] = resp.json()["error"]
    assert isinstance(error["message"], str) and error["message"]
    return error


def _address(server: ServeProcess) -> tuple[str, int]:
    return "127.0.0.1", server.port


def _closed_after(sock: socket.socket) -> tuple[float, bytes]:
    """Seconds until the sidecar closes ``sock`` (HANG_S if it never does), and what it sent."""
    started = time.monotonic()
    sock.settimeout(HANG_S)
    got = b""
    try:
        while chunk := sock.recv(65536):
            got += chunk
    except TimeoutError:
        return HANG_S, got
    except ConnectionResetError:
        pass
    return time.monotonic() - started, got


def protocol_errors(server: ServeProcess) -> float:
    """``accelgen_protocol_errors_total``, all causes together."""
    text = httpx.get(server.url + "/metrics").text
    prefix = "accelgen_protocol_errors_total{"
    return sum(float(line.rsplit(" ", 1)[1]) for line in text.splitlines() if line.startswith(prefix))


def _no_tracebacks(server: ServeProcess) -> None:
    assert "Traceback" not in server.output, server.output[-3000:]
    assert " ERROR " not in server.output, server.output[-3000:]


# 1. Deeply nested JSON was a 500 with a RecursionError traceback per request.
@pytest.mark.parametrize("path", ["/v1/completions", "/v1/chat/completions"])
@pytest.mark.parametrize("depth", [200, 1000, 100_000])
def test_deep_nesting_is_400_without_traceback(server: ServeProcess, path: str, depth: int) -> None:
    key = "messages" if "chat" in path else "prompt"
    body = (f'{{"{key}":' + "[" * depth + "]" * depth + "}").encode()
    error = _error(_post(server, body, path), 400)
    assert error["code"] == "too_deep"
    _no_tracebacks(server)


# 2. A body not in its Content-Encoding was a 500; br a plain-text 400.
@pytest.mark.parametrize("encoding", ["gzip", "deflate", "x-gzip"])
def test_body_not_in_its_encoding_is_400_json(server: ServeProcess, encoding: str) -> None:
    error = _error(_post(server, json.dumps(OK_BODY).encode(), **{"Content-Encoding": encoding}), 400)
    assert error["code"] == "invalid_encoding"
    _no_tracebacks(server)


@pytest.mark.parametrize(
    ("encoding", "encode"),
    [("gzip", gzip.compress), ("deflate", zlib.compress), ("identity", lambda b: b)],
)
def test_supported_encodings_are_decoded(server: ServeProcess, encoding: str, encode: object) -> None:
    assert callable(encode)
    resp = _post(server, encode(json.dumps(OK_BODY).encode()), **{"Content-Encoding": encoding})
    assert resp.status_code == 200, resp.text
    assert resp.json()["choices"][0]["text"]


@pytest.mark.parametrize("encoding", ["br", "zstd", "gzip, gzip", "compress"])
def test_unsupported_encoding_is_415_json(server: ServeProcess, encoding: str) -> None:
    error = _error(_post(server, json.dumps(OK_BODY).encode(), **{"Content-Encoding": encoding}), 415)
    assert error["code"] == "unsupported_encoding"


def test_decompression_bomb_is_413(server: ServeProcess) -> None:
    bomb = gzip.compress(b'{"prompt": "' + b"x" * (8 * 1024 * 1024) + b'"}')
    assert len(bomb) < 64 * 1024
    assert _error(_post(server, bomb, **{"Content-Encoding": "gzip"}), 413)["code"] == "body_too_large"


# 3. Stalled and idle connections were never closed.
def test_body_that_never_arrives_gets_408_and_a_close(server: ServeProcess) -> None:
    with socket.create_connection(_address(server)) as sock:
        sock.sendall(b'POST /v1/completions HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n\r\n{"prompt":"hi"}')
        after_s, got = _closed_after(sock)
    assert BODY_TIMEOUT_S * 0.9 <= after_s < HANG_S
    assert got.startswith(b"HTTP/1.1 408"), got[:200]
    assert b'"body_timeout"' in got


@pytest.mark.parametrize(
    "sent",
    [b"", b"POST /v1/completions HTTP/1.1\r\nHost: x\r\n", b"GET /heal"],
    ids=["nothing", "half-headers", "half-line"],
)
def test_stalled_head_is_closed(server: ServeProcess, sent: bytes) -> None:
    with socket.create_connection(_address(server)) as sock:
        sock.sendall(sent)
        after_s, got = _closed_after(sock)
    assert HEAD_TIMEOUT_S * 0.9 <= after_s < HANG_S
    if sent:  # a started request is answered; a silent connection only closed
        assert got.startswith(b"HTTP/1.1 408") and b'"header_timeout"' in got, got[:200]
    else:
        assert got == b""


def test_trickled_head_is_closed_at_the_header_timeout(server: ServeProcess) -> None:
    with socket.create_connection(_address(server)) as sock:
        started = time.monotonic()
        sock.sendall(b"POST /v1/completions HTTP/1.1\r\nHost: x\r\n")
        sock.settimeout(0.2)
        got = b""
        while time.monotonic() - started < HANG_S:  # a byte every 0.2 s never resets the clock
            try:
                sock.sendall(b"X")
                chunk = sock.recv(65536)
            except TimeoutError:
                continue
            except (BrokenPipeError, ConnectionResetError):
                break
            if not chunk:
                break
            got += chunk
    assert time.monotonic() - started < HANG_S
    assert got.startswith(b"HTTP/1.1 408"), got[:200]


def _request(path: str, body: dict[str, object] | None = None) -> bytes:
    if body is None:
        return f"GET {path} HTTP/1.1\r\nHost: x\r\n\r\n".encode()
    data = json.dumps(body).encode()
    return f"POST {path} HTTP/1.1\r\nHost: x\r\nContent-Length: {len(data)}\r\n\r\n".encode() + data


STALLED_HEAD = b"GET /healthz HTTP/1.1\r\nHo"


@pytest.mark.parametrize(
    "first", [_request("/healthz"), _request("/v1/completions", OK_BODY)], ids=["behind-a-get", "behind-a-post"]
)
def test_pipelined_stalled_head_gets_the_header_timeout(server: ServeProcess, first: bytes) -> None:
    # A whole request and, in the same read, the start of a next one that never ends: the
    # idle timeout (a silent close) bounded it before; now the header timeout does (408).
    with socket.create_connection(_address(server)) as sock:
        sock.sendall(first + STALLED_HEAD)
        after_s, got = _closed_after(sock)
    assert after_s < HANG_S
    assert got.startswith(b"HTTP/1.1 200"), got[:200]
    assert got.count(b"HTTP/1.1 ") == 2 and b"HTTP/1.1 408" in got and b'"header_timeout"' in got, got[-300:]


def test_stalled_head_sent_during_an_answer_gets_the_header_timeout(server: ServeProcess) -> None:
    # The next head's first bytes arrive while a stream is being answered: its clock starts
    # when the stream ends (the header timeout cannot cut the answer before it short).
    streamed = _request("/v1/completions", {"prompt": "Hello", "max_tokens": 64, "stream": True})
    with socket.create_connection(_address(server)) as sock:
        sock.sendall(streamed)
        sock.settimeout(HANG_S)
        got = b""
        while b"data:" not in got:
            chunk = sock.recv(65536)
            assert chunk, got[:200]
            got += chunk
        sock.sendall(STALLED_HEAD)
        after_s, rest = _closed_after(sock)
    got += rest
    assert after_s < HANG_S and got.startswith(b"HTTP/1.1 200"), got[:200]
    assert b"[DONE]" in got and got.rstrip().endswith(b"}") and b'"header_timeout"' in got, got[-300:]


def test_kept_alive_after_a_body_in_its_own_read_is_idle_not_a_head(server: ServeProcess) -> None:
    # The head clock is for heads only: a body that came after its head leaves nothing pending.
    body = json.dumps(OK_BODY).encode()
    with socket.create_connection(_address(server)) as sock:
        sock.sendall(f"POST /v1/completions HTTP/1.1\r\nHost: x\r\nContent-Length: {len(body)}\r\n\r\n".encode())
        time.sleep(0.1)
        sock.sendall(body)
        sock.settimeout(HANG_S)
        first = sock.recv(65536)
        assert first.startswith(b"HTTP/1.1 200"), first[:200]
        after_s, got = _closed_after(sock)
    assert after_s < HANG_S and b"408" not in got, got[:200]
    assert after_s >= min(IDLE_TIMEOUT_S, 1.0) * 0.9


def test_idle_keep_alive_is_closed(server: ServeProcess) -> None:
    with socket.create_connection(_address(server)) as sock:
        sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
        sock.settimeout(HANG_S)
        first = sock.recv(65536)
        assert first.startswith(b"HTTP/1.1 200")
        after_s, got = _closed_after(sock)
    assert IDLE_TIMEOUT_S * 0.9 <= after_s < HANG_S and got == b""


def test_connections_beyond_the_bound_get_503(server: ServeProcess) -> None:
    held = [socket.create_connection(_address(server)) for _ in range(MAX_CONNECTIONS)]
    try:
        with socket.create_connection(_address(server)) as extra:
            after_s, got = _closed_after(extra)
        assert after_s < HANG_S and got.startswith(b"HTTP/1.1 503"), got[:200]
        assert b"Retry-After: 1" in got and b'"too_many_connections"' in got
    finally:
        for sock in held:
            sock.close()
    # Once they are gone, new connections are served again.
    deadline = time.monotonic() + HANG_S
    while httpx.get(server.url + "/healthz").status_code != 200:
        assert time.monotonic() < deadline
        time.sleep(0.1)


# 4. Every malformed request logged a traceback at ERROR.
MALFORMED = [
    b"GET /healthz HTTP/1.1\r\nHost: x\rX: y\r\n\r\n",  # bare CR
    b"GET /healthz HTTP/1.1\r\nHost: x\r\nX: a\x00b\r\n\r\n",  # NUL in a value
    b"GET /healthz HTTP/1.1\r\nHost: x\r\nX: a\r\n  folded\r\n\r\n",  # obsolete folding
    b"POST /v1/completions HTTP/1.1\r\nHost: x\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\n",
    b"POST /v1/completions HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
    b"POST /v1/completions HTTP/1.1\r\nHost: x\r\nContent-Length: -5\r\n\r\n",
    b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n",  # the HTTP/2 preface
    b"GET /healthz HTTP/1.1\r\nHost: x\r\nX: " + b"a" * 20_000 + b"\r\n\r\n",  # an over-long header
]


def _json_error(got: bytes, status: int) -> dict[str, object]:
    """The error object of a raw HTTP answer ``got``, which must be ``status`` in the API's shape."""
    head, _, payload = got.partition(b"\r\n\r\n")
    assert head.startswith((f"HTTP/1.0 {status} ".encode(), f"HTTP/1.1 {status} ".encode())), got[:200]
    assert b"\r\ncontent-type: application/json" in head.lower(), head
    error: dict[str, object] = json.loads(payload)["error"]
    assert isinstance(error["message"], str) and error["message"] and error["type"] == "invalid_request_error"
    return error


def test_malformed_requests_are_400_json_counted_and_logged_once_without_traceback(server: ServeProcess) -> None:
    before, logged = protocol_errors(server), len(server.output)
    for _ in range(20):
        for raw in MALFORMED:
            with socket.create_connection(_address(server)) as sock:
                sock.sendall(raw)
                after_s, got = _closed_after(sock)
            assert after_s < HANG_S, raw[:60]
            assert _json_error(got, 400)["code"] == "malformed_http", raw[:60]
    assert protocol_errors(server) - before >= 20 * len(MALFORMED)
    _no_tracebacks(server)
    # 160 malformed requests, a few causes: one WARNING line each at most (within the minute).
    warnings = [line for line in server.output[logged:].splitlines() if "client protocol error" in line]
    causes = [line.split("client protocol error ", 1)[1].split(":")[0] for line in warnings]
    assert len(causes) == len(set(causes)) and len(causes) <= len(MALFORMED), warnings


def test_the_overridden_aiohttp_hook_keeps_its_signature() -> None:
    # aiohttp has no public hook for the answer to a request its parser refuses; the
    # sidecar overrides RequestHandler.handle_error (JsonErrorHandler). If aiohttp
    # renames it or changes what it is called with, this fails before the JSON does.
    assert issubclass(JsonErrorHandler, web.RequestHandler)
    params = list(inspect.signature(web.RequestHandler.handle_error).parameters)
    assert params == ["self", "request", "status", "exc", "message"]
    assert "handle_error" in vars(JsonErrorHandler)


def test_the_test_stack_runs_the_shipped_server() -> None:
    # tests.support.sidecar.Stack serves its sidecar through listen(), as `accelgen serve`:
    # the in-process tests see the same limits and error answers.
    stack = Stack(limits=ServerLimits(header_timeout_s=0.5)).start()
    try:
        port = int(stack.url.rsplit(":", 1)[1])
        with socket.create_connection(("127.0.0.1", port)) as sock:
            sock.sendall(MALFORMED[1])
            _, got = _closed_after(sock)
        assert _json_error(got, 400)["code"] == "malformed_http"
        with socket.create_connection(("127.0.0.1", port)) as sock:
            sock.sendall(b"GET /heal")
            after_s, got = _closed_after(sock)
        assert after_s < HANG_S and _json_error(got, 408)["code"] == "header_timeout"
    finally:
        stack.stop()


# 5. Monitoring routes and the embedded engine without a key.
@pytest.mark.parametrize("path", ["/healthz", "/readyz", "/metrics", "/openapi.json"])
def test_probe_and_scrape_routes_need_no_key(keyed: ServeProcess, path: str) -> None:
    assert httpx.get(keyed.url + path).status_code == 200


def test_stats_needs_the_key_when_keys_are_configured(keyed: ServeProcess) -> None:
    assert _error(httpx.get(keyed.url + "/stats"), 401)["code"] == "no_key"
    assert _error(httpx.get(keyed.url + "/stats", headers={"Authorization": "Bearer nope"}), 401)
    resp = httpx.get(keyed.url + "/stats", headers={"Authorization": f"Bearer {KEY}"})
    assert resp.status_code == 200 and "tiers" in resp.json()


def _listening_tcp_ports(pid: int) -> set[int]:
    """The TCP ports process ``pid`` listens on (Linux /proc)."""
    inodes = set()
    for fd in Path(f"/proc/{pid}/fd").iterdir():
        try:
            target = fd.readlink().as_posix()
        except OSError:
            continue
        if target.startswith("socket:["):
            inodes.add(target[8:-1])
    ports = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        for line in Path(table).read_text().splitlines()[1:]:
            fields = line.split()
            if fields[3] == "0A" and fields[9] in inodes:  # 0A: LISTEN
                ports.add(int(fields[1].rsplit(":", 1)[1], 16))
    return ports


@pytest.mark.skipif(not Path("/proc/net/tcp").exists(), reason="reads Linux /proc")
def test_embedded_engine_has_no_tcp_port(keyed: ServeProcess) -> None:
    assert _listening_tcp_ports(keyed.proc.pid) == {keyed.port}
    body = {"prompt": "hi", "max_tokens": 2}
    resp = httpx.post(keyed.url + "/v1/completions", json=body, headers={"Authorization": f"Bearer {KEY}"})
    assert resp.status_code == 200  # the engine is reached, through its socket


# 6. Invalid values reached the engine (NaN verbatim, wrong types, loose header numbers).
@pytest.mark.parametrize(
    "raw",
    [
        b'{"prompt": "hi", "temperature": NaN}',
        b'{"prompt": "hi", "temperature": Infinity}',
        b'{"prompt": "hi", "temperature": -Infinity}',
        b'{"prompt": "hi", "temperature": 1e999}',
        b'{"prompt": "hi", "unknown": [1e400]}',
    ],
)
def test_non_finite_numbers_are_400(server: ServeProcess, raw: bytes) -> None:
    assert _error(_post(server, raw), 400)["code"] == "invalid_json"


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("temperature", "hot"),
        ("temperature", -1),
        ("top_p", "x"),
        ("top_p", 1.5),
        ("stop", {"a": 1}),
        ("logprobs", "x"),
        ("best_of", "x"),
        ("seed", "x"),
        ("seed", 2**64),
        ("max_tokens", 2**40),
    ],
)
def test_fields_are_checked_against_the_published_schema(server: ServeProcess, field: str, value: object) -> None:
    error = _error(_post(server, json.dumps({"prompt": "hi", field: value}).encode()), 400)
    assert error["param"] == field


@pytest.mark.parametrize(
    "value", ["1_000", '" 50 "', "5 0", "1e-300", "+50", "0", "0.0001", "NaN", "Infinity", "99999999"]
)
def test_target_headers_take_plain_decimals_in_range_only(server: ServeProcess, value: str) -> None:
    resp = httpx.post(server.url + "/v1/completions", json=OK_BODY, headers={"x-llm-d-slo-ttft-ms": value})
    assert _error(resp, 400)["param"] == "x-llm-d-slo-ttft-ms"


@pytest.mark.parametrize("value", ["50", "1", "2500.5", "86400000"])
def test_target_headers_in_range_are_served(server: ServeProcess, value: str) -> None:
    resp = httpx.post(server.url + "/v1/completions", json=OK_BODY, headers={"x-llm-d-slo-tpot-ms": value})
    assert resp.status_code == 200, resp.text


# 7. A body just under the limit was refused by the engine as a 413 engine_error.
def test_body_under_the_limit_reaches_the_engine(server: ServeProcess) -> None:
    # 2 bytes a character as sent; ASCII-escaped (\u00e9, 6 bytes) it was three times the limit.
    body = json.dumps({"prompt": "é" * (2 * 1024 * 1024 - 64), "max_tokens": 2}, ensure_ascii=False).encode()
    assert 4 * 1024 * 1024 - 256 < len(body) <= 4 * 1024 * 1024
    error = _error(_post(server, body), 400)  # the engine's own verdict: too long for the model
    assert "maximum context length" in str(error["message"])


def test_body_over_the_limit_is_the_sidecars_413(server: ServeProcess) -> None:
    body = json.dumps({"prompt": "x" * (4 * 1024 * 1024)}).encode()
    error = _error(_post(server, body), 413)
    assert error["code"] == "body_too_large" and "engine" not in str(error["message"])


# 8. 405 without Allow; a non-ASCII value echoed as a lone surrogate.
@pytest.mark.parametrize(("method", "path", "allow"), [("GET", "/v1/completions", "POST"), ("POST", "/stats", "GET")])
def test_405_carries_allow(server: ServeProcess, method: str, path: str, allow: str) -> None:
    resp = httpx.request(method, server.url + path)
    _error(resp, 405)
    assert allow in resp.headers["allow"].split(",")


def test_non_ascii_tier_is_shown_printably(server: ServeProcess) -> None:
    with socket.create_connection(_address(server)) as sock:
        body = json.dumps(OK_BODY).encode()
        sock.sendall(
            b"POST /v1/completions HTTP/1.1\r\nHost: x\r\nConnection: close\r\nx-accelgen-tier: caf\xe9\r\n"
            + f"Content-Length: {len(body)}\r\n\r\n".encode()
            + body
        )
        _, got = _closed_after(sock)
    head, _, payload = got.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 400"), got[:200]
    message = json.loads(payload)["error"]["message"]
    assert "caf\ufffd" in message and "\\udce9" not in message and "\udce9" not in message
