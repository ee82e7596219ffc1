"""The in-engine token budget, latency-model error and the tiers' attainment targets on /metrics.

`accelgen_engine_budget_tokens{stat}` comes from the in-engine stats file (the format
`accelgen.vllm.stats` writes; the sim engine writes it too, with its policy's budget of
each step). So do the latency model's gauges (`accelgen_engine_step_time_*`,
`accelgen_engine_latency_model_*`), from the file's `calibration` (what
`accelgen.core.calibration.Calibrator.report()` says).
`accelgen_tier_attainment_target_ratio{tier}` is each tier's `attainment_target`,
republished on a tier reload.
"""

from __future__ import annotations

import json
import math
import os
import random
from pathlib import Path

import httpx
import pytest
import yaml

from accelgen.config import load_tiers
from accelgen.core.calibration import Calibrator
from accelgen.core.latency import BatchShape, FittedLatencyModel
from accelgen.server.engine_state import (
    LatencyModelReport,
    budget_of,
    latency_model_of,
    metric_samples,
    preemptions_of,
    read_engine_stats,
)
from accelgen.sim.realtime import SimEngineConfig
from accelgen.vllm.stats import EngineStats
from accelgen.wire import BudgetTokens, Durations, EngineStatsFile, WireError
from accelgen.wire import read_engine_stats as read_stats_file
from tests.support.factories import make_engine_stats
from tests.support.serve_process import ServeProcess
from tests.support.sidecar import TIERS_CONFIG, Stack, metric_value, wait_for

BUDGET = "accelgen_engine_budget_tokens"
ATTAINMENT = "accelgen_tier_attainment_target_ratio"
RATIO = "accelgen_engine_step_time_ratio"
ALLOWANCE = "accelgen_engine_step_time_allowance_seconds"
DIAGNOSIS = "accelgen_engine_latency_model_diagnosis"
LATENCY_MODEL = (
    RATIO,
    ALLOWANCE,
    "accelgen_engine_latency_model_slowdown",
    "accelgen_engine_latency_model_in_use_ratio_p99",
    DIAGNOSIS,
    "accelgen_engine_latency_model_overruns",
)


def _metrics(stack: Stack | ServeProcess) -> str:
    return httpx.get(stack.url + "/metrics", timeout=5).text


def _budget_series(text: str) -> dict[str, float]:
    """{stat: value} of every budget sample (whatever its other labels)."""
    return {s.labels["stat"]: s.value for s in metric_samples(text, (BUDGET,))}


def _latency_lines(text: str) -> list[str]:
    """Every sample line of the latency-model families, as exported."""
    return [line for line in text.splitlines() if line.startswith(LATENCY_MODEL) and not line.startswith("#")]


def _write_atomically(path: Path, snapshot: EngineStatsFile | dict[str, object]) -> None:
    """As the engine writes it: temp file + rename (a reader never sees half a file)."""
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(snapshot.to_json() if isinstance(snapshot, EngineStatsFile) else snapshot))
    os.replace(tmp, path)


def _complete(url: str, prompt_tokens: int, max_tokens: int) -> None:
    body = {"model": "accelgen-sim", "prompt": [7] * prompt_tokens, "max_tokens": max_tokens}
    resp = httpx.post(url + "/v1/completions", json=body, timeout=30)
    assert resp.status_code == 200, resp.text
    assert resp.json()["usage"]["completion_tokens"] == max_tokens


def test_sim_engine_budget_per_step_exact(tmp_path: Path) -> None:
    # One request alone in the sim engine under a fixed-budget policy: a prompt of 100
    # tokens (token ids: counted exactly) in one step, then one decode per step; then a
    # 200-token prompt, 1 token. Every step's budget is the policy's, the engine's cap.
    stats = str(tmp_path / "engine-stats.json")
    sim = SimEngineConfig(policy="vllm-fcfs")
    cap = float(sim.max_num_batched_tokens)
    stack = Stack(pool="p1", sim=sim, sim_stats=stats, engine_stats=stats).start()
    try:
        # Idle from the start: the file is there, with no step yet (only last = 0).
        assert wait_for(lambda: _budget_series(_metrics(stack)) == {"last": 0.0}, 5), _metrics(stack)
        _complete(stack.url, 100, 5)  # steps: 100, 1, 1, 1, 1
        want = {"last": cap, "median": cap, "min": cap, "max": cap}
        assert wait_for(lambda: _budget_series(_metrics(stack)) == want, 5), _budget_series(_metrics(stack))
        _complete(stack.url, 200, 1)  # one more step: 200
        assert wait_for(lambda: read_stats_file(Path(stats)).num_steps == 6, 5), read_stats_file(Path(stats))
        text = _metrics(stack)
        assert f'{BUDGET}{{pool="p1",stat="max"}} {cap}' in text
        assert "# TYPE accelgen_engine_budget_tokens gauge" in text
        # The file is the wire format, read by its one reader.
        snapshot = read_stats_file(Path(stats))
        assert snapshot.policy == "vllm-fcfs" and snapshot.num_steps == 6
        assert snapshot.budget_tokens == BudgetTokens(last=int(cap), min=int(cap), max=int(cap), median=cap)
        assert snapshot.planner_s.num == 6 and snapshot.num_empty_plans == 0
        assert snapshot.preemptions_by_tier == {}
        assert metric_value(text, "accelgen_engine_preemptions", pool="p1") == 0
    finally:
        stack.stop()


