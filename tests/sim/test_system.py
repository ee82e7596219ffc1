"""The full system in the simulator: the sidecar's own admission in front of the simulated engine."""

from __future__ import annotations

import dataclasses
from pathlib import Path

from accelgen.config import read_yaml
from accelgen.core.admission import AdmissionQueue
from accelgen.core.policies import make_policy
from accelgen.server.admission import Admission
from accelgen.sim.runner import build_requests, resolve_engine, run_workload
from accelgen.sim.system import SimAdmission, admission_config, simulate_system
from accelgen.sim.workload import parse_workload
from tests.support.factories import make_limits


def test_the_sidecar_and_the_simulator_run_the_same_admission_code() -> None:
    assert issubclass(Admission, AdmissionQueue) and issubclass(SimAdmission, AdmissionQueue)
    # Every decision is the core's: neither subclass overrides one.
    for decision in ("make_ticket", "pump", "leave", "_make_feasible", "_make_room", "_has_room", "_shed"):
        assert getattr(Admission, decision) is getattr(AdmissionQueue, decision), decision
        assert getattr(SimAdmission, decision) is getattr(AdmissionQueue, decision), decision
    assert SimAdmission.admit is AdmissionQueue.admit  # the sidecar's only turns a Refusal into a 429


def test_at_light_load_the_full_system_is_the_engine_alone(small_workload: Path, data_dir: Path) -> None:
    """Nothing waits in admission when the engine has room: every request enters at its arrival."""
    workload = dataclasses.replace(parse_workload(read_yaml(small_workload)), policies=("accelgen", "vllm-fcfs"))
    alone = run_workload(workload, data_dir=data_dir)
    system = run_workload(workload, data_dir=data_dir, admission=True)
    assert "admission" in system and "admission" not in alone
    for name, ours in system["policies"].items():
        assert ours["rejected"] == ours["shed"] == 0
        theirs = alone["policies"][name]
        assert "rejected" not in theirs and "shed" not in theirs  # bench sim's report is unchanged without it
        for key, value in theirs.items():
            if not key.startswith("plan_time") and key != "tiers":
                assert ours[key] == value, (name, key)


def test_refused_and_shed_requests_are_misses_counted_per_tier(small_workload: Path, data_dir: Path) -> None:
    workload = parse_workload(read_yaml(small_workload)).with_rate(30.0)  # ten times what the engine serves
    model, limits = resolve_engine(workload, data_dir)
    requests = build_requests(workload, data_dir, limits)
    policy = make_policy("accelgen", tiers=workload.tiers, latency_model=model, limits=limits)
    recorder, _ = simulate_system(
        policy,
        requests,
        tiers=workload.tiers,
        model=model,
        max_tokens=workload.max_tokens,
        # Few slots: the engine is offered far more than admission lets in.
        admission=dataclasses.replace(admission_config(limits, len(workload.tiers)), max_in_flight=16),
    )
    refused = [r for r in recorder.records.values() if r.refused is not None]
    assert refused, "an overloaded system must refuse or shed"
    assert all(r.first_token_s is None and r.finish_s is None and not r.met() for r in refused)
    summary = recorder.summary()
    assert summary["requests"] == len(requests)
    assert summary["rejected"] + summary["shed"] == len(refused)
    assert summary["slo_met"] + len(refused) <= len(requests)
    assert summary["attainment"] == summary["slo_met"] / len(requests)  # refused ones are in the denominator
    for name, tier in summary["tiers"].items():
        mine = [r for r in refused if r.tier.name == name]
        assert tier["rejected"] == sum(r.refused == "rejected" for r in mine)
        assert tier["shed"] == sum(r.refused == "shed" for r in mine)


def test_engine_pressure_holds_a_ticket_only_when_nothing_looser_is_in_the_engine() -> None:
    """A slack-ordering engine runs a tight request before the looser work it holds (and
    preempts that work for it), so its KV or queue pressure must not keep it out."""
    from accelgen.core.admission import Speed
    from accelgen.sim.profiles import DEFAULT_SIM_MODEL
    from accelgen.sim.system import EngineSnapshot, SimTicket
    from accelgen.sim.workload import SimRequest
    from tests.support.sidecar import TIERS

    now = [0.0]
    released: list[SimTicket] = []
    snapshot = EngineSnapshot()
    adm = SimAdmission(
        admission_config(make_limits(), len(TIERS)),
        Speed(DEFAULT_SIM_MODEL),
        snapshot,
        on_shed=lambda t: None,
        on_release=released.append,
        clock=lambda: now[0],
    )

    def offer(tier: str) -> SimTicket:
        adm.request = SimRequest(f"r{len(released)}-{tier}", now[0], 10, 10, tier)
        ticket = adm.make_ticket(TIERS.get(tier), 10, 10)
        assert adm.admit(ticket) is None
        adm.pump()
        return ticket

    batch = offer("batch")  # an idle engine: released
    snapshot.kv_usage = 0.99  # now the engine's KV is nearly full
    second_batch = offer("batch")
    interactive = offer("interactive")
    assert released == [batch, interactive] and second_batch.waiting
    adm.leave(batch)  # nothing looser than the held batch ticket left in the engine
    assert second_batch.waiting
    snapshot.kv_usage = 0.5
    adm.pump()
    assert released[-1] is second_batch
