"""The engine-free parts of accelgen.vllm: settings, stats, model."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from accelgen.core.errors import ConfigError
from accelgen.core.tiers import ENGINE_DEFAULT_TIERS
from accelgen.vllm.settings import settings_from_env
from accelgen.vllm.stats import EngineStats, read_step_log
from accelgen.wire import read_engine_stats
from tests.support.factories import make_tiers

TIERS = make_tiers()


def test_settings_from_environment(tmp_path: Path) -> None:
    assert settings_from_env({}).tiers == ENGINE_DEFAULT_TIERS
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
    from accelgen.launch import VllmServerConfig, vllm_server_command, vllm_server_env
    from accelgen.wire import SCHEDULER_CLS

    accelgen = VllmServerConfig(model_dir=tmp_path, policy="sarathi", tiers_file=tmp_path / "t.yaml", num_gpu_blocks=99)
    cmd = vllm_server_command(accelgen, port=8123, python="py")
    assert cmd[:3] == ["py", "-m", "vllm.entrypoints.openai.api_server"]
    assert cmd[cmd.index("--scheduler-cls") + 1] == SCHEDULER_CLS
    assert cmd[cmd.index("--host") + 1] == "127.0.0.1" and cmd[cmd.index("--port") + 1] == "8123"
    assert cmd[cmd.index("--num-gpu-blocks-override") + 1] == "99"
    assert "--load-format" in cmd and "dummy" in cmd
    env = vllm_server_env(accelgen, {"PATH": "/bin", "ACCELGEN_STEP_LOG": "/stale"})
    assert env["ACCELGEN_POLICY"] == "sarathi" and env["ACCELGEN_TIERS"] == str(tmp_path / "t.yaml")
    assert "ACCELGEN_STEP_LOG" not in env and env["PATH"] == "/bin"
    stock = VllmServerConfig(model_dir=tmp_path, scheduler_cls=None, policy=None, scheduling_policy="priority")
    stock_cmd = vllm_server_command(stock, port=1)
    assert "--scheduler-cls" not in stock_cmd
    assert stock_cmd[stock_cmd.index("--scheduling-policy") + 1] == "priority"
    assert "ACCELGEN_POLICY" not in vllm_server_env(stock, {})
