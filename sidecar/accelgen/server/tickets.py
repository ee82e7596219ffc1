"""The sidecar's ticket: the core's, with the future its handler awaits.

The ticket, the settings and the tier order are :mod:`accelgen.core.admission`'s; the
names are re-exported here for the sidecar's modules.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field

from accelgen.core.admission.tickets import AdmissionConfig, looseness
from accelgen.core.admission.tickets import Ticket as CoreTicket

__all__ = ["AdmissionConfig", "Ticket", "looseness"]


@dataclass(eq=False, slots=True)
class Ticket(CoreTicket):
    """One request's place in the sidecar (identity semantics)."""

    released: asyncio.Future[None] = field(repr=False, kw_only=True)

    @property
    def waiting(self) -> bool:
        """Queued, and its client still waits for it.

        A cancelled handler's future is cancelled at once, but the handler leaves the
        queue only when it next runs: until then the ticket is queued and not waiting,
        and must be neither released nor shed.
        """
        return self.queued and not self.released.done()
