"""Fixtures for simulator tests: the shared data folder and small workload files."""

from __future__ import annotations

from pathlib import Path

import pytest

from accelgen.sim.profiles import default_data_dir
from tests.support.factories import SMALL_WORKLOAD


@pytest.fixture(scope="session")
def data_dir() -> Path:
    path = default_data_dir()
    if not (path / "traces" / "azure_conv_2023.csv").is_file():
        pytest.skip(f"shared data not found at {path} (set ACCELGEN_DATA_DIR)")
    return path


@pytest.fixture
def small_workload(tmp_path: Path) -> Path:
    path = tmp_path / "small.yaml"
    path.write_text(SMALL_WORKLOAD)
    return path
