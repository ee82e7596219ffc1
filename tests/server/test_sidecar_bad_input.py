"""Bad input never yields a 5xx or a crash: hand-written cases (fuzzing is separate)."""

from __future__ import annotations

import json
import socket
import time

import httpx
import pytest

from tests.support.sidecar import Stack

OK_BODY = {"prompt": "Hello", "max_tokens": 2}


def _post(stack: Stack, content: bytes | str, path: str = "/v1/completions") -> httpx.Response:
    return httpx.post(stack.url + path, content=content, headers={"Content-Type": "application/json"}, timeout=30)


@pytest.mark.parametrize(
    "raw",
    [
        b"{not json",
        b"",
        b"\xff\xfe\x00",
        b"[1, 2, 3]",
        b"null",
        b'"a string"',
        b"{" * 5000,
    ],
)
def test_invalid_json_is_400(stack: Stack, raw: bytes) -> None:
    resp = _post(stack, raw)
    assert resp.status_code == 400, resp.text
    assert resp.json()["error"]["type"] == "invalid_request_error"


def test_huge_body_is_413(stack: Stack) -> None:
    resp = _post(stack, json.dumps({"prompt": "x" * (5 * 1024 * 1024)}))
    assert resp.status_code == 413 and "too large" in resp.json()["error"]["message"]


@pytest.mark.parametrize(
    ("body", "param"),
    [
        ({"prompt": "x", "max_tokens": -5}, "max_tokens"),
        ({"prompt": "x", "max_tokens": 0}, "max_tokens"),
        ({"prompt": "x", "max_tokens": "ten"}, "max_tokens"),
        ({"prompt": "x", "max_tokens": 1.5}, "max_tokens"),
        ({"prompt": "x", "max_tokens": True}, "max_tokens"),
        ({"prompt": 42}, "prompt"),
        ({"prompt": ""}, "prompt"),
        ({"prompt": [1, "a"]}, "prompt"),
        ({"prompt": [[]]}, "prompt"),
        ({}, "prompt"),
        ({"prompt": "x", "stream": "yes"}, "stream"),
        ({"prompt": "x", "n": 0}, "n"),
        ({"prompt": "x", "stream_options": []}, "stream_options"),
        ({"prompt": "x", "model": 7}, "model"),
        ({"prompt": "x", "vllm_xargs": "tier=gold"}, "vllm_xargs"),
    ],
)
def test_wrong_fields_are_400_naming_the_field(stack: Stack, body: object, param: str) -> None:
    resp = _post(stack, json.dumps(body))
    assert resp.status_code == 400, resp.text
    assert resp.json()["error"]["param"] == param


@pytest.mark.parametrize("messages", [None, [], "hi", [{"content": "no role"}], [1, 2]])
def test_bad_chat_messages_are_400(stack: Stack, messages: object) -> None:
    resp = _post(stack, json.dumps({"messages": messages}), "/v1/chat/completions")
    assert resp.status_code == 400 and resp.json()["error"]["param"] == "messages"


def test_prompt_longer_than_the_model_is_400_from_the_engine(stack: Stack) -> None:
    resp = _post(stack, json.dumps({"prompt": "word " * 5000, "max_tokens": 10}))
    assert resp.status_code == 400
    assert "maximum context length" in resp.json()["error"]["message"]


def test_unknown_fields_pass_through(stack: Stack) -> None:
    body = {
        **OK_BODY,
        "frobnicate": {"deep": [1, 2]},
        "temperature": 0.3,
        "priority": -99,
        "vllm_xargs": {"accelgen_tier": "interactive", "mine": 1},
    }
    resp = _post(stack, json.dumps(body))
    assert resp.status_code == 200 and resp.json()["choices"][0]["text"]


@pytest.mark.parametrize(
    "headers",
    [
        {"x-llm-d-slo-ttft-ms": "soon"},
        {"x-llm-d-slo-tpot-ms": "-3"},
        {"x-llm-d-slo-ttft-ms": "nan"},
        {"x-accelgen-tier": "x" * 4000},
    ],
)
def test_bad_tier_headers_are_400(stack: Stack, headers: dict[str, str]) -> None:
    resp = httpx.post(stack.url + "/v1/completions", json=OK_BODY, headers=headers)
    assert resp.status_code == 400 and resp.json()["error"]["message"]


def test_slow_client_is_served_and_does_not_block_others(stack: Stack) -> None:
    host, port = stack.url.removeprefix("http://").split(":")
    body = json.dumps(OK_BODY).encode()
    head = (
        f"POST /v1/completions HTTP/1.1\r\nHost: {host}\r\nContent-Type: application/json"
        f"\r\nContent-Length: {len(body)}\r\nConnection: close\r\n\r\n"
    ).encode()
    with socket.create_connection((host, int(port)), timeout=10) as slow:
        slow.sendall(head)
        for i in range(0, len(body), 4):  # trickle the body over ~1 s
            slow.sendall(body[i : i + 4])
            if i == 8:  # meanwhile another client is served at once
                started = time.monotonic()
                assert httpx.post(stack.url + "/v1/completions", json=OK_BODY).status_code == 200
                assert time.monotonic() - started < 2.0
            time.sleep(0.08)
        reply = b""
        while chunk := slow.recv(65536):
            reply += chunk
    assert reply.startswith(b"HTTP/1.1 200"), reply[:200]


def test_client_that_never_finishes_its_body_harms_nobody(stack: Stack) -> None:
    host, port = stack.url.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port)), timeout=10) as stuck:
        stuck.sendall(b"POST /v1/completions HTTP/1.1\r\nHost: x\r\nContent-Length: 1000\r\n\r\n{")
        assert httpx.post(stack.url + "/v1/completions", json=OK_BODY).status_code == 200
    assert httpx.get(stack.url + "/healthz").status_code == 200


def test_request_larger_than_the_engine_is_400_not_a_hang(stack: Stack) -> None:
    # Found by fuzzing: 100 sequences of 3,000 tokens never fit the KV cache.
    started = time.monotonic()
    resp = _post(stack, json.dumps({"prompt": "x", "n": 100, "max_tokens": 3000}))
    assert resp.status_code == 400 and "KV blocks" in resp.json()["error"]["message"]
    assert time.monotonic() - started < 5
