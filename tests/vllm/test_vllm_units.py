"""The engine-free parts of accelgen.vllm: SLO metadata, settings, calibration, stats, model."""

from __future__ import annotations

import json
import random
from pathlib import Path

import pytest

from accelgen.core.errors import ConfigError
from accelgen.core.latency import BatchShape, FittedLatencyModel, max_prefill_tokens_within
from accelgen.core.tiers import parse_tiers
from accelgen.vllm.calibration import Calibrator, load_fit, save_fit
from accelgen.vllm.settings import DEFAULT_TIERS, settings_from_env
from accelgen.vllm.slo import resolve_slo
from accelgen.vllm.stats import EngineStats, read_step_log
from accelgen.wire import read_engine_stats

TIERS = parse_tiers(
    {
        "default_tier": "chat",
        "tiers": [
            {"name": "chat", "ttft_ms": 500, "tbt_ms": 50},
            {"name": "batch", "deadline_s": 600},
        ],
    }
)


@pytest.mark.parametrize(
    ("xargs", "name", "ttft_s", "tbt_s", "deadline_s", "problem"),
    [
        (None, "chat", 0.5, 0.05, None, None),
        ({}, "chat", 0.5, 0.05, None, None),
        ({"slo_tier": "batch"}, "batch", None, None, 600, None),
        ({"tier": "batch"}, "batch", None, None, 600, None),
        ({"slo_tier": "chat", "tbt_ms": 20}, "chat", 0.5, 0.02, None, None),
        ({"ttft_ms": "800", "tbt_ms": 120}, "chat", 0.8, 0.12, None, None),
        ({"deadline_s": 30}, "chat", None, None, 30, None),
        ({"slo_tier": "batch", "ttft_ms": 100, "tbt_ms": 10}, "batch", 0.1, 0.01, None, None),
        ({"slo_tier": "gold"}, "chat", 0.5, 0.05, None, "unknown tier 'gold'"),
        ({"slo_tier": 3}, "chat", 0.5, 0.05, None, "unknown tier 3"),
        ({"tbt_ms": -5}, "chat", 0.5, 0.05, None, "tbt_ms must be a positive number"),
        ({"tbt_ms": True}, "chat", 0.5, 0.05, None, "tbt_ms must be a positive"),
        ({"deadline_s": 9, "tbt_ms": 9}, "chat", 0.5, 0.05, None, "deadline_s excludes"),
        ({"slo_tier": "batch", "tbt_ms": 10}, "batch", None, None, 600, "offline tier needs both"),
    ],
)  # fmt: skip
def test_slo_metadata_resolves_to_a_tier(xargs, name, ttft_s, tbt_s, deadline_s, problem) -> None:
    resolved = resolve_slo(xargs, TIERS)
    tier = resolved.tier
    assert (tier.name, tier.ttft_slo_s, tier.tbt_slo_s, tier.deadline_s) == (
        name, ttft_s, tbt_s, deadline_s,
    )  # fmt: skip
    if problem is None:
        assert resolved.problem is None
    else:
        assert resolved.problem is not None and problem in resolved.problem


def test_settings_from_environment(tmp_path: Path) -> None:
    assert settings_from_env({}).tiers == DEFAULT_TIERS
    assert settings_from_env({}).policy == "accelgen"
    tiers = tmp_path / "tiers.yaml"
    tiers.write_text(json.dumps(TIERS.to_config()))
    config = tmp_path / "scheduler.yaml"
    config.write_text(
        "policy: sarathi\ngamma_s: 0.5\nsafety_margin_s: 0.002\nlong_prompt_tokens: 1000\n"
        "stats_file: /run/s.json\nmin_fit_samples: 8\n"
    )
    s = settings_from_env(
        {
            "ACCELGEN_TIERS": str(tiers),
            "ACCELGEN_SCHEDULER_CONFIG": str(config),
            "ACCELGEN_CALIBRATION_FILE": str(tmp_path / "fit.json"),
        }
    )
    assert s.tiers == TIERS
    assert s.policy == "sarathi"
    assert (s.policy_config.gamma_s, s.policy_config.long_prompt_tokens) == (0.5, 1000)
    assert s.policy_config.safety_margin_s == 0.002
    assert s.stats_file == Path("/run/s.json")
    assert s.calibration_file == tmp_path / "fit.json"
    assert s.min_fit_samples == 8
    env = {"ACCELGEN_SCHEDULER_CONFIG": str(config), "ACCELGEN_POLICY": "edf"}
    assert settings_from_env(env).policy == "edf"


