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


@pytest.mark.parametrize(
    ("argv", "reason"),
    [
        (["bench", "--pools", "0"], "must be > 0, got 0"),
        (["bench", "--stats-interval", "0"], "must be > 0, got 0"),
        (["run", "--stats-interval", "-1"], "must be > 0, got -1"),
        (["run", "--stats-timeout", "nan"], "must be finite, got nan"),
    ],
)
def test_cli_rejects_nonsense_numbers(argv: list[str], reason: str, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exc:
        main(argv)
    assert exc.value.code == 2
    assert f"argument {argv[1]}: {reason}" in capsys.readouterr().err
