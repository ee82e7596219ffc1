"""scripts/install-prometheus.sh: valid shell, exits 0, idempotent where Prometheus is installed."""

from __future__ import annotations

import subprocess

import pytest

from tests.support.deploy import ROOT, tool

SCRIPT = ROOT / "scripts" / "install-prometheus.sh"


def test_script_parses() -> None:
    result = subprocess.run(["bash", "-n", str(SCRIPT)], capture_output=True, text=True, check=False)
    assert result.returncode == 0, result.stderr


@pytest.mark.skipif(
    tool("promtool") is None or tool("prometheus") is None,
    reason="Prometheus not installed; running the script here would install it",
)
def test_script_is_idempotent_when_installed() -> None:
    result = subprocess.run(["bash", str(SCRIPT)], capture_output=True, text=True, timeout=60, check=False)
    assert result.returncode == 0
    assert result.stdout.startswith("install-prometheus: already installed (promtool, version")
