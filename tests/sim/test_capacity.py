"""Capacity by bisection, the steady goodput past it, and ``accelgen bench capacity``'s
answers to good and bad input: the bound, the ablations, the goals."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from accelgen.cli import main
from accelgen.sim.capacity import bisect_capacity, steady_goodput
from accelgen.sim.metrics import Recorder
from accelgen.sim.workload import SimRequest
from tests.support.factories import make_tiers


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
        (["--engine", "vllm", "--admission"], "--admission"),
        (["--engine", "vllm", "--ablations"], "--ablations"),
        (["--engine", "vllm"], "engine.num_kv_blocks"),  # 'auto': a real engine has a number
        (["--engine", "vllm", "--rates", "3"], "--rates"),
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


def _served(recorder: Recorder, request: SimRequest, *, on_time: bool) -> None:
    """One token per output, on time (within the tier's TBT) or every one late; finished."""
    tier = recorder.tiers.get(request.tier)
    step = 0.01 if on_time else 10 * (tier.tbt_slo_s or 1.0)
    now = request.arrival_s + (0.01 if on_time else 2 * (tier.ttft_slo_s or 0.0))
    for _ in range(request.output_tokens):
        recorder.token(request.request_id, now)
        now += step
    deadline = tier.deadline_s
    recorder.finished(request.request_id, now if deadline is None or on_time else request.arrival_s + 2 * deadline)


def test_steady_goodput_counts_each_tier_over_the_arrivals_whose_slo_ends_in_the_window() -> None:
    tiers = make_tiers()  # tight: TTFT 0.5 s, TBT 50 ms; batch: 60 s deadline
    window_s = 100.0
    # One tight request a second, 10 tokens each (horizon 0.5 + 0.05 x 10 = 1 s); one batch
    # request every 2 s (horizon 60 s). The tight ones arriving from 50 s on miss.
    tight = [SimRequest(f"t{i}", float(i), 8, 10, "tight") for i in range(100)]
    batch = [SimRequest(f"b{i}", float(2 * i), 8, 3, "batch") for i in range(50)]
    recorder = Recorder(tight + batch, tiers)
    for r in tight:
        _served(recorder, r, on_time=r.arrival_s < 50)
    for r in batch:
        _served(recorder, r, on_time=True)
    out = steady_goodput(recorder, window_s)
    assert out["horizons_s"] == {"tight": pytest.approx(1.0), "batch": 60.0}
    # tight: 50 met of the arrivals in [0, 99 s]; batch: the 21 arrivals in [0, 40 s], all met.
    assert out["goodput_steady_rps"] == pytest.approx(50 / 99 + 21 / 40)
    assert out["goodput_window_rps"] == pytest.approx((50 + 50) / window_s)


def test_bench_capacity_reports_the_bound_the_ablations_and_the_goals(
    small_workload: Path, data_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "capacity.json"
    flags = ["--policies", "accelgen,vllm-fcfs", "--seeds", "1", "--rates", "1,16", "--target-precision", "0.05"]
    code = main(["bench", "capacity", str(small_workload), *flags, "--ablations", "--json", str(out),
                 "--data-dir", str(data_dir)])  # fmt: skip
    assert code == 0
    printed = capsys.readouterr().out
    report = json.loads(out.read_text())
    bound = report["bound"]["rate_rps"]
    assert bound > 0 and f"bound: {bound:.3f} req/s" in printed
    for entry in report["policies"].values():
        assert entry["status"] == "found"
        assert entry["of_bound"] == pytest.approx(entry["capacity_rps"] / bound)

    ablations = report["ablations"]
    assert list(ablations) == [
        "full system", "no chunking", "no ordering", "no best fit", "no admission (engine only)",
        "learned output lengths",
    ]  # fmt: skip
    assert all(a["status"] == "found" for a in ablations.values())
    assert ablations["full system"]["of_full"] == 1.0 and ablations["full system"]["admission"]
    assert not ablations["no admission (engine only)"]["admission"]
    assert ablations["learned output lengths"]["output_lengths"] == "learned"
    # The engine alone is the same bisection as the policy table's accelgen (the same runs).
    assert ablations["no admission (engine only)"]["per_seed_rps"] == report["policies"]["accelgen"]["per_seed_rps"]
    # A fixed 8,192-token budget: every TBT-tight decode waits behind whole prompts.
    assert ablations["no chunking"]["capacity_rps"] < ablations["full system"]["capacity_rps"]
    assert "accelgen's ablations, as capacity" in printed

    for rows in report["overload"]["modes"].values():
        assert rows[0]["retention"] == 1.0
        for row in rows:
            assert row["retention"] == pytest.approx(row["goodput_steady_rps"] / rows[0]["goodput_steady_rps"])
    goals = report["goals"]
    assert [g["goal"] for g in goals] == [
        "capacity ≥ 1.35× the best baseline", "capacity ≥ 0.85× the bound",
        "overload retention ≥ 0.9", "overload retention ≥ 0.9",
    ]  # fmt: skip
    for goal in goals:
        assert goal["met"] == (goal["measured"] >= goal["threshold"])
        verdict = "met" if goal["met"] else "MISSED"
        assert f"goal: {goal['goal']} ({goal['detail']}): {goal['measured']:.2f} — {verdict}" in printed
    assert goals[0]["measured"] == pytest.approx(report["ratios"]["accelgen/best_baseline"])
