"""The engine-killed-mid-stream sequence, shared by the sim-engine and real-vLLM fault tests."""

from __future__ import annotations

import time
from collections.abc import Callable

import httpx
import openai
import pytest

from tests.support.sidecar import Stack, metric_value, wait_for


def ready(stack: Stack) -> bool:
    return httpx.get(stack.url + "/readyz").status_code == 200


def kill_mid_stream_then_down(
    stack: Stack, client: openai.OpenAI, *, model: str, max_tokens: int, kill: Callable[[], None], tier: str
) -> None:
    """Kill the engine after 3 streamed tokens; then the sidecar must be cleanly down.

    The stream ends with an in-band error naming the engine (never a hang), ``/readyz``
    turns 503, a new request gets 503 at once, and both requests count as failed.
    """
    stream = client.completions.create(
        model=model, prompt="x", max_tokens=max_tokens, stream=True, extra_body={"ignore_eos": True}
    )
    received = 0
    with pytest.raises(openai.APIError) as err:
        for _ in stream:
            received += 1
            if received == 3:
                kill()
    assert 3 <= received < max_tokens
    assert "engine" in str(err.value.message)
    assert wait_for(lambda: not ready(stack), 3)
    down_ready = httpx.get(stack.url + "/readyz")
    assert down_ready.status_code == 503 and down_ready.json()["ready"] is False
    started = time.monotonic()
    with pytest.raises(openai.InternalServerError) as down:
        client.completions.create(model=model, prompt="x", max_tokens=2)
    assert down.value.status_code == 503 and time.monotonic() - started < 5
    text = httpx.get(stack.url + "/metrics").text
    assert metric_value(text, "accelgen_requests_total", tier=tier, outcome="failed") == 2