def test_sim_engine_runs_the_accelgen_planner(tmp_path: Path) -> None:
    # The default sim engine plans with AccelGen: its budget per step is the planner's
    # (a decode step schedules one token, the budget says what the step could hold) and
    # every step's planner time is in the file.
    stats = str(tmp_path / "engine-stats.json")
    stack = Stack(sim_stats=stats, engine_stats=stats).start()
    try:
        _complete(stack.url, 100, 5)
        assert wait_for(lambda: read_stats_file(Path(stats)).num_steps == 5, 5), read_stats_file(Path(stats))
        snapshot = read_stats_file(Path(stats))
        assert snapshot.policy == "accelgen"
        budget = snapshot.budget_tokens
        assert budget.min is not None and budget.max is not None
        assert 1 < budget.min <= budget.max <= SimEngineConfig().max_num_batched_tokens, budget
        assert snapshot.planner_s.num == 5 and snapshot.planner_s.median is not None
        assert 0 < snapshot.planner_s.median < 1.0  # a generous bound: the planner ran, it did not hang
        assert snapshot.requests_by_tier == {"standard": 1}
        assert wait_for(lambda: _budget_series(_metrics(stack)).get("last") == budget.last, 5), _metrics(stack)
    finally:
        stack.stop()


def test_budget_follows_the_stats_file(tmp_path: Path) -> None:
    # An engine elsewhere (here: the in-process sim, not writing any file) and its stats
    # file on a shared volume, written in the wire format.
    path = tmp_path / "engine-stats.json"
    stack = Stack(engine_stats=str(path)).start()
    try:
        # No file yet: no budget series at all (not a made-up 0).
        assert BUDGET + "{" not in _metrics(stack)
        assert "accelgen_engine_planner_seconds{" not in _metrics(stack)
        _write_atomically(
            path,
            make_engine_stats(
                budget_tokens=BudgetTokens(last=512, median=256.5, min=8, max=2048),
                planner_s=Durations(median=0.0004, p99=0.002, mean=0.0005, num=10),
                preemptions_by_tier={"b": 2},
            ),
        )
        want = {"last": 512.0, "median": 256.5, "min": 8.0, "max": 2048.0}
        assert wait_for(lambda: _budget_series(_metrics(stack)) == want, 5), _metrics(stack)
        text = _metrics(stack)
        assert f'{BUDGET}{{stat="median"}} 256.5' in text  # no pool label without --pool
        assert metric_value(text, "accelgen_engine_preemptions") == 2
        assert 'accelgen_engine_planner_seconds{stat="p99"} 0.002' in text

        # The engine rewrites it: the gauge follows.
        _write_atomically(path, make_engine_stats(budget_tokens=BudgetTokens(last=96, median=128, min=4, max=4096)))
        want = {"last": 96.0, "median": 128.0, "min": 4.0, "max": 4096.0}
        assert wait_for(lambda: _budget_series(_metrics(stack)) == want, 5), _metrics(stack)

        # An engine before its first step: only `last`; the other series go away.
        _write_atomically(path, make_engine_stats(budget_tokens=BudgetTokens(last=0, median=None, min=None, max=None)))
        assert wait_for(lambda: _budget_series(_metrics(stack)) == {"last": 0.0}, 5), _metrics(stack)

        # The file gone (engine restarting): the last values seen are kept.
        _write_atomically(path, make_engine_stats(budget_tokens=BudgetTokens(last=64, median=64, min=64, max=64)))
        want = {"last": 64.0, "median": 64.0, "min": 64.0, "max": 64.0}
        assert wait_for(lambda: _budget_series(_metrics(stack)) == want, 5)
        path.unlink()
        assert not wait_for(lambda: _budget_series(_metrics(stack)) != want, 0.5)
    finally:
        stack.stop()


