"""Admission and release, on the real Admission class with a hand-driven clock."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

import pytest

from accelgen.server.admission import Admission
from accelgen.server.engine_state import EngineState, parse_engine_metrics, read_preemptions
from accelgen.server.errors import ApiError
from accelgen.server.speed import DEFAULT_SIM_MODEL, Speed
from accelgen.server.tickets import AdmissionConfig, Ticket
from accelgen.wire import write_engine_stats
from tests.support.factories import make_engine_stats
from tests.support.sidecar import TIERS


class Clock:
    def __init__(self) -> None:
        self.now_s = 100.0

    def __call__(self) -> float:
        return self.now_s


def _admission(clock: Clock, shed: list[Ticket], *, rate_per_s: float = 20.0, **config: Any) -> Admission:
    """An Admission that has seen the engine finish ``rate_per_s`` requests a second."""
    adm = Admission(
        AdmissionConfig(**config),
        Speed(DEFAULT_SIM_MODEL),
        EngineState(),
        on_shed=shed.append,
        clock=clock,
    )
    for _ in range(20):
        clock.now_s += 1.0 / rate_per_s
        adm.rate.finished(clock.now_s)
    return adm


def test_releases_least_slack_first() -> None:
    async def scenario() -> list[str]:
        clock, shed = Clock(), list[Ticket]()
        adm = _admission(clock, shed, max_in_flight=1)
        first = adm.make_ticket(TIERS.get("standard"), 10, 10)
        adm.admit(first)
        await adm.wait(first)  # takes the only slot
        order: list[str] = []
        waiters = []
        for name in ("batch", "standard", "interactive"):
            ticket = adm.make_ticket(TIERS.get(name), 10, 10)
            adm.admit(ticket)
            waiters.append(asyncio.ensure_future(adm.wait(ticket)))
            waiters[-1].add_done_callback(lambda _, n=name: order.append(n))  # type: ignore[misc]
        await asyncio.sleep(0)
        assert order == [] and adm.depth == {"standard": 1, "batch": 1, "interactive": 1}
        adm.leave(first)
        for _ in range(3):
            await asyncio.sleep(0)
            adm.leave(first)  # each release finishes at once, freeing the slot again
        await asyncio.gather(*waiters)
        assert not shed
        return order

    assert asyncio.run(scenario()) == ["interactive", "standard", "batch"]


def test_infeasible_ttft_is_rejected_at_once_with_retry_after() -> None:
    async def scenario() -> None:
        clock, shed = Clock(), list[Ticket]()
        # The engine is full and finishes a request every 2 s, as observed.
        adm = _admission(clock, shed, rate_per_s=0.5, max_in_flight=1)
        adm.in_flight = 1
        ticket = adm.make_ticket(TIERS.get("interactive"), 10, 10)  # TTFT 0.5 s
        with pytest.raises(ApiError) as err:
            adm.admit(ticket)
        assert err.value.status == 429 and err.value.code == "slo_infeasible"
        assert err.value.headers()["Retry-After"] == "2"
        adm.admit(adm.make_ticket(TIERS.get("batch"), 10, 10))  # a deadline of 60 s fits

    asyncio.run(scenario())


def test_full_queue_sheds_the_looser_tier_first() -> None:
    async def scenario() -> None:
        clock, shed = Clock(), list[Ticket]()
        adm = _admission(clock, shed, max_in_flight=1, max_queue_total=2)
        adm.in_flight = 1
        loose = [adm.make_ticket(TIERS.get("batch"), 10, 10) for _ in range(2)]
        for ticket in loose:
            adm.admit(ticket)
        tight = adm.make_ticket(TIERS.get("interactive"), 10, 10)
        adm.admit(tight)  # pushes out the loosest queued request
        assert shed == [loose[1]] and adm.depth["batch"] == 1
        assert isinstance(loose[1].released.exception(), ApiError)
        assert loose[1].released.exception().status == 503  # type: ignore[union-attr]
        with pytest.raises(ApiError) as err:  # a looser request cannot push a tighter out
            adm.admit(adm.make_ticket(TIERS.get("batch"), 10, 10))
        assert err.value.status == 429 and err.value.code == "queue_full"

    asyncio.run(scenario())


def test_lost_deadline_is_shed_and_cancelled_waiter_leaves() -> None:
    async def scenario() -> None:
        clock, shed = Clock(), list[Ticket]()
        adm = _admission(clock, shed, max_in_flight=1)
        adm.in_flight = 1
        tight = adm.make_ticket(TIERS.get("interactive"), 10, 10)
        adm.admit(tight)
        loose = adm.make_ticket(TIERS.get("standard"), 10, 10)
        adm.admit(loose)
        waiter = asyncio.ensure_future(adm.wait(loose))
        await asyncio.sleep(0)
        waiter.cancel()
        with pytest.raises(asyncio.CancelledError):
            await waiter
        assert adm.depth["standard"] == 0
        clock.now_s += 0.6  # past the interactive TTFT target while still queued
        adm.pump()
        assert shed == [tight] and adm.queued() == 0

    asyncio.run(scenario())


def test_a_slot_freed_before_a_cancelled_waiter_runs_goes_to_the_next_one() -> None:
    """Cancelling a task cancels the future it awaits at once; its handler runs later.

    Many clients hang up in one loop iteration: a request that finishes in that same
    iteration frees a slot, and the release must skip the cancelled waiter (not raise
    InvalidStateError on its future, which lost that request's outcome count and
    leaked a slot) and go to the next one.
    """

    async def scenario() -> None:
        clock, shed = Clock(), list[Ticket]()
        adm = _admission(clock, shed, max_in_flight=1)
        first = adm.make_ticket(TIERS.get("batch"), 10, 10)
        adm.admit(first)
        await adm.wait(first)
        gone, next_ = (adm.make_ticket(TIERS.get("batch"), 10, 10) for _ in range(2))
        waiters = []
        for ticket in (gone, next_):
            adm.admit(ticket)
            waiters.append(asyncio.ensure_future(adm.wait(ticket)))
        await asyncio.sleep(0)
        waiters[0].cancel()  # its future is cancelled now, its except clause runs later
        assert gone.released.cancelled() and gone.queued
        adm.leave(first)  # same iteration: the slot must go to next_
        assert next_.released.done() and adm.in_flight == 1 and adm.queued() == 0
        with pytest.raises(asyncio.CancelledError):
            await waiters[0]
        await waiters[1]
        adm.leave(next_)
        assert adm.in_flight == 0 and adm.queued() == 0 and not shed
        # A cancelled waiter is not shed either (it would count twice: cancelled and shed).
        adm.in_flight = 1
        late = adm.make_ticket(TIERS.get("interactive"), 10, 10)
        adm.admit(late)
        waiter = asyncio.ensure_future(adm.wait(late))
        await asyncio.sleep(0)
        waiter.cancel()
        clock.now_s += 0.6  # its TTFT is lost: pump would shed it if it still waited
        adm.pump()
        assert not shed and adm.queued() == 0
        with pytest.raises(asyncio.CancelledError):
            await waiter

    asyncio.run(scenario())


def test_engine_pressure_holds_releases() -> None:
    async def scenario() -> None:
        clock, shed = Clock(), list[Ticket]()
        adm = _admission(clock, shed, max_in_flight=10)
        running, waiting, kv, _ = parse_engine_metrics(
            'vllm:num_requests_running{model_name="m"} 3.0\n'
            'vllm:num_requests_waiting{model_name="m"} 0.0\n'
            'vllm:kv_cache_usage_perc{model_name="m"} 0.97\n'
        )
        adm.engine.running, adm.engine.waiting, adm.engine.kv_usage = running, waiting, kv
        adm.in_flight = 3
        ticket = adm.make_ticket(TIERS.get("batch"), 10, 10)
        adm.admit(ticket)
        adm.pump()
        assert not ticket.released.done()  # KV nearly full: it would only wait inside vLLM
        adm.engine.kv_usage = 0.5
        adm.pump()
        assert ticket.released.done()

    asyncio.run(scenario())


def test_request_infeasible_even_when_idle_is_served_if_idle_refused_if_busy() -> None:
    async def scenario() -> None:
        clock, shed = Clock(), list[Ticket]()
        adm = _admission(clock, shed, max_in_flight=1)
        huge = adm.make_ticket(TIERS.get("interactive"), 400_000, 10)  # prefill ≫ 0.5 s
        assert huge.key_s < huge.arrival_s
        adm.admit(huge)
        await adm.wait(huge)  # idle engine: best effort, not shed
        assert not shed and adm.in_flight == 1
        with pytest.raises(ApiError) as err:  # busy: refused at once
            adm.admit(adm.make_ticket(TIERS.get("interactive"), 400_000, 10))
        assert err.value.status == 429 and err.value.code == "slo_infeasible"

    asyncio.run(scenario())


def test_a_persisting_engine_queue_holds_releases_a_passing_one_does_not() -> None:
    async def scenario() -> None:
        clock, shed = Clock(), list[Ticket]()
        adm = _admission(clock, shed, max_in_flight=10)
        adm.in_flight = 3
        eng = adm.engine
        eng.waiting_before, eng.waiting, eng.updated_s = 0, 6, clock.now_s  # one poll only
        first = adm.make_ticket(TIERS.get("standard"), 10, 10)
        adm.admit(first)
        adm.pump()
        assert first.released.done()
        clock.now_s += 0.3
        eng.waiting_before, eng.waiting, eng.updated_s = 6, 6, clock.now_s  # two polls in a row
        second = adm.make_ticket(TIERS.get("standard"), 10, 10)
        adm.admit(second)
        adm.pump()
        assert not second.released.done()
        eng.waiting_before, eng.waiting = 6, 0
        adm.pump()
        assert second.released.done()

    asyncio.run(scenario())


def test_engine_preempting_holds_releases(tmp_path: Path) -> None:
    # The in-engine stats file, in the wire format.
    stats = tmp_path / "engine-stats.json"
    write_engine_stats(stats, make_engine_stats(preemptions_by_tier={"batch": 2, "interactive": 1}))
    assert read_preemptions(str(stats)) == 3
    stats.write_text(json.dumps({"preemptions_by_tier": {"batch": 2, "interactive": 1}}))
    assert read_preemptions(str(stats)) is None  # not the format (no version)
    assert read_preemptions(str(tmp_path / "missing.json")) is None
    stats.write_text("{not json")
    assert read_preemptions(str(stats)) is None

    async def scenario() -> None:
        clock, shed = Clock(), list[Ticket]()
        adm = _admission(clock, shed, max_in_flight=10)
        adm.in_flight = 2
        adm.engine.preempting = True  # the count grew since the last poll
        ticket = adm.make_ticket(TIERS.get("standard"), 10, 10)
        adm.admit(ticket)
        adm.pump()
        assert not ticket.released.done()
        adm.engine.preempting = False
        adm.pump()
        assert ticket.released.done()

    asyncio.run(scenario())
