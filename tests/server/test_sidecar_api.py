"""The OpenAI API through the sidecar, driven by the official ``openai`` client."""

from __future__ import annotations

import httpx
import openai
import pytest
from openai.types.chat import ChatCompletionMessageParam

from tests.support.sidecar import Stack, metric_value


def test_completion_non_streaming(client: openai.OpenAI) -> None:
    out = client.completions.create(model="accelgen-sim", prompt="Hello there", max_tokens=7)
    assert out.object == "text_completion"
    assert out.choices[0].text == "the quick brown fox jumps over a"
    assert out.choices[0].finish_reason == "length"
    assert out.usage is not None and out.usage.completion_tokens == 7


def test_completion_streaming_with_usage(client: openai.OpenAI) -> None:
    chunks = list(
        client.completions.create(
            model="accelgen-sim",
            prompt="Hello",
            max_tokens=5,
            stream=True,
            stream_options={"include_usage": True},
        )
    )
    assert "".join(c.choices[0].text for c in chunks if c.choices) == "the quick brown fox jumps"
    assert chunks[-1].choices == [] and chunks[-1].usage is not None
    assert chunks[-1].usage.completion_tokens == 5


def test_streaming_without_usage_sends_no_usage_chunk(client: openai.OpenAI) -> None:
    chunks = list(client.completions.create(model="accelgen-sim", prompt="Hi", max_tokens=3, stream=True))
    assert len(chunks) == 3 and all(c.choices and c.usage is None for c in chunks)


def test_chat_non_streaming_and_streaming(client: openai.OpenAI) -> None:
    messages: list[ChatCompletionMessageParam] = [{"role": "user", "content": "Say something"}]
    out = client.chat.completions.create(model="accelgen-sim", messages=messages, max_tokens=4)
    assert out.object == "chat.completion"
    assert out.choices[0].message.role == "assistant"
    assert out.choices[0].message.content == "the quick brown fox"
    assert out.usage is not None and out.usage.completion_tokens == 4
    chunks = list(
        client.chat.completions.create(
            model="accelgen-sim",
            messages=messages,
            max_tokens=4,
            stream=True,
            stream_options={"include_usage": True},
        )
    )
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == "the quick brown fox"
    assert chunks[-1].usage is not None and chunks[-1].usage.completion_tokens == 4


def test_model_may_be_omitted(stack: Stack) -> None:
    # The sidecar fills in the engine's model, so the README's curl line works as printed.
    resp = httpx.post(stack.url + "/v1/completions", json={"prompt": "Hello", "max_tokens": 2})
    assert resp.status_code == 200 and resp.json()["model"] == "accelgen-sim"


def test_models_health_ready(client: openai.OpenAI, stack: Stack) -> None:
    assert [m.id for m in client.models.list()] == ["accelgen-sim"]
    assert httpx.get(stack.url + "/healthz").json() == {"status": "ok"}
    assert httpx.get(stack.url + "/readyz").json() == {"ready": True}


def test_tier_headers_pick_the_tier(client: openai.OpenAI, stack: Stack) -> None:
    def completed(tier: str) -> float:
        text = httpx.get(stack.url + "/metrics").text
        return float(metric_value(text, "accelgen_requests_completed_total", tier=tier))

    cases = [
        ({"x-accelgen-tier": "batch"}, "batch"),
        ({"x-llm-d-inference-objective": "interactive"}, "interactive"),
        ({"x-llm-d-slo-ttft-ms": "800", "x-llm-d-slo-tpot-ms": "120"}, "interactive"),
        ({"x-llm-d-slo-ttft-ms": "5000", "x-llm-d-slo-tpot-ms": "300"}, "standard"),
        ({}, "standard"),
    ]
    for headers, tier in cases:
        before = completed(tier)
        client.completions.create(model="accelgen-sim", prompt="x", max_tokens=2, extra_headers=headers)
        assert completed(tier) == before + 1, (headers, tier)


def test_unknown_tier_is_400_in_openai_shape(client: openai.OpenAI) -> None:
    with pytest.raises(openai.BadRequestError) as err:
        client.completions.create(
            model="accelgen-sim",
            prompt="x",
            max_tokens=2,
            extra_headers={"x-accelgen-tier": "platinum"},
        )
    assert err.value.status_code == 400
    body = err.value.body
    assert isinstance(body, dict) and body["code"] == "unknown_tier"
    assert "platinum" in body["message"] and body["type"] == "invalid_request_error"


@pytest.mark.parametrize(
    ("method", "path", "status"),
    [("GET", "/nope", 404), ("GET", "/v1/completions", 405), ("DELETE", "/stats", 405)],
)
def test_routing_errors_in_openai_shape(stack: Stack, method: str, path: str, status: int) -> None:
    resp = httpx.request(method, stack.url + path)
    assert resp.status_code == status
    assert set(resp.json()["error"]) == {"message", "type", "param", "code"}


def test_openapi_document_served_and_shipped(stack: Stack) -> None:
    doc = httpx.get(stack.url + "/openapi.json").json()
    assert doc["openapi"].startswith("3.")
    assert {
        "/v1/completions",
        "/v1/chat/completions",
        "/v1/models",
        "/healthz",
        "/readyz",
        "/metrics",
        "/stats",
    } <= set(doc["paths"])