def test_budget_of_keeps_only_finite_numbers(tmp_path: Path) -> None:
    snapshot = make_engine_stats(budget_tokens=BudgetTokens(last=3, median=math.nan, min=None, max=math.inf))
    assert budget_of(snapshot) == {"last": 3.0}
    assert budget_of(make_engine_stats()) == {"last": 0.0}  # before the first step
    assert preemptions_of(make_engine_stats(preemptions_by_tier={"a": 1, "b": 4})) == 5
    # What is not the format never reaches these: the reader refuses it, naming the field.
    doc = make_engine_stats().to_json()
    for key, value in (("median", "7"), ("min", True), ("last", None)):
        with pytest.raises(WireError, match=f"budget_tokens.{key}"):
            EngineStatsFile.from_json({**doc, "budget_tokens": {**doc["budget_tokens"], key: value}})
    with pytest.raises(WireError, match="budget_tokens must be an object"):
        EngineStatsFile.from_json({**doc, "budget_tokens": [1, 2]})
    with pytest.raises(WireError, match=r"preemptions_by_tier\.a must be an integer"):
        EngineStatsFile.from_json({**doc, "preemptions_by_tier": {"a": "x"}})
    path = tmp_path / "s.json"
    path.write_text("[1, 2]")
    assert read_engine_stats(str(path)) is None  # not an object
    path.write_text('{"budget_tokens": {"last": 1}}')
    assert read_engine_stats(str(path)) is None  # no version: not this format
    path.write_text(json.dumps({**doc, "budget_tokens": {"last": 1, "min": None, "max": None, "median": None}}))
    assert read_engine_stats(str(path)) == make_engine_stats(
        budget_tokens=BudgetTokens(last=1, min=None, max=None, median=None),
        pid=doc["pid"],
        started_at_s=doc["started_at_s"],
        updated_at_s=doc["updated_at_s"],
    )
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
    cap = SimEngineConfig().max_num_batched_tokens
    server = ServeProcess(tmp_path, *flags)
    try:
        _complete(server.url, 64, 3)  # steps: 64, 1, 1, each with the AccelGen planner's budget

        def planned() -> bool:  # every series there, each the planner's (a decode schedules 1)
            series = _budget_series(_metrics(server))
            return set(series) == {"last", "median", "min", "max"} and 1 < series["min"] <= series["max"] <= cap

        assert wait_for(planned, 5), _metrics(server)
        text = _metrics(server)
        budget = _budget_series(text)
        assert f'{BUDGET}{{pool="demo",stat="last"}} {budget["last"]}' in text
        assert metric_value(text, ATTAINMENT, pool="demo", tier="interactive") == 0.9
    finally:
        server.stop()
    if own_file:  # the given file is the sidecar's to read, not to delete
        snapshot = read_stats_file(stats)
        assert snapshot.policy == "accelgen" and snapshot.num_steps == 3 and snapshot.planner_s.num == 3
        assert snapshot.budget_tokens.max == budget["max"]
    assert "Traceback" not in server.output


def _model_off_report() -> dict[str, object]:
    """A real ``Calibrator.report()``: a fit learnt on short steps, then chunks deep into
    long prompts that take 1.8 x what it predicts (the model is off in mixed-long)."""
    model = FittedLatencyModel(coefficients=(0.004, 2.0e-4, 1.0e-5, 1.0e-8, 2.0e-7))
    cal = Calibrator(prior=model, min_samples=32, refit_every=10_000, skip_first=0)
    rng = random.Random(5)

    def decodes(n: int, context_tokens: int) -> BatchShape:
        shape = BatchShape()
        for _ in range(n):
            shape = shape.plus_decode(context_tokens=context_tokens)
        return shape

    for i in range(200):
        shape = decodes(rng.randrange(1, 32), rng.randrange(16, 512))
        if i % 2:
            shape = shape.plus_prefill(rng.randrange(16, 512), context_tokens=0)
        cal.add(shape, model.predict_s(shape) * rng.uniform(0.98, 1.02))
    assert cal.refit()
    for _ in range(40):
        shape = decodes(2, 200).plus_prefill(rng.randrange(64, 512), context_tokens=rng.randrange(3000, 6000))
        cal.add(shape, model.predict_s(shape) * 1.8)
    return cal.report()


