"""The sidecar's admission decisions, sans I/O: tickets, order keys, feasibility, the queue,
shedding and the release rule, with the speed and completion-rate estimates they need.

The sidecar (:mod:`accelgen.server.admission`) wraps :class:`AdmissionQueue` in asyncio
futures; the full-system simulator (:mod:`accelgen.sim.system`) drives the very same
class on simulated time. Neither the clock nor the engine's state is read here: both
are given.
"""

from accelgen.core.admission.queue import AdmissionQueue, EngineView, Refusal
from accelgen.core.admission.rate import CompletionRate
from accelgen.core.admission.speed import Speed
from accelgen.core.admission.tickets import AdmissionConfig, Ticket, looseness

__all__ = [
    "AdmissionConfig",
    "AdmissionQueue",
    "CompletionRate",
    "EngineView",
    "Refusal",
    "Speed",
    "Ticket",
    "looseness",
]