@pytest.mark.parametrize(
    ("text", "field"), [("gama_s: 0.5\n", "gama_s"), ("slowdown_quantile: 1.5\n", "slowdown_quantile")]
)
def test_bad_scheduler_config_names_file_and_field(tmp_path: Path, text: str, field: str) -> None:
    config = tmp_path / "scheduler.yaml"
    config.write_text(text)
    with pytest.raises(ConfigError) as err:
        settings_from_env({"ACCELGEN_SCHEDULER_CONFIG": str(config)})
    assert str(config) in str(err.value) and field in str(err.value)


TRUE_MODEL = FittedLatencyModel(coefficients=(0.004, 2.0e-4, 1.0e-5, 1.0e-8, 2.0e-7))


def _shapes(rng: random.Random, n: int) -> list[BatchShape]:
    shapes = []
    for _ in range(n):
        shape = BatchShape()
        for _ in range(rng.randrange(0, 20)):
            shape = shape.plus_decode(context_tokens=rng.randrange(10, 3000))
        if rng.random() < 0.5:
            shape = shape.plus_prefill(rng.randrange(16, 2048), context_tokens=rng.randrange(0, 3000))
        if shape.num_tokens:
            shapes.append(shape)
    return shapes


def test_calibrator_fits_persists_and_restarts_calibrated(tmp_path: Path) -> None:
    rng = random.Random(3)
    path = tmp_path / "fit.json"
    prior = FittedLatencyModel(coefficients=(0.001, 1e-5, 0.0, 0.0, 0.0), name="prior")
    cal = Calibrator(prior=prior, path=path, min_samples=32, refit_every=32, skip_first=2)
    changed = []
    for shape in _shapes(rng, 200):
        noise = rng.uniform(0.95, 1.05)
        changed.append(cal.add(shape, TRUE_MODEL.predict_s(shape) * noise))
    assert not any(changed[:33]) and any(changed)  # the prior until 32 samples
    report = cal.report()
    assert report["model"] == "fitted-online"
    assert report["fit_error"] < 0.05
    assert report["online_error"] < 0.5  # includes the prior's predictions
    again = Calibrator(prior=prior, path=path)
    assert again.loaded_from_file and again.model.name == "fitted-online"
    probe = BatchShape(num_decodes=16, decode_kv_tokens=16_000).plus_prefill(512, context_tokens=0)
    assert again.model.predict_s(probe) == pytest.approx(TRUE_MODEL.predict_s(probe), rel=0.1)
    assert cal.fitted is not None and load_fit(path).coefficients == cal.fitted.coefficients


def test_calibrator_ignores_outliers_from_a_busy_machine(tmp_path: Path) -> None:
    rng = random.Random(5)
    cal = Calibrator(prior=TRUE_MODEL, min_samples=32, refit_every=1000, skip_first=0)
    for shape in _shapes(rng, 300):
        slow = 10.0 if rng.random() < 0.05 else 1.0  # another process had the cores
        cal.add(shape, TRUE_MODEL.predict_s(shape) * slow * rng.uniform(0.97, 1.03))
    assert cal.refit() and cal.fitted is not None
    probe = BatchShape().plus_prefill(1024, context_tokens=0)
    assert cal.fitted.predict_s(probe) == pytest.approx(TRUE_MODEL.predict_s(probe), rel=0.1)
    assert cal.report()["fit_error"] < 0.05
    # The planner still plans for what the machine does: its tail, not only the fit.
    assert cal.model.predict_s(probe) >= cal.fitted.predict_s(probe)


