"""The reconcile benchmark, small: it converges, counts requests, and finds no repeated write."""

from __future__ import annotations

import pytest

from accelgen_operator.bench import format_result, run_bench
from accelgen_operator.cli import main


@pytest.mark.asyncio
async def test_bench_converges_without_repeated_writes() -> None:
    result = await run_bench(num_pools=5, stats_interval_s=0.5, timeout_s=60)
    assert result.ok
    assert result.idle_writes == 0 and result.restart_child_writes == 0
    # Four children created per pool, each exactly once.
    for kind in ("configmaps", "deployments", "services", "poddisruptionbudgets"):
        assert result.breakdown[f"POST {kind}"] == 1
        assert f"PATCH {kind}" not in result.breakdown
    assert "time to converge" in format_result(result)


def test_cli_rejects_a_bad_pool_count(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["bench", "--pools", "0"]) == 2
    assert "--pools" in capsys.readouterr().err
