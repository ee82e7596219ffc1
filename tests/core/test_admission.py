"""The core's admission decisions, sans I/O: a hand-driven clock, a hand-kept engine view.

The prefill estimate: a request waits for the prompt tokens not yet prefilled ahead of
it, queued or released without a first token, at the rate the engine prefills beside
its decodes; one that cannot start within its slack is refused at arrival (429), after
the looser queued work ahead of it is shed.
"""

from __future__ import annotations

from typing import Any

import pytest

from accelgen.core.admission import AdmissionConfig, AdmissionQueue, Refusal, Speed, Ticket
from accelgen.core.routing.estimate import prefill_rate_tokens_per_s
from accelgen.sim.profiles import DEFAULT_SIM_MODEL
from accelgen.sim.system import EngineSnapshot
from tests.support.sidecar import TIERS

INTERACTIVE, STANDARD, BATCH = (TIERS.get(n) for n in ("interactive", "standard", "batch"))


class Queue(AdmissionQueue[Ticket]):
    """The core queue with plain tickets; releases go to ``released`` (unstarted until moved)."""

    def __init__(self, **config: Any) -> None:
        self.now_s = 0.0
        self.shed: list[Ticket] = []
        self.unstarted_tickets: list[Ticket] = []
        super().__init__(
            AdmissionConfig(**config),
            Speed(DEFAULT_SIM_MODEL),
            EngineSnapshot(),  # an idle engine's view: nothing holds releases
            on_shed=self.shed.append,
            clock=lambda: self.now_s,
            unstarted=lambda: self.unstarted_tickets,
        )

    def _new_ticket(self, **fields: Any) -> Ticket:
        return Ticket(**fields)

    def _settle(self, ticket: Ticket, outcome: str, why: str) -> None:
        super()._settle(ticket, outcome, why)
        if outcome == "released":
            self.unstarted_tickets.append(ticket)

    def offer(self, tier: Any, prompt_tokens: int, max_tokens: int = 16) -> tuple[Ticket, Refusal | None]:
        ticket = self.make_ticket(tier, prompt_tokens, max_tokens)
        refusal = self.admit(ticket)
        self.pump()
        return ticket, refusal

    def prefill_wait_s(self, tokens: int) -> float:
        """What the module's estimate predicts for ``tokens`` ahead, nothing decoding."""
        rate = prefill_rate_tokens_per_s(
            decode_step_s=0.0,
            prefill_s_per_token=self.speed.prefill_token_s(num_running=0),
            tightest_tbt_s=INTERACTIVE.tbt_slo_s,
        )
        assert rate is not None
        return tokens / rate


def _slack_s(queue: Queue, tier: Any, prompt_tokens: int) -> float:
    """The slack admission plans to release within, for a request arriving now."""
    ticket = queue.make_ticket(tier, prompt_tokens, 16)
    return (ticket.key_s - ticket.arrival_s) * queue.config.slack_use


def _hold(queue: Queue, tier: Any, prompt_tokens: int, count: int) -> list[Ticket]:
    """``count`` requests released to the engine (arrived just before) without a first token."""
    held = []
    for _ in range(count):
        ticket = queue.make_ticket(tier, prompt_tokens, 16)
        ticket.queued, ticket.outcome = False, "released"
        queue.in_flight += 1
        held.append(ticket)
    queue.unstarted_tickets.extend(held)
    queue.now_s += 1e-3
    return held


def test_free_slots_do_not_hide_a_prefill_backlog() -> None:
    """Slots free everywhere (releases up to 512), yet the engine holds more unprefilled
    prompt than a request's TTFT allows: refused now, not run until it fails."""
    queue = Queue(max_in_flight=512)
    usable_s = _slack_s(queue, STANDARD, 100)
    docs = int(usable_s / queue.prefill_wait_s(4000)) + 2  # worth more than that slack
    _hold(queue, STANDARD, 4000, docs)
    ticket, refusal = queue.offer(STANDARD, 100)
    assert refusal is not None and refusal.code == "slo_infeasible"
    waited = queue.prefill_wait_s(docs * 4000)
    assert waited > (ticket.key_s - ticket.arrival_s) * queue.config.slack_use
    assert refusal.retry_after_s == pytest.approx(waited)  # nothing decodes: the same estimate
    # Looser work ahead does not count: a slack-ordering engine runs the tighter first.
    queue.unstarted_tickets.clear()
    _hold(queue, BATCH, 4000, docs)
    _, refusal = queue.offer(STANDARD, 100)
    assert refusal is None
    # Once those prompts are prefilled (first tokens back), the same request is admitted.
    queue.unstarted_tickets.clear()
    _, refusal = queue.offer(STANDARD, 100)
    assert refusal is None and queue.shed == []


def test_looser_queued_work_is_shed_just_enough_for_a_tighter_request() -> None:
    """Queued standard documents ahead of a tight request: the loosest are shed until the
    prefill ahead fits its slack, the rest stay queued."""
    queue = Queue(max_in_flight=1000)
    for _ in range(40):  # the engine is seen finishing 100 requests a second: slots never bind
        queue.now_s += 0.01
        queue.rate.finished(queue.now_s)
    fits = int(_slack_s(queue, INTERACTIVE, 50) / queue.prefill_wait_s(3000))
    assert fits >= 1
    standard = [queue.make_ticket(STANDARD, 3000, 16) for _ in range(fits + 3)]
    for ticket in standard:
        assert queue.admit(ticket) is None  # not pumped: they stay queued
    # 1.5 s on (the difference of the two TTFT targets), they must start before it.
    queue.now_s += STANDARD.ttft_slo_s - INTERACTIVE.ttft_slo_s
    ticket = queue.make_ticket(INTERACTIVE, 50, 16)
    assert all(t.key_s <= ticket.key_s for t in standard)
    assert queue.admit(ticket) is None
    assert len(queue.shed) == 3 and all(t.tier is STANDARD for t in queue.shed)
    # The loosest went: the ones with the latest keys.
    kept = [t for t in standard if t not in queue.shed]
    assert max(t.key_s for t in kept) <= min(t.key_s for t in queue.shed)


def test_a_request_with_nothing_looser_to_shed_is_refused_and_nothing_is_shed() -> None:
    queue = Queue(max_in_flight=512)
    usable_s = _slack_s(queue, INTERACTIVE, 100)
    _hold(queue, INTERACTIVE, 1500, int(usable_s / queue.prefill_wait_s(1500)) + 2)
    _, refusal = queue.offer(INTERACTIVE, 100)
    assert refusal is not None and refusal.code == "slo_infeasible"
    assert queue.shed == []