def test_latency_model_gauges_from_the_calibrators_report(tmp_path: Path) -> None:
    # The stats file as the engine writes it: EngineStats with the Calibrator's report.
    path = tmp_path / "engine-stats.json"
    stack = Stack(pool="p3", engine_stats=str(path)).start()
    try:
        text = _metrics(stack)
        assert _latency_lines(text) == []  # no file yet: no series, not made-up zeros
        assert "# TYPE accelgen_engine_step_time_ratio gauge" in text
        report = _model_off_report()
        assert report["diagnosis"] == "model-off" and report["model_off_regions"] == ["mixed-long"]
        stats = EngineStats(policy="accelgen", path=path)
        stats.calibration = report
        stats.maybe_write(force=True)
        assert wait_for(lambda: _latency_lines(_metrics(stack)) != [], 5)
        text = _metrics(stack)
        regions = report["regions"]
        assert isinstance(regions, dict) and set(regions) == {"decode-short", "mixed-short", "mixed-long"}
        for region, entry in regions.items():
            for quantile, key in (("0.5", "ratio_p50"), ("0.9", "ratio_p90"), ("0.99", "ratio_p99")):
                assert metric_value(text, RATIO, pool="p3", region=region, quantile=quantile) == entry[key]
            assert metric_value(text, ALLOWANCE, pool="p3", region=region) == entry["offset_s"]
        assert regions["mixed-long"]["ratio_p99"] > 1.5 > regions["decode-short"]["ratio_p99"]
        for name, key in (
            ("slowdown", "slowdown"),
            ("in_use_ratio_p99", "in_use_ratio_p99"),
            ("overruns", "num_overruns"),
        ):
            assert metric_value(text, f"accelgen_engine_latency_model_{name}", pool="p3") == report[key]
        states = {
            d: metric_value(text, DIAGNOSIS, pool="p3", diagnosis=d) for d in ("ok", "machine-slower", "model-off")
        }
        assert states == {"ok": 0.0, "machine-slower": 0.0, "model-off": 1.0}
        # Regions without steps have no series; every label set is known in advance.
        lines = _latency_lines(text)
        assert not any('region="decode-long"' in line or "prefill" in line for line in lines)
        assert len(lines) == 3 * 3 + 3 + 3 + 3, lines  # ratios, allowances, diagnosis, the three scalars
        # Admission (and /pool/state) predict with the engine's own fit from now on.
        fit = FittedLatencyModel.from_dict(report["fit"])
        assert stack.sidecar.engine.state.latency_model.fit == fit
        assert stack.sidecar.admission.speed.model == fit and stack.sidecar.admission.rate.speed.model == fit
    finally:
        stack.stop()


