"""The cluster simulator: N full single-replica systems behind a core router, one clock."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from accelgen.cli import main
from accelgen.config import read_yaml
from accelgen.core.policies import make_policy
from accelgen.core.policy import Policy
from accelgen.core.routing import make_router
from accelgen.sim.cluster import _targets_left, simulate_cluster
from accelgen.sim.runner import build_requests, resolve_engine
from accelgen.sim.system import admission_config, simulate_system
from accelgen.sim.workload import SimRequest, Workload, parse_workload


def load(path: Path, rate_rps: float | None = None) -> Workload:
    workload = parse_workload(read_yaml(path))
    return workload if rate_rps is None else workload.with_rate(rate_rps)


def run(workload: Workload, data_dir: Path, routing: str, replicas: int, requests: list[SimRequest] | None = None):  # type: ignore[no-untyped-def]
    model, limits = resolve_engine(workload, data_dir)
    requests = requests if requests is not None else build_requests(workload, data_dir, limits)

    def fresh() -> Policy:
        return make_policy("accelgen", tiers=workload.tiers, latency_model=model, limits=limits)

    recorder, stats = simulate_cluster(
        fresh,
        requests,
        replicas=replicas,
        router=make_router(routing, seed=1, tiers=workload.tiers),
        tiers=workload.tiers,
        model=model,
        max_tokens=workload.max_tokens,
        admission=admission_config(limits, len(workload.tiers)),
        latency_noise=workload.engine.latency_noise,
        seed=workload.seed,
    )
    return recorder.summary(), stats, requests


def test_one_replica_behind_the_router_is_the_full_system(small_workload: Path, data_dir: Path) -> None:
    workload = load(small_workload, rate_rps=6.0)  # busy enough that admission queues
    model, limits = resolve_engine(workload, data_dir)
    requests = build_requests(workload, data_dir, limits)
    policy = make_policy("accelgen", tiers=workload.tiers, latency_model=model, limits=limits)
    alone, _ = simulate_system(
        policy,
        requests,
        tiers=workload.tiers,
        model=model,
        max_tokens=workload.max_tokens,
        admission=admission_config(limits, len(workload.tiers)),
        latency_noise=workload.engine.latency_noise,
        seed=workload.seed,
    )
    pooled, stats, _ = run(workload, data_dir, "random", 1, requests)
    ours, theirs = alone.summary(), pooled
    assert stats.routed == {"pod-0": len(requests)} and stats.router_shed == 0
    for key in ("requests", "completed", "slo_met", "rejected", "shed", "preemptions"):
        assert ours[key] == theirs[key], key


@pytest.mark.parametrize("routing", ["random", "queue-kv", "accelgen"])
def test_every_request_is_routed_once_or_refused(small_workload: Path, data_dir: Path, routing: str) -> None:
    workload = load(small_workload, rate_rps=20.0)  # past what three replicas serve: refusals happen
    summary, stats, requests = run(workload, data_dir, routing, 3)
    assert sum(stats.routed.values()) + stats.router_shed == len(requests)
    assert all(n > 0 for n in stats.routed.values())  # every replica takes work
    assert summary["requests"] == len(requests)
    assert summary["completed"] + summary["rejected"] + summary["shed"] + summary["dropped"] <= len(requests)
    assert summary["slo_met"] > 0


def test_the_pool_is_deterministic_for_a_seed(small_workload: Path, data_dir: Path) -> None:
    workload = load(small_workload, rate_rps=9.0)
    first, _, _ = run(workload, data_dir, "accelgen", 2)
    again, _, _ = run(workload, data_dir, "accelgen", 2)
    assert first == again


def test_accelgen_routing_spreads_a_burst_of_long_prompts(small_workload: Path, data_dir: Path) -> None:
    """Four long documents at once onto two replicas: two each, the later ones held at the router."""
    workload = load(small_workload)
    burst = [SimRequest(f"doc-{i}", 1.0 + 0.001 * i, 12_000, 50, "summarize") for i in range(4)]
    _, spread, _ = run(workload, data_dir, "accelgen", 2, burst)
    assert spread.routed == {"pod-0": 2, "pod-1": 2}
    assert spread.held >= 2 and spread.router_shed == 0
    _, piled, _ = run(workload, data_dir, "round-robin", 2, burst)
    assert piled.held == 0  # a tier-blind router never holds anything


def test_a_wait_at_the_router_is_taken_off_the_targets(small_workload: Path) -> None:
    tiers = load(small_workload).tiers
    assert _targets_left(tiers.get("interactive"), 0.0) is None
    left = _targets_left(tiers.get("interactive"), 0.3)
    assert left is not None and left.ttft_slo_s == pytest.approx(0.7) and left.tbt_slo_s == 0.1
    batch = _targets_left(tiers.get("batch"), 100.0)
    assert batch is not None and batch.deadline_s == pytest.approx(200.0)


def test_a_pool_needs_a_replica(small_workload: Path, data_dir: Path) -> None:
    with pytest.raises(ValueError, match="at least 1"):
        run(load(small_workload), data_dir, "random", 0)


def test_bench_pool_reports_capacity_per_routing_and_the_ratios(
    small_workload: Path, data_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "out"
    argv = [
        "bench",
        "pool",
        str(small_workload),
        "--replicas",
        "2",
        "--routing",
        "random,accelgen",
        "--duration-s",
        "5",
        "--target-precision",
        "0.25",
        "--data-dir",
        str(data_dir),
        "--out",
        str(out),
    ]
    assert main(argv) == 0
    report = json.loads((out / "pool.json").read_text())
    one = report["one_replica"]["accelgen"]
    # Five seconds of arrivals may not find it ("capacity > highest rate tried"): said, not a number.
    assert one["capacity_rps"] is not None or one["per_seed"][0].startswith("capacity >")
    (pool,) = report["pools"]
    assert pool["replicas"] == 2 and set(pool["routing"]) == {"random", "accelgen"}
    for entry in pool["routing"].values():
        cap = entry["capacity_rps"]
        assert cap is None or cap > 0
        if cap is not None and one["capacity_rps"] is not None:
            assert entry["ratios"]["N x one replica"] == pytest.approx(cap / (2 * one["capacity_rps"]))
    assert pool["routing"]["random"]["ratios"]["random"] in (None, pytest.approx(1.0))
    goals = {g["goal"]: g for g in report["goals"]}
    assert goals["accelgen routing >= 1.25x queue-kv"]["measured"] is None  # not measured: said so
    ours, theirs = pool["routing"]["accelgen"]["capacity_rps"], pool["routing"]["random"]["capacity_rps"]
    assert (goals["accelgen routing >= 1.5x random"]["met"] is None) == (ours is None or theirs is None)
    printed = capsys.readouterr().out
    assert "2 replicas, accelgen engines: pool capacity" in printed


@pytest.mark.parametrize(
    ("flags", "message"),
    [
        (["--replicas", "0"], "--replicas: every pool needs at least 1 replica, got '0'"),
        (["--replicas", "two"], "--replicas: expected pool sizes like 4 or 4,8, got 'two'"),
        (["--routing", "random,nope"], "--routing: unknown policy 'nope' (known: random, round-robin"),
        (["--policies", "fifo"], "--policies: unknown policy 'fifo'"),
        (["--span", "2,1"], "--span: need 0 < LO < HI, got '2,1'"),
    ],
)
def test_bench_pool_bad_input_is_one_line_and_exit_2(
    small_workload: Path, flags: list[str], message: str, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["bench", "pool", str(small_workload), *flags]) == 2
    err = capsys.readouterr().err
    assert message in err and len(err.strip().splitlines()) == 1


def test_decision_time_benchmark_times_every_policy(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    assert main(["bench", "pool", "--decision-time", "--pods", "8", "--out", str(tmp_path)]) == 0
    report = json.loads((tmp_path / "pool.json").read_text())["decision_time"]
    assert report["pods"] == 8
    assert set(report["policies"]) >= {"random", "queue-kv", "predicted-latency", "accelgen"}
    for t in report["policies"].values():
        assert 0 < t["p50_ms"] <= t["p99_ms"] <= t["max_ms"]


def test_merged_runs_gather_every_routing_policy_and_recompute_the_ratios() -> None:
    from accelgen.bench.pool_cmd import merge_reports

    def report(routing: dict[str, float]) -> dict[str, object]:
        entries = {name: {"capacity_rps": cap, "per_seed": [f"{cap} req/s"]} for name, cap in routing.items()}
        return {
            "workload": "w",
            "duration_s": 60,
            "seeds": [7],
            "target_precision": 0.02,
            "one_replica": {"accelgen": {"capacity_rps": 5.0, "per_seed": ["5 req/s"]}},
            "pools": [{"replicas": 4, "policy": "accelgen", "routing": entries}],
        }

    merged = merge_reports([report({"accelgen": 26.0, "queue-kv": 20.0}), report({"random": 16.0})])
    (pool,) = merged["pools"]
    assert set(pool["routing"]) == {"accelgen", "queue-kv", "random"}
    ratios = pool["routing"]["accelgen"]["ratios"]
    assert ratios["queue-kv"] == pytest.approx(1.3) and ratios["random"] == pytest.approx(1.625)
    assert ratios["predicted-latency"] is None and ratios["N x one replica"] == pytest.approx(1.3)
    goals = {g["goal"]: g["met"] for g in merged["goals"]}
    assert (
        goals["accelgen routing >= 1.25x queue-kv"] is True
        and goals["accelgen routing >= 1.1x predicted-latency"] is None
    )
    other = report({"random": 1.0})
    other["duration_s"] = 120
    with pytest.raises(ValueError, match="differ in duration_s"):
        merge_reports([report({"random": 1.0}), other])


def test_every_rate_of_a_seed_runs_the_same_requests_compressed_in_time(small_workload: Path, data_dir: Path) -> None:
    from accelgen.sim.pool_capacity import PoolRunner

    runner = PoolRunner(load(small_workload), data_dir)
    slow, fast = runner.requests_at(seed=3, rate_rps=2.0), runner.requests_at(seed=3, rate_rps=6.0)
    duration = runner.workload.duration_s
    assert duration is not None and all(r.arrival_s < duration for r in slow + fast)
    assert len(fast) > 2 * len(slow)
    # The slow run's requests are the fast run's first ones: same prompts, outputs, tiers, order.
    assert [(r.prompt_tokens, r.output_tokens, r.tier) for r in slow] == [
        (r.prompt_tokens, r.output_tokens, r.tier) for r in fast[: len(slow)]
    ]
    assert all(abs(s.arrival_s - 3.0 * f.arrival_s) < 1e-9 for s, f in zip(slow, fast, strict=False))
    other = runner.requests_at(seed=4, rate_rps=2.0)
    assert [r.prompt_tokens for r in other] != [r.prompt_tokens for r in slow]
