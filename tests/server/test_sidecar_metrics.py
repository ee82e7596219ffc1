"""Metrics counted exactly, /stats consistent with /metrics, the engine's metrics re-exported."""

from __future__ import annotations

import logging
import math
import re
import time
from collections.abc import Iterator
from typing import Any

import httpx
import openai
import pytest

from tests.support.sidecar import SETTLE_S, Stack, metric_value, wait_for

N_INTERACTIVE, N_BATCH, MAX_TOKENS = 7, 4, 6


@pytest.fixture(scope="module")
def pooled() -> Iterator[Stack]:
    running = Stack(pool="pool-a").start()
    yield running
    running.stop()


def _send_load(stack: Stack) -> None:
    client = openai.OpenAI(base_url=stack.url + "/v1", api_key="x", max_retries=0)
    for i in range(N_INTERACTIVE):
        stream = i % 2 == 0
        out = client.completions.create(
            model="accelgen-sim",
            prompt="count me",
            stream=stream,
            max_tokens=MAX_TOKENS,
            extra_headers={"x-accelgen-tier": "interactive"},
        )
        if stream:
            list(out)
    for _ in range(N_BATCH):
        client.chat.completions.create(
            model="accelgen-sim",
            max_tokens=MAX_TOKENS,
            messages=[{"role": "user", "content": "hi"}],
            extra_headers={"x-accelgen-tier": "batch"},
        )
    with pytest.raises(openai.BadRequestError):
        client.completions.create(
            model="accelgen-sim",
            prompt="x",
            max_tokens=1,
            extra_headers={"x-accelgen-tier": "nope"},
        )


def test_counters_match_requests_sent(pooled: Stack) -> None:
    _send_load(pooled)
    text = httpx.get(pooled.url + "/metrics").text
    lab = {"pool": "pool-a"}
    for tier, n in (("interactive", N_INTERACTIVE), ("batch", N_BATCH)):
        assert metric_value(text, "accelgen_requests_total", **lab, tier=tier, outcome="admitted") == n
        assert metric_value(text, "accelgen_requests_completed_total", **lab, tier=tier) == n
        assert metric_value(text, "accelgen_requests_slo_met_total", **lab, tier=tier) == n
        assert metric_value(text, "accelgen_output_tokens_total", **lab, tier=tier) == n * MAX_TOKENS
        assert metric_value(text, "accelgen_goodput_tokens_total", **lab, tier=tier) == n * MAX_TOKENS
        assert metric_value(text, "accelgen_ttft_seconds_count", **lab, tier=tier) == n
        assert metric_value(text, "accelgen_tbt_seconds_count", **lab, tier=tier) == n * (MAX_TOKENS - 1)
        for outcome in ("rejected", "shed", "failed", "cancelled"):
            assert metric_value(text, "accelgen_requests_total", **lab, tier=tier, outcome=outcome) == 0
    # The unknown tier has no series of its own and changed nothing else.
    assert 'tier="nope"' not in text
    assert metric_value(text, "accelgen_requests_completed_total", **lab, tier="standard") == 0


def _idle_stats(stack: Stack) -> dict[str, Any]:
    """``/stats`` once the engine state the sidecar last polled says nothing runs."""
    latest: dict[str, Any] = {}

    def idle() -> bool:
        latest.update(httpx.get(stack.url + "/stats").json())
        return latest["engine"]["running"] == 0 and latest["engine"]["waiting"] == 0

    assert wait_for(idle, SETTLE_S), latest["engine"]
    return latest


# The window's histogram bins are this wide (ratio of one edge to the next), see stats.py.
_BIN_RATIO = (1e3 / 1e-5) ** (1 / 400)


def _assert_p99_brackets(text: str, name: str, p99_s: float, **labels: str) -> None:
    """The window's p99 (the upper edge of the bin holding the 99th-percentile sample)
    agrees with Prometheus's cumulative buckets: every bucket at or above it holds that
    sample, every bucket below its bin does not."""
    total = metric_value(text, f"{name}_count", **labels)
    need = math.ceil(0.99 * total)
    les = set(re.findall(rf'^{name}_bucket{{le="([^"]+)"', text, re.MULTILINE)) - {"+Inf"}
    assert les, name
    for le in les:
        edge, count = float(le), metric_value(text, f"{name}_bucket", le=le, **labels)
        if edge >= p99_s:
            assert count >= need, (name, edge, count, need, p99_s)
        elif edge * _BIN_RATIO * 1.001 < p99_s:
            assert count < need, (name, edge, count, need, p99_s)


