"""The sidecar's admission: :class:`accelgen.core.admission.AdmissionQueue` on asyncio.

The decisions (order keys, feasibility, queues, shedding, the release rule) are the
core's, shared with the full-system simulator; this shell adds what a live server
needs: a future per ticket that its handler awaits, refusals and sheds as ApiErrors
(429 and 503 with Retry-After), and an Event the shedding tick sleeps on.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Iterable
from typing import Any

from accelgen.core.admission import AdmissionQueue, Speed
from accelgen.server.engine_state import EngineState
from accelgen.server.errors import ApiError
from accelgen.server.tickets import AdmissionConfig, Ticket


class Admission(AdmissionQueue[Ticket]):
    """Admits, queues, sheds and releases requests.

    A handler calls :meth:`make_ticket`, :meth:`admit` (may raise 429), awaits
    :meth:`wait` (may raise 503 if shed), and calls :meth:`leave` when done.
    """

    def __init__(
        self,
        config: AdmissionConfig,
        speed: Speed,
        engine: EngineState,
        *,
        on_shed: Callable[[Ticket], None],
        clock: Callable[[], float] = time.monotonic,
        unstarted: Callable[[], Iterable[Ticket]] = lambda: (),
    ) -> None:
        super().__init__(config, speed, engine, on_shed=on_shed, clock=clock, unstarted=unstarted)
        # Set when a request is queued; the shedding tick sleeps while nothing is.
        self.nonempty = asyncio.Event()

    def queued_tickets(self) -> list[Ticket]:
        """The tickets waiting in the queues now (any order)."""
        return [t for _, _, t in self._heap if t.waiting]

    def _new_ticket(self, **fields: Any) -> Ticket:
        return Ticket(**fields, released=asyncio.get_running_loop().create_future())

    def _settle(self, ticket: Ticket, outcome: str, why: str) -> None:
        super()._settle(ticket, outcome, why)
        if outcome == "released":
            ticket.released.set_result(None)
        elif not ticket.released.done():
            ticket.released.set_exception(
                ApiError(
                    503,
                    f"tier {ticket.tier.name!r}: request shed ({why}); retry later",
                    code="shed",
                    retry_after_s=1.0,
                )
            )

    def admit(self, ticket: Ticket) -> None:
        """Queue ``ticket``, or raise the ApiError (429) that rejects it at once.

        See :meth:`AdmissionQueue.admit`.
        """
        refusal = super().admit(ticket)
        if refusal is not None:
            raise ApiError(429, refusal.message, code=refusal.code, retry_after_s=refusal.retry_after_s)
        self.nonempty.set()

    async def wait(self, ticket: Ticket) -> None:
        """Wait until released to the engine; ApiError(503) if shed meanwhile.

        The caller must call :meth:`leave` once it is done with the engine (released
        tickets only). A cancelled waiter leaves the queue.
        """
        self.pump()
        try:
            await ticket.released
        except asyncio.CancelledError:
            self._dequeue(ticket)
            if ticket.released.done() and not ticket.released.cancelled() and ticket.released.exception() is None:
                self.leave(ticket)  # released at the very moment it was cancelled
            raise
