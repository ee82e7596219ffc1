"""The simulator: deterministic, faithful to its latency model, and fast enough."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from accelgen.config import read_yaml
from accelgen.core.latency import BatchShape
from accelgen.sim.profiles import named_model
from accelgen.sim.runner import run_workload
from accelgen.sim.workload import parse_workload
from tests.support.reports import POLICY_RESULT_KEYS, TIER_RESULT_KEYS


def test_same_seed_same_report(small_workload: Path, data_dir: Path) -> None:
    workload = parse_workload(read_yaml(small_workload))
    first = run_workload(workload, data_dir=data_dir)
    second = run_workload(workload, data_dir=data_dir)

    def strip(report: dict) -> dict:  # type: ignore[type-arg]
        return {p: {k: v for k, v in m.items() if not k.startswith("plan_time")} for p, m in report["policies"].items()}

    assert strip(first) == strip(second)
    assert first["num_requests"] > 30


def test_every_policy_sees_the_same_requests_and_completes_them(small_workload: Path, data_dir: Path) -> None:
    report = run_workload(parse_workload(read_yaml(small_workload)), data_dir=data_dir)
    n = report["num_requests"]
    for name, result in report["policies"].items():
        assert result["requests"] == n, name
        assert result["completed"] + result["dropped"] == n, name
        assert sum(t["requests"] for t in result["tiers"].values()) == n
        assert 0 <= result["attainment"] <= 1 and result["goodput_rps"] <= result["throughput_rps"] + 1e-9
    # Light load: everyone meets nearly every SLO; AccelGen is not worse than the bound says.
    assert report["policies"]["accelgen"]["attainment"] >= 0.95
    assert report["policies"]["accelgen"]["goodput_rps"] <= report["upper_bound"]["goodput_rps"] * 1.0001


def test_profile_model_is_calibrated_on_the_real_profile(data_dir: Path) -> None:
    model = named_model("h100-llama-2-7b", data_dir).model
    one = model.predict_s(BatchShape(num_decodes=1))
    # 32 layers × 0.177 ms (the profile's one-token row) + 3 ms overhead ≈ 8.7 ms.
    assert 0.0085 < one < 0.0090
    big = model.predict_s(BatchShape().plus_prefill(4096, context_tokens=0))
    small = model.predict_s(BatchShape().plus_prefill(2048, context_tokens=0))
    assert 1.7 < big / small < 2.3  # compute bound: about linear in tokens
    a100 = named_model("a100-llama-2-7b", data_dir).model.predict_s(BatchShape().plus_prefill(4096, context_tokens=0))
    assert a100 > 2.5 * big  # A100 has ~1/3 the BF16 throughput


def test_json_report_shape(small_workload: Path, data_dir: Path, tmp_path: Path) -> None:
    from accelgen.cli import main

    out = tmp_path / "out.json"
    code = main(["bench", "sim", str(small_workload), "--json", str(out), "--quiet", "--data-dir", str(data_dir)])
    assert code == 0
    report = json.loads(out.read_text())
    assert report["workload"] == "small"
    for result in report["policies"].values():
        assert set(result) >= POLICY_RESULT_KEYS
        assert set(result["tiers"]) == {"interactive", "summarize", "batch"}
        assert all(set(tier) >= TIER_RESULT_KEYS for tier in result["tiers"].values())


def test_sweep_plot(small_workload: Path, data_dir: Path, tmp_path: Path) -> None:
    from accelgen.cli import main

    png, out = tmp_path / "sweep.png", tmp_path / "sweep.json"
    args = [
        "bench",
        "sim",
        str(small_workload),
        "--rate",
        "1",
        "--rate",
        "2",
        "--policies",
        "accelgen,vllm-fcfs",
        "--plot",
        str(png),
        "--json",
        str(out),
        "--quiet",
        "--data-dir",
        str(data_dir),
    ]
    assert main(args) == 0
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    sweep = json.loads(out.read_text())["sweep"]
    assert [s["rate_rps"] for s in sweep] == [1.0, 2.0]


@pytest.mark.parametrize("policy", ["accelgen", "vllm-fcfs"])
def test_replay_of_the_azure_trace_runs(policy: str, data_dir: Path, tmp_path: Path) -> None:
    """Replay mode keeps the trace's own arrival times and lengths (first 300 requests)."""
    path = tmp_path / "replay.yaml"
    path.write_text(
        "name: replay\nnum_requests: 300\narrivals: {process: replay}\n"
        "sources: [{trace: azure_conv_2023.csv, tier: chat}]\n"
        "tiers: {default_tier: chat, tiers: [{name: chat, ttft_ms: 2000, tbt_ms: 200}]}\n"
        f"engine: {{latency_model: h100-llama-2-7b}}\npolicies: [{policy}]\n"
    )
    report = run_workload(parse_workload(read_yaml(path)), data_dir=data_dir)
    assert report["num_requests"] == 300
    assert report["policies"][policy]["completed"] == 300