def test_latency_model_gauges_follow_the_file_and_survive_garbage(tmp_path: Path) -> None:
    # An engine elsewhere, its stats file written by hand; no --pool: no pool label.
    path = tmp_path / "engine-stats.json"
    stack = Stack(engine_stats=str(path)).start()
    calibration = {
        "slowdown": 1.03,
        "quantile": 0.95,
        "diagnosis": "ok",
        "model_off_regions": [],
        "in_use_ratio_p99": 1.12,
        "num_overruns": 4,
        "regions": {
            "decode-short": {
                "num_steps": 812,
                "ratio_p50": 0.99,
                "ratio_p90": 1.04,
                "ratio_p99": 1.11,
                "offset_s": 0.004,
            }
        },
    }
    try:
        _write_atomically(
            path, make_engine_stats(budget_tokens=BudgetTokens(last=8, min=8, max=8, median=8), calibration=calibration)
        )
        assert wait_for(lambda: _latency_lines(_metrics(stack)) != [], 5), _metrics(stack)
        assert _latency_lines(_metrics(stack)) == [
            f'{RATIO}{{quantile="0.5",region="decode-short"}} 0.99',
            f'{RATIO}{{quantile="0.9",region="decode-short"}} 1.04',
            f'{RATIO}{{quantile="0.99",region="decode-short"}} 1.11',
            f'{ALLOWANCE}{{region="decode-short"}} 0.004',
            "accelgen_engine_latency_model_slowdown 1.03",
            "accelgen_engine_latency_model_in_use_ratio_p99 1.12",
            f'{DIAGNOSIS}{{diagnosis="ok"}} 1.0',
            f'{DIAGNOSIS}{{diagnosis="machine-slower"}} 0.0',
            f'{DIAGNOSIS}{{diagnosis="model-off"}} 0.0',
            "accelgen_engine_latency_model_overruns 4.0",
        ]

        # The engine's diagnosis changes: the state set follows.
        _write_atomically(
            path, make_engine_stats(calibration={**calibration, "diagnosis": "machine-slower", "num_overruns": 9})
        )
        assert wait_for(lambda: metric_value(_metrics(stack), DIAGNOSIS, diagnosis="machine-slower") == 1, 5)
        text = _metrics(stack)
        assert metric_value(text, DIAGNOSIS, diagnosis="ok") == 0
        assert metric_value(text, "accelgen_engine_latency_model_overruns") == 9

        # Nulls and garbage (NaN and Infinity are what json.dumps writes for nan/inf):
        # what is a finite number >= 0, a known region and a known diagnosis is kept.
        garbage = (
            '{"slowdown": NaN, "in_use_ratio_p99": null, "num_overruns": "4",'
            ' "diagnosis": "on-fire", "regions": {"decode-long": {"ratio_p50": Infinity, "ratio_p90": 1.5,'
            ' "ratio_p99": true, "offset_s": -1}, "tpu-short": {"ratio_p50": 1.0, "offset_s": 1.0},'
            ' "mixed-long": null, "prefill-long": {"offset_s": 2.5}}}'
        )
        _write_atomically(path, make_engine_stats(calibration=json.loads(garbage)))
        want = [f'{RATIO}{{quantile="0.9",region="decode-long"}} 1.5', f'{ALLOWANCE}{{region="prefill-long"}} 2.5']
        assert wait_for(lambda: _latency_lines(_metrics(stack)) == want, 5), _latency_lines(_metrics(stack))
        engine_lines = [line for line in _metrics(stack).splitlines() if line.startswith("accelgen_engine")]
        assert not any(word in line for line in engine_lines for word in ("NaN", "Inf"))

        # An engine from before the calibration report: the series go away.
        _write_atomically(path, make_engine_stats())
        assert wait_for(lambda: _latency_lines(_metrics(stack)) == [], 5), _metrics(stack)

        # Half a file (not written atomically) or none at all: the last values are kept.
        _write_atomically(path, make_engine_stats(calibration=calibration))
        assert wait_for(lambda: len(_latency_lines(_metrics(stack))) == 10, 5)
        kept = _latency_lines(_metrics(stack))
        path.write_text(json.dumps(make_engine_stats(calibration=calibration).to_json())[:40])
        assert not wait_for(lambda: _latency_lines(_metrics(stack)) != kept, 0.5)
        path.unlink()
        assert not wait_for(lambda: _latency_lines(_metrics(stack)) != kept, 0.5)
    finally:
        stack.stop()


def test_latency_model_of_keeps_only_known_finite_values() -> None:
    empty = LatencyModelReport()
    assert latency_model_of(make_engine_stats()) == empty  # no calibrator (or no fit yet)
    assert latency_model_of(make_engine_stats(calibration={"slowdown": None})) == empty
    with pytest.raises(WireError, match="calibration must be an object"):
        EngineStatsFile.from_json({**make_engine_stats().to_json(), "calibration": [1, 2]})
    assert latency_model_of(make_engine_stats(calibration={"regions": ["decode-short"], "diagnosis": ["ok"]})) == empty
    got = latency_model_of(
        make_engine_stats(
            calibration={
                "slowdown": 1,
                "in_use_ratio_p99": False,
                "num_overruns": -3,
                "diagnosis": "model-off",
                "regions": {
                    "mixed-short": {"ratio_p50": 0.0, "ratio_p90": "1.2", "ratio_p99": math.nan, "offset_s": None},
                    "decode-short": {"ratio_p99": 1e309, "offset_s": 1.2},  # 1e309: inf
                },
            }
        )
    )
    # A fit that does not parse is no fit: the sidecar keeps the model it has.
    assert latency_model_of(make_engine_stats(calibration={"fit": {"coefficients": {"a": -1}}})).fit is None
    # Regions in REGIONS order, whatever order the file has them in.
    assert got == LatencyModelReport(
        slowdown=1.0,
        diagnosis="model-off",
        ratios={"mixed-short": {"0.5": 0.0}},
        allowances_s={"decode-short": 1.2},
    )
