"""The in-engine token budget and the tiers' attainment targets on /metrics.

`accelgen_engine_budget_tokens{stat}` comes from the in-engine stats file (the format
`accelgen.vllm.stats` writes; the sim engine writes it too, with the tokens of each step
as its budget). `accelgen_tier_attainment_target_ratio{tier}` is each tier's
`attainment_target`, republished on a tier reload.
"""

from __future__ import annotations

import json
import math
import os
from pathlib import Path

import httpx
import pytest
import yaml
from sidecar_harness import TIERS_CONFIG, Stack, metric_value, wait_for
from sidecar_process import ServeProcess

from accelgen.config import load_tiers
from accelgen.server.engine_state import budget_of, preemptions_of, read_engine_stats
from accelgen.vllm.stats import read_stats

BUDGET = "accelgen_engine_budget_tokens"
ATTAINMENT = "accelgen_tier_attainment_target_ratio"


def _metrics(stack: Stack | ServeProcess) -> str:
    return httpx.get(stack.url + "/metrics", timeout=5).text


def _budget_series(text: str) -> dict[str, float]:
    """{stat: value} of every budget sample (whatever its other labels)."""
    out: dict[str, float] = {}
    for line in text.splitlines():
        if line.startswith(BUDGET + "{"):
            head, _, value = line.rpartition(" ")
            stat = head.split('stat="', 1)[1].split('"', 1)[0]
            out[stat] = float(value)
    return out


def _write_atomically(path: Path, snapshot: object) -> None:
    """As the engine writes it: temp file + rename (a reader never sees half a file)."""
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(snapshot))
    os.replace(tmp, path)


def _complete(url: str, prompt_tokens: int, max_tokens: int) -> None:
    body = {"model": "accelgen-sim", "prompt": [7] * prompt_tokens, "max_tokens": max_tokens}
    resp = httpx.post(url + "/v1/completions", json=body, timeout=30)
    assert resp.status_code == 200, resp.text
    assert resp.json()["usage"]["completion_tokens"] == max_tokens


def test_sim_engine_budget_per_step_exact(tmp_path: Path) -> None:
    # One request alone in the sim engine: a prompt of 100 tokens (token ids: counted
    # exactly) in one step, then one decode per step; then a 200-token prompt, 1 token.
    stats = str(tmp_path / "engine-stats.json")
    stack = Stack(pool="p1", sim_stats=stats, engine_stats=stats).start()
    try:
        # Idle from the start: the file is there, with no step yet (only last = 0).
        assert wait_for(lambda: _budget_series(_metrics(stack)) == {"last": 0.0}, 5), _metrics(stack)
        _complete(stack.url, 100, 5)  # steps: 100, 1, 1, 1, 1
        want = {"last": 1.0, "median": 1.0, "min": 1.0, "max": 100.0}
        assert wait_for(lambda: _budget_series(_metrics(stack)) == want, 5), _budget_series(_metrics(stack))
        _complete(stack.url, 200, 1)  # one more step: 200
        want = {"last": 200.0, "median": 1.0, "min": 1.0, "max": 200.0}
        assert wait_for(lambda: _budget_series(_metrics(stack)) == want, 5), _budget_series(_metrics(stack))
        text = _metrics(stack)
        assert f'{BUDGET}{{pool="p1",stat="max"}} 200.0' in text
        assert "# TYPE accelgen_engine_budget_tokens gauge" in text
        # The file is the side channel's format, read by accelgen.vllm's own reader too.
        snapshot = read_stats(Path(stats))
        assert snapshot["policy"] == "sim" and snapshot["num_steps"] == 6
        assert snapshot["budget_tokens"] == {"last": 200, "min": 1, "max": 200, "median": 1.0}
        assert snapshot["preemptions_by_tier"] == {}
        assert metric_value(text, "accelgen_engine_preemptions", pool="p1") == 0
    finally:
        stack.stop()


def test_budget_follows_the_stats_file(tmp_path: Path) -> None:
    # An engine elsewhere (here: the in-process sim, not writing any file) and its stats
    # file on a shared volume, written by hand as accelgen.vllm.stats writes it.
    path = tmp_path / "engine-stats.json"
    stack = Stack(engine_stats=str(path)).start()
    try:
        # No file yet: no budget series at all (not a made-up 0).
        assert BUDGET + "{" not in _metrics(stack)
        _write_atomically(
            path,
            {"budget_tokens": {"last": 512, "median": 256.5, "min": 8, "max": 2048}, "preemptions_by_tier": {"b": 2}},
        )
        want = {"last": 512.0, "median": 256.5, "min": 8.0, "max": 2048.0}
        assert wait_for(lambda: _budget_series(_metrics(stack)) == want, 5), _metrics(stack)
        text = _metrics(stack)
        assert f'{BUDGET}{{stat="median"}} 256.5' in text  # no pool label without --pool
        assert metric_value(text, "accelgen_engine_preemptions") == 2

        # The engine rewrites it: the gauge follows.
        _write_atomically(path, {"budget_tokens": {"last": 96, "median": 128, "min": 4, "max": 4096}})
        want = {"last": 96.0, "median": 128.0, "min": 4.0, "max": 4096.0}
        assert wait_for(lambda: _budget_series(_metrics(stack)) == want, 5), _metrics(stack)

        # An engine before its first step: only `last`; the other series go away.
        _write_atomically(path, {"budget_tokens": {"last": 0, "median": None, "min": None, "max": None}})
        assert wait_for(lambda: _budget_series(_metrics(stack)) == {"last": 0.0}, 5), _metrics(stack)

        # The file gone (engine restarting): the last values seen are kept.
        _write_atomically(path, {"budget_tokens": {"last": 64, "median": 64, "min": 64, "max": 64}})
        want = {"last": 64.0, "median": 64.0, "min": 64.0, "max": 64.0}
        assert wait_for(lambda: _budget_series(_metrics(stack)) == want, 5)
        path.unlink()
        assert not wait_for(lambda: _budget_series(_metrics(stack)) != want, 0.5)
    finally:
        stack.stop()


