"""The wire formats: each writer's output read back by its reader, and what a reader refuses."""

from __future__ import annotations

import importlib
import json
from pathlib import Path

import pytest

from accelgen.core.tiers import SLOTier
from accelgen.server.body import engine_body, parse
from accelgen.wire import (
    ENGINE_STATS_VERSION,
    SCHEDULER_CLS,
    SLO_VERSION_KEY,
    EngineStatsFile,
    EngineStatsRecorder,
    SloFields,
    WireError,
    read_engine_stats,
    resolve_tier,
    write_engine_stats,
)
from tests.support.factories import make_tiers

TIERS = make_tiers(attainment_target=0.99)
# What the sidecar may send: each tier, and a per-request copy with targets in fractions of a ms.
SENT = [*TIERS, TIERS.get("tight").with_targets(ttft_slo_s=0.2505, tbt_slo_s=0.0201)]


@pytest.mark.parametrize("tier", SENT, ids=["tight", "loose", "batch", "tight-fractional-ms"])
def test_the_sidecars_slo_fields_resolve_to_its_tier_in_the_engine(tier: SLOTier) -> None:
    # A client's own SLO keys are replaced; keys that are not the SLO's pass through.
    client = {"prompt": "hi", "vllm_xargs": {"slo_tier": "loose", "tbt_ms": 1, "mine": 7}}
    xargs = engine_body(parse(client, chat=False), tier, send_priority=False)["vllm_xargs"]
    assert xargs["mine"] == 7 and xargs[SLO_VERSION_KEY] == 1
    resolved = resolve_tier(xargs, TIERS)
    assert resolved.problem is None
    got = resolved.tier
    assert (got.name, got.ttft_slo_s, got.tbt_slo_s, got.deadline_s) == (
        tier.name,
        tier.ttft_slo_s,
        tier.tbt_slo_s,
        tier.deadline_s,
    )


@pytest.mark.parametrize(
    ("xargs", "name", "ttft_s", "tbt_s", "deadline_s", "problem"),
    [
        (None, "tight", 0.5, 0.05, None, None),
        ({}, "tight", 0.5, 0.05, None, None),
        ({"slo_tier": "batch"}, "batch", None, None, 60, None),
        ({"tier": "batch"}, "batch", None, None, 60, None),
        ({"slo_tier": "tight", "tbt_ms": 20}, "tight", 0.5, 0.02, None, None),
        ({"ttft_ms": "800", "tbt_ms": 120}, "tight", 0.8, 0.12, None, None),
        ({"deadline_s": 30}, "tight", None, None, 30, None),
        ({"slo_tier": "batch", "ttft_ms": 100, "tbt_ms": 10}, "batch", 0.1, 0.01, None, None),
        ({"slo_tier": "gold"}, "tight", 0.5, 0.05, None, "unknown tier 'gold'"),
        ({"slo_tier": "gold", "tbt_ms": 9}, "tight", 0.5, 0.05, None, "unknown tier 'gold'"),
        ({"slo_tier": 3}, "tight", 0.5, 0.05, None, "slo_tier must be a string, got 3"),
        ({"slo_tier": "batch", "accelgen_slo_version": 2}, "tight", 0.5, 0.05, None, "accelgen_slo_version 2 is not"),
        ({"tbt_ms": -5}, "tight", 0.5, 0.05, None, "tbt_ms must be a positive number"),
        ({"tbt_ms": True}, "tight", 0.5, 0.05, None, "tbt_ms must be a positive"),
        ({"deadline_s": 9, "tbt_ms": 9}, "tight", 0.5, 0.05, None, "deadline_s excludes"),
        ({"slo_tier": "batch", "tbt_ms": 10}, "batch", None, None, 60, "offline tier needs both"),
        ("slo_tier=batch", "tight", 0.5, 0.05, None, "vllm_xargs must be an object, got str"),
    ],
)  # fmt: skip
def test_slo_fields_resolve_to_a_tier(xargs, name, ttft_s, tbt_s, deadline_s, problem) -> None:
    resolved = resolve_tier(xargs, TIERS)
    tier = resolved.tier
    assert (tier.name, tier.ttft_slo_s, tier.tbt_slo_s, tier.deadline_s) == (
        name, ttft_s, tbt_s, deadline_s,
    )  # fmt: skip
    if problem is None:
        assert resolved.problem is None
    else:
        assert resolved.problem is not None and problem in resolved.problem


def test_a_resolved_tier_keeps_the_tiers_priority_and_attainment_target() -> None:
    sent = (
        {"slo_tier": "loose", "tbt_ms": 10},
        {"slo_tier": "loose", "deadline_s": 9},
        {"tier": "batch", "ttft_ms": 1, "tbt_ms": 1},
    )
    for xargs, name in zip(sent, ("loose", "loose", "batch"), strict=True):
        tier, base = resolve_tier(xargs, TIERS).tier, TIERS.get(name)
        assert (tier.name, tier.priority, tier.attainment_target) == (name, base.priority, 0.99), xargs
    adopted = resolve_tier({"slo_tier": "gold", "tbt_ms": 10}, TIERS, adopt_unknown=True).tier
    assert (adopted.priority, adopted.attainment_target) == (TIERS.default_tier.priority, 0.99)