@pytest.mark.parametrize("quantile", [0.95, None])
def test_calibrator_plans_for_a_machine_that_got_slower(tmp_path: Path, quantile: float | None) -> None:
    """Sustained contention scales the model in use (not the saved fit), and it recovers."""
    rng = random.Random(7)
    path = tmp_path / "fit.json"
    cal = Calibrator(prior=TRUE_MODEL, path=path, min_samples=32, refit_every=10_000, slowdown_quantile=quantile)
    probe = BatchShape(num_decodes=8, decode_kv_tokens=4000).plus_prefill(400, context_tokens=0)
    big = [s for s in _shapes(rng, 2000) if TRUE_MODEL.predict_s(s) >= 0.05]

    def feed(shapes: list[BatchShape], slow: float) -> None:
        for shape in shapes:
            cal.add(shape, TRUE_MODEL.predict_s(shape) * slow * rng.uniform(0.97, 1.03))

    feed(big[:100], 1.0)  # quiet: fitted; planned at the machine's own 95th percentile
    assert cal.refit() and cal.slowdown <= 1.05
    assert cal.fitted is not None
    fitted_s = cal.fitted.predict_s(probe)
    # The allowance is the tail of every step size's ±3 % noise, in seconds.
    quiet_s = cal.model.predict_s(probe)
    assert fitted_s <= quiet_s <= 1.15 * fitted_s
    feed(big[100:200], 1.5)  # another job takes a share of the cores
    if quantile is None:
        assert cal.slowdown == 1.0 and cal.model.predict_s(probe) == pytest.approx(fitted_s)
        return
    assert 1.4 <= cal.slowdown <= 1.6
    assert 1.4 * fitted_s <= cal.model.predict_s(probe) <= 1.7 * fitted_s
    report = cal.report()
    assert report["slowdown"] == cal.slowdown and report["diagnosis"] == "machine-slower", report
    assert load_fit(path).coefficients == cal.fitted.coefficients  # the saved fit stays unscaled
    feed(big[200:300], 1.0)  # the other job ends
    assert cal.slowdown <= 1.05 and cal.model.predict_s(probe) <= 1.05 * quiet_s  # back to the quiet plan
    assert cal.report()["diagnosis"] == "ok"


def test_an_overrun_shrinks_the_next_plan_at_once_and_it_recovers() -> None:
    rng = random.Random(11)
    cal = Calibrator(prior=TRUE_MODEL, min_samples=32, refit_every=10_000, skip_first=0)
    shapes = [s for s in _shapes(rng, 3000) if TRUE_MODEL.predict_s(s) >= 0.02]
    for shape in shapes[:200]:
        cal.add(shape, TRUE_MODEL.predict_s(shape) * rng.uniform(0.98, 1.02))
    assert cal.refit()
    head = BatchShape(num_decodes=4, decode_kv_tokens=400)

    def budget() -> int:
        return max_prefill_tokens_within(cal.model, 0.1, base=head, context_tokens=0, cap_tokens=8192)

    before = budget()
    overrun = head.plus_prefill(300, context_tokens=0)
    assert cal.add(overrun, 2.0 * TRUE_MODEL.predict_s(overrun))  # one step took twice its prediction
    assert budget() < 0.6 * before  # the very next plan is smaller
    for shape in shapes[200:400]:
        cal.add(shape, TRUE_MODEL.predict_s(shape) * rng.uniform(0.98, 1.02))
    assert budget() >= 0.95 * before
    assert cal.report()["num_overruns"] >= 1


def test_a_region_the_model_gets_wrong_is_learnt_not_dropped() -> None:
    """Chunks deep into a long prompt cost more than the fit says: that region (not the
    machine) is off, its steps are kept, and the refit with the context terms learns them."""
    rng = random.Random(13)
    truth = FittedLatencyModel(coefficients=(*TRUE_MODEL.coefficients[:5], 0.0, 6e-6, 0.0))
    cal = Calibrator(prior=TRUE_MODEL, min_samples=32, refit_every=10_000, skip_first=0)
    short = [s for s in _shapes(rng, 600) if s.prefill_kv_tokens == 0]
    for shape in short[:150]:
        cal.add(shape, truth.predict_s(shape) * rng.uniform(0.98, 1.02))
    assert cal.refit()
    deep = [
        BatchShape(num_decodes=2, decode_kv_tokens=200).plus_prefill(
            rng.randrange(64, 512), context_tokens=rng.randrange(3000, 6000)
        )
        for _ in range(60)
    ]
    for shape in deep:
        cal.add(shape, truth.predict_s(shape) * rng.uniform(0.98, 1.02))
    diagnosis = cal.report()
    assert diagnosis["diagnosis"] == "model-off" and diagnosis["model_off_regions"] == ["mixed-long"], diagnosis
    assert cal.slowdown <= 1.05  # not the machine: the other regions run as fitted
    # Planned for meanwhile: that region's steps get an allowance of their own, in seconds.
    regions = diagnosis["regions"]
    others = [v["offset_s"] for r, v in regions.items() if r != "mixed-long" and v["window_steps"] >= 16]
    assert others and regions["mixed-long"]["offset_s"] >= 0.015 > max(others), regions
    planned = [cal.model.predict_s(shape) >= truth.predict_s(shape) for shape in deep]
    assert sum(planned) >= 0.8 * len(deep)
    assert cal.refit() and cal.num_outliers == 0  # nothing thrown away
    probe = deep[0]
    assert cal.fitted is not None
    assert cal.fitted.predict_s(probe) == pytest.approx(truth.predict_s(probe), rel=0.05)


