"""Capacity by bisection, and ``accelgen bench capacity``'s answers to good and bad input."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from accelgen.cli import main
from accelgen.sim.capacity import bisect_capacity


@pytest.mark.parametrize("threshold", [1.3, 3.7, 9.9])
def test_bisection_finds_a_known_threshold_to_the_precision(threshold: float) -> None:
    tried: list[float] = []

    def meets(rate: float) -> bool:
        tried.append(rate)
        return rate <= threshold

    cap = bisect_capacity(meets, 1.0, 10.0, precision=0.02)
    assert cap.status == "found" and cap.capacity_rps is not None
    assert cap.lo_rps <= threshold < cap.hi_rps
    assert abs(cap.capacity_rps - threshold) <= 0.02 * cap.capacity_rps
    assert cap.tried_rps == tuple(tried) and len(tried) <= 12  # bisection, not a scan


def test_a_range_without_the_threshold_is_reported_not_measured() -> None:
    above = bisect_capacity(lambda rate: True, 2.0, 8.0, precision=0.02)
    assert above.status == "above" and above.capacity_rps is None
    assert above.describe() == "capacity > highest rate tried (8 req/s)"
    below = bisect_capacity(lambda rate: False, 2.0, 8.0, precision=0.02)
    assert below.status == "below" and below.capacity_rps is None
    assert below.describe() == "capacity < lowest rate tried (2 req/s)"


@pytest.mark.parametrize(
    ("flags", "named"),
    [
        (["--target-precision", "0"], "--target-precision"),
        (["--target-precision", "0.7"], "--target-precision"),
        (["--seeds", "0"], "--seeds"),
        (["--rates", "5,1"], "--rates"),
        (["--rates", "fast"], "--rates"),
        (["--engine", "gpu"], "--engine"),
        (["--overload", "0.5"], "--overload"),
        (["--policies", "no-such-policy"], "--policies"),
    ],
)
def test_bad_flags_exit_2_naming_the_flag(
    flags: list[str], named: str, small_workload: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    try:
        code = main(["bench", "capacity", str(small_workload), *flags])
    except SystemExit as exit_:  # argparse's own refusal (a number that is not one)
        code = exit_.code  # type: ignore[assignment]
    assert code == 2
    last = capsys.readouterr().err.strip().splitlines()[-1]
    assert named in last and "error" in last


def test_a_range_the_policy_never_leaves_says_so_and_exits_0(
    small_workload: Path, data_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "capacity.json"
    flags = ["--policies", "accelgen", "--seeds", "1", "--rates", "0.2,0.3", "--overload", "none", "--json", str(out)]
    code = main(["bench", "capacity", str(small_workload), *flags, "--data-dir", str(data_dir)])
    assert code == 0
    assert "capacity > highest rate tried (0.3 req/s)" in capsys.readouterr().out
    report = json.loads(out.read_text())
    entry = report["policies"]["accelgen"]
    assert entry["status"] == "above" and entry["capacity_rps"] is None
    assert [p["rate_rps"] for p in entry["points"]] == [0.3]  # the top met every target: nothing more to try
    assert "overload" not in report and report["ratios"] == {}
