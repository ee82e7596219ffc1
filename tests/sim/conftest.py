"""Fixtures for simulator tests: the shared data folder and small workload files."""

from __future__ import annotations

from pathlib import Path

import pytest

from accelgen.sim.profiles import default_data_dir


@pytest.fixture(scope="session")
def data_dir() -> Path:
    path = default_data_dir()
    if not (path / "traces" / "azure_conv_2023.csv").is_file():
        pytest.skip(f"shared data not found at {path} (set ACCELGEN_DATA_DIR)")
    return path


SMALL = """\
name: small
seed: 3
duration_s: 20
arrivals: {process: poisson, rate_rps: 3.0}
sources:
  - {trace: azure_conv_2023.csv, weight: 0.65, tier: interactive}
  - {trace: arxiv_summarization_lengths.csv, weight: 0.35, tiers: {summarize: 0.7, batch: 0.3}}
tiers:
  default_tier: interactive
  tiers:
    - {name: interactive, ttft_ms: 1000, tbt_ms: 100}
    - {name: summarize, ttft_ms: 5000, tbt_ms: 250, priority: 1}
    - {name: batch, deadline_s: 300, priority: 2}
engine: {latency_model: h100-llama-2-7b, num_kv_blocks: auto, latency_noise: 0.05}
policies: [accelgen, sarathi, vllm-fcfs, oracle]
"""


@pytest.fixture
def small_workload(tmp_path: Path) -> Path:
    path = tmp_path / "small.yaml"
    path.write_text(SMALL)
    return path