@pytest.mark.parametrize(
    ("xargs", "ttft_s", "tbt_s", "deadline_s"),
    [
        ({"slo_tier": "gold"}, 0.5, 0.05, None),  # the default tier's targets under its own name
        ({"slo_tier": "gold", "tbt_ms": 9}, 0.5, 0.009, None),
        ({"slo_tier": "gold", "ttft_ms": 300, "tbt_ms": 30}, 0.3, 0.03, None),
        ({"slo_tier": "gold", "deadline_s": 45}, None, None, 45),
    ],
)
def test_an_unknown_tier_is_adopted_when_asked(xargs, ttft_s, tbt_s, deadline_s) -> None:
    resolved = resolve_tier(xargs, TIERS, adopt_unknown=True)
    tier = resolved.tier
    assert resolved.problem is None
    assert (tier.name, tier.ttft_slo_s, tier.tbt_slo_s, tier.deadline_s) == ("gold", ttft_s, tbt_s, deadline_s)
    assert "gold" not in TIERS  # the engine's tier set is left as it was


def test_the_scheduler_class_is_accelgens_scheduler() -> None:
    # vLLM loads it by import_module + getattr; accelgen.vllm exports it without importing vLLM.
    module, _, name = SCHEDULER_CLS.rpartition(".")
    assert name == "AccelGenScheduler" and name in importlib.import_module(module).__all__


def test_slo_fields_round_trip_and_refusals() -> None:
    fields = SloFields(tier="tight", ttft_ms=100.0, tbt_ms=10.0)
    assert SloFields.from_xargs(fields.to_xargs()) == fields
    assert SloFields.from_xargs({"tier": "batch", "deadline_s": "60"}) == SloFields(tier="batch", deadline_s=60.0)
    assert SloFields.from_xargs({"other": 1}) == SloFields()
    refused = [
        ({SLO_VERSION_KEY: 2}, "accelgen_slo_version 2 is not the version 1"),
        ({SLO_VERSION_KEY: True}, "accelgen_slo_version True"),
        ({"accelgen_tier": ["chat"]}, "accelgen_tier must be a string"),
        ({"ttft_ms": 0}, "ttft_ms must be a positive number, got 0"),
        ({"tbt_ms": "fast"}, "tbt_ms must be a positive number"),
        ({"deadline_s": float("nan")}, "deadline_s must be a positive number"),
        ({"deadline_s": 5, "ttft_ms": 5}, "deadline_s excludes"),
    ]
    for xargs, message in refused:
        with pytest.raises(WireError, match=message):
            SloFields.from_xargs(xargs)


def _recorded() -> EngineStatsRecorder:
    recorder = EngineStatsRecorder(policy="accelgen")
    recorder.num_steps = 3
    recorder.budget_tokens.extend([10, 30, 20])
    recorder.last_budget_tokens = 20
    recorder.planner_s.extend([0.001, 0.003])
    recorder.record_timing(predicted_s=0.011, measured_s=0.010)
    recorder.requests_by_tier["chat"] += 2
    recorder.preemptions_by_tier["batch"] += 1
    recorder.calibration = {"slowdown": 1.1, "regions": {}}
    return recorder


def test_engine_stats_file_round_trip(tmp_path: Path) -> None:
    snapshot = _recorded().snapshot()
    path = tmp_path / "deep" / "engine-stats.json"
    write_engine_stats(path, snapshot)
    assert read_engine_stats(path) == snapshot
    assert oct(path.stat().st_mode & 0o777) == "0o644"  # readable by a sidecar of another user
    assert list(path.parent.iterdir()) == [path]  # no temp file left behind
    assert snapshot.budget_tokens.max == 30 and snapshot.budget_tokens.median == 20
    assert snapshot.planner_s.p99 == pytest.approx(0.00298) and snapshot.planner_s.num == 2
    assert snapshot.num_preemptions == 1
    doc = json.loads(path.read_text())
    assert doc["version"] == ENGINE_STATS_VERSION and doc["requests_by_tier"] == {"chat": 2}
    # A writer may add a field within a version: readers ignore it.
    assert EngineStatsFile.from_json({**doc, "num_new_things": 4}) == snapshot


def test_engine_stats_reader_names_what_is_wrong(tmp_path: Path) -> None:
    doc = _recorded().snapshot().to_json()
    no_steps = {k: v for k, v in doc.items() if k != "num_steps"}
    no_version = {k: v for k, v in doc.items() if k != "version"}
    refused = [
        ({**doc, "version": ENGINE_STATS_VERSION + 1}, r"version 2 \(newer than this reader\)"),
        ({**doc, "version": "1"}, "version '1'"),
        (no_version, "missing field 'version'"),
        (no_steps, "missing field 'num_steps'"),
        ({**doc, "num_steps": 2.5}, "engine stats.num_steps must be an integer, got 2.5"),
        ({**doc, "planner_s": {**doc["planner_s"], "num": None}}, "planner_s.num must be an integer"),
        ({**doc, "policy": None}, "policy must be a str"),
        ([doc], "must be a JSON object, got list"),
    ]
    for bad, message in refused:
        with pytest.raises(WireError, match=message):
            EngineStatsFile.from_json(bad)
    path = tmp_path / "s.json"
    path.write_text(json.dumps(doc)[:50])
    with pytest.raises(WireError, match="not JSON"):
        read_engine_stats(path)
    with pytest.raises(OSError):
        read_engine_stats(tmp_path / "missing.json")