def test_budget_of_keeps_only_finite_numbers(tmp_path: Path) -> None:
    snapshot = {"budget_tokens": {"last": 3, "median": "7", "min": True, "max": math.inf, "p99": 9.5}}
    assert budget_of(snapshot) == {"last": 3.0, "p99": 9.5}
    assert budget_of({}) == {} and budget_of({"budget_tokens": [1, 2]}) == {}
    assert preemptions_of({"preemptions_by_tier": {"a": 1, "b": 4}}) == 5
    assert preemptions_of({"preemptions_by_tier": {"a": "x"}}) is None
    path = tmp_path / "s.json"
    path.write_text("[1, 2]")
    assert read_engine_stats(str(path)) is None  # not an object
    path.write_text('{"budget_tokens": {"last": 1}}')
    assert read_engine_stats(str(path)) == {"budget_tokens": {"last": 1}}
    assert read_engine_stats(str(tmp_path / "missing.json")) is None


def test_attainment_targets_per_tier_and_on_reload(tmp_path: Path) -> None:
    config = {
        **TIERS_CONFIG,
        "tiers": [
            {**TIERS_CONFIG["tiers"][0], "attainment_target": 0.99},
            TIERS_CONFIG["tiers"][1],  # none given: the core's default, 0.9
            {**TIERS_CONFIG["tiers"][2], "attainment_target": 0.5},
        ],
    }
    tiers = tmp_path / "tiers.yaml"
    tiers.write_text(yaml.safe_dump(config))
    stack = Stack(pool="p2", tiers=load_tiers(tiers), tiers_path=str(tiers)).start()
    try:
        text = _metrics(stack)
        assert "# TYPE accelgen_tier_attainment_target_ratio gauge" in text
        got = {t: metric_value(text, ATTAINMENT, pool="p2", tier=t) for t in ("interactive", "standard", "batch")}
        assert got == {"interactive": 0.99, "standard": 0.9, "batch": 0.5}
        assert f'{ATTAINMENT}{{pool="p2",tier="standard"}} 0.9' in text

        # A reload (the file changed): new targets, a new tier, a removed tier's series gone.
        config["tiers"] = [
            {**TIERS_CONFIG["tiers"][0], "attainment_target": 0.95},
            TIERS_CONFIG["tiers"][1],
            {"name": "gold", "ttft_ms": 300, "tbt_ms": 50, "attainment_target": 0.999},
        ]
        tiers.write_text(yaml.safe_dump(config))
        assert wait_for(lambda: 'tier="gold"' in _metrics(stack), 5)
        text = _metrics(stack)
        assert metric_value(text, ATTAINMENT, pool="p2", tier="interactive") == 0.95
        assert metric_value(text, ATTAINMENT, pool="p2", tier="standard") == 0.9
        assert metric_value(text, ATTAINMENT, pool="p2", tier="gold") == 0.999
        assert f'{ATTAINMENT}{{pool="p2",tier="batch"}}' not in text
    finally:
        stack.stop()


@pytest.mark.parametrize("own_file", [False, True])
def test_serve_engine_sim_exports_budget_and_targets(tmp_path: Path, own_file: bool) -> None:
    # The real CLI, as the dashboard demo runs it: `accelgen serve --engine sim --pool demo`.
    stats = tmp_path / "stats" / "engine-stats.json"
    flags = ("--pool", "demo", *(("--engine-stats", str(stats)) if own_file else ()))
    server = ServeProcess(tmp_path, *flags)
    try:
        _complete(server.url, 64, 3)  # steps: 64, 1, 1
        want = {"last": 1.0, "median": 1.0, "min": 1.0, "max": 64.0}
        assert wait_for(lambda: _budget_series(_metrics(server)) == want, 5), _metrics(server)
        text = _metrics(server)
        assert f'{BUDGET}{{pool="demo",stat="last"}} 1.0' in text
        assert metric_value(text, ATTAINMENT, pool="demo", tier="interactive") == 0.9
    finally:
        server.stop()
    if own_file:  # the given file is the sidecar's to read, not to delete
        assert read_stats(stats)["budget_tokens"]["max"] == 64
    assert "Traceback" not in server.output