def test_stats_consistent_with_metrics(pooled: Stack) -> None:
    # NOTE: /stats and /metrics are two snapshots; the engine part of both is the state
    # last polled from the engine, so compare them once that state has settled to idle
    # (the last poll may have caught the last request still running).
    stats = _idle_stats(pooled)
    text = httpx.get(pooled.url + "/metrics").text
    assert stats["version"] == 1 and stats["pool"] == "pool-a" and stats["window_s"] == 60
    assert stats["engine"] == {"ready": True, "running": 0, "waiting": 0, "kv_usage": 0.0}
    engine = {"pool": "pool-a"}
    assert metric_value(text, "accelgen_engine_ready", **engine) == 1.0
    for key in ("running", "waiting"):
        assert metric_value(text, f"accelgen_engine_requests_{key}", **engine) == 0
    assert metric_value(text, "accelgen_engine_kv_usage_ratio", **engine) == 0.0
    for row in stats["tiers"]:
        lab = {"pool": "pool-a", "tier": row["name"]}
        completed = metric_value(text, "accelgen_requests_completed_total", **lab)
        met = metric_value(text, "accelgen_requests_slo_met_total", **lab)
        good_tokens = metric_value(text, "accelgen_goodput_tokens_total", **lab)
        refused = sum(metric_value(text, "accelgen_requests_total", **lab, outcome=o) for o in ("rejected", "shed"))
        assert row["completed"] == completed and row["slo_met"] == met
        assert row["rejected"] == refused
        assert row["throughput_rps"] == pytest.approx(completed / 60)
        assert row["goodput_rps"] == pytest.approx(met / 60)
        assert row["goodput_tokens_per_s"] == pytest.approx(good_tokens / 60)
        assert row["num_good_tokens"] == good_tokens
        assert row["num_tokens"] == metric_value(text, "accelgen_output_tokens_total", **lab)
        assert row["attainment"] == (met / completed if completed else 1.0)
        if completed:
            # p99 from the window's histogram must bracket the Prometheus histogram's view.
            assert row["ttft_p99_s"] > 0 and row["tbt_p99_s"] > 0
            _assert_p99_brackets(text, "accelgen_ttft_seconds", row["ttft_p99_s"], **lab)
            _assert_p99_brackets(text, "accelgen_tbt_seconds", row["tbt_p99_s"], **lab)
    assert {r["name"] for r in stats["tiers"]} == {"interactive", "standard", "batch"}


def test_targets_gauges_buckets_and_engine_reexport(pooled: Stack) -> None:
    text = httpx.get(pooled.url + "/metrics").text
    lab = {"pool": "pool-a"}
    assert metric_value(text, "accelgen_tier_target_seconds", **lab, tier="interactive", target="ttft") == 0.5
    assert metric_value(text, "accelgen_tier_target_seconds", **lab, tier="standard", target="tbt") == 0.25
    assert metric_value(text, "accelgen_tier_target_seconds", **lab, tier="batch", target="deadline") == 60
    # Every tier's targets are bucket edges (so "within target" is exact on dashboards).
    for edge in ("0.5", "2.0"):
        assert f'accelgen_ttft_seconds_bucket{{le="{edge}",pool="pool-a",tier="interactive"}}' in text
    assert 'accelgen_tbt_seconds_bucket{le="0.25",pool="pool-a",tier="standard"}' in text
    assert metric_value(text, "accelgen_engine_ready", **lab) == 1.0
    # The engine's own vllm:* families, re-exported for the gateway's endpoint picker.
    assert "# TYPE vllm:num_requests_running gauge" in text
    assert "vllm:kv_cache_usage_perc{" in text
    assert metric_value(text, "vllm:generation_tokens_total") >= (N_INTERACTIVE + N_BATCH) * MAX_TOKENS


def test_observe_all_is_observe_each() -> None:
    """The batched TBT observe gives exactly what one ``observe`` per value gives."""
    from prometheus_client import CollectorRegistry, Histogram, generate_latest

    from accelgen.server.metrics import observe_all

    values = [0.0, 0.004, 0.005, 0.0051, 0.1, 0.25, 7.0, 1e6, 0.05, 0.05]
    pages = []
    for batched in (False, True):
        registry = CollectorRegistry()
        hist = Histogram("h_seconds", "h", ["tier"], buckets=[0.005, 0.05, 0.1, 1.0], registry=registry)
        child = hist.labels(tier="t")
        if batched:
            observe_all(child, values[:3])
            observe_all(child, values[3:])
            observe_all(child, [])
        else:
            for value in values:
                child.observe(value)
        pages.append(generate_latest(registry))
    assert pages[0] == pages[1]
    assert b'h_seconds_bucket{le="0.005",tier="t"} 3.0' in pages[1]
    assert b'h_seconds_count{tier="t"} 10.0' in pages[1]


def test_a_blocked_event_loop_is_measured_and_logged(pooled: Stack, caplog: pytest.LogCaptureFixture) -> None:
    """A handler that blocks the sidecar's loop for 1.3 s shows up as loop lag.

    The loop is blocked for real (``time.sleep`` on it); the lag histogram and the
    warning are how an operator tells a stalled sidecar from a slow engine.
    """

    def lag(text: str) -> tuple[float, float]:
        count = metric_value(text, "accelgen_event_loop_lag_seconds_count", pool="pool-a")
        return count, metric_value(text, "accelgen_event_loop_lag_seconds_bucket", pool="pool-a", le="1.0")

    count0, under0 = lag(httpx.get(pooled.url + "/metrics").text)

    async def block() -> None:
        time.sleep(1.3)

    with caplog.at_level(logging.WARNING, logger="accelgen.server"):
        pooled.run(block())
        assert wait_for(lambda: lag(httpx.get(pooled.url + "/metrics").text)[0] > count0, 5)
    count, under = lag(httpx.get(pooled.url + "/metrics").text)
    assert (count - under) - (count0 - under0) >= 1  # a wake-up came over 1 s late
    assert any("event loop ran 1." in r.getMessage() for r in caplog.records), caplog.text