def test_load_fit_rejects_other_files(tmp_path: Path) -> None:
    bad = tmp_path / "fit.json"
    bad.write_text('{"latency_model": {"coefficients": {"intercept_s": -1}}}')
    with pytest.raises(ConfigError, match=str(bad)):
        load_fit(bad)
    save_fit(bad, TRUE_MODEL)
    assert load_fit(bad).coefficients == TRUE_MODEL.coefficients


def test_stats_snapshot_and_step_log_round_trip(tmp_path: Path) -> None:
    stats = EngineStats(policy="accelgen", path=tmp_path / "s.json", step_log=tmp_path / "l.jsonl")
    for i in range(5):
        stats.planner_s.append(0.0001 * (i + 1))
        stats.budget_tokens.append(100 * (i + 1))
        stats.record_timing(predicted_s=0.010, measured_s=0.008)
        stats.record_step({"step": i, "budget_tokens": 100 * (i + 1)})
    stats.preemptions_by_tier["loose"] += 2
    stats.close()
    snap = read_engine_stats(tmp_path / "s.json")
    assert snap.policy == "accelgen"
    assert snap.budget_tokens.max == 500 and snap.budget_tokens.median == 300
    assert snap.planner_s.median == pytest.approx(0.0003) and snap.planner_s.num == 5
    assert snap.step_time_s.mean_error == pytest.approx(0.25)
    assert snap.preemptions_by_tier == {"loose": 2}
    assert [r["step"] for r in read_step_log(tmp_path / "l.jsonl")] == [0, 1, 2, 3, 4]


def test_tiny_model_tokenizes_chats_and_fits_the_config(tmp_path: Path) -> None:
    pytest.importorskip("tokenizers")
    transformers = pytest.importorskip("transformers")
    from accelgen.vllm.tiny_model import main

    assert main([str(tmp_path), "--hidden", "128", "--layers", "1"]) == 0
    config = json.loads((tmp_path / "config.json").read_text())
    assert config["architectures"] == ["LlamaForCausalLM"]
    assert config["hidden_size"] == 128 and config["num_attention_heads"] == 2
    assert config["head_dim"] == 64
    tok = transformers.AutoTokenizer.from_pretrained(str(tmp_path))
    assert config["vocab_size"] == len(tok)
    text = "Hello! Ünïcode and numbers 3.14 日本"
    ids = tok(text, add_special_tokens=False).input_ids
    assert tok.decode(ids) == text  # byte-level: every string round-trips
    assert len(ids) < len(text.encode())  # ... and merges make it shorter than bytes
    chat = tok.apply_chat_template([{"role": "user", "content": "hi"}], tokenize=False, add_generation_prompt=True)
    assert chat == "<s><|user|>\nhi</s>\n<|assistant|>\n"


def test_server_command_and_environment_per_configuration(tmp_path: Path) -> None:
    from accelgen.vllm.launch import SCHEDULER_CLS, ServerConfig, server_command, server_env

    accelgen = ServerConfig(model_dir=tmp_path, policy="sarathi", tiers_file=tmp_path / "t.yaml", num_gpu_blocks=99)
    cmd = server_command(accelgen, port=8123, python="py")
    assert cmd[:3] == ["py", "-m", "vllm.entrypoints.openai.api_server"]
    assert cmd[cmd.index("--scheduler-cls") + 1] == SCHEDULER_CLS
    assert cmd[cmd.index("--host") + 1] == "127.0.0.1" and cmd[cmd.index("--port") + 1] == "8123"
    assert cmd[cmd.index("--num-gpu-blocks-override") + 1] == "99"
    assert "--load-format" in cmd and "dummy" in cmd
    env = server_env(accelgen, {"PATH": "/bin", "ACCELGEN_STEP_LOG": "/stale"})
    assert env["ACCELGEN_POLICY"] == "sarathi" and env["ACCELGEN_TIERS"] == str(tmp_path / "t.yaml")
    assert "ACCELGEN_STEP_LOG" not in env and env["PATH"] == "/bin"
    stock = ServerConfig(model_dir=tmp_path, policy=None, scheduling_policy="priority")
    stock_cmd = server_command(stock, port=1)
    assert "--scheduler-cls" not in stock_cmd
    assert stock_cmd[stock_cmd.index("--scheduling-policy") + 1] == "priority"
    assert "ACCELGEN_POLICY" not in server_env(stock, {})
