"""The policy contract, modelled on vLLM's scheduler interface, and its shared bookkeeping.

Every policy — AccelGen and each baseline — owns the queue and the KV accounting of one
engine, exactly as vLLM's scheduler does, and is driven by the same loop::

    policy.add_request(request)                 # on arrival
    plan = policy.plan(now)                     # before each iteration
    emitted = policy.update(plan, now=end)      # after it: who produced a token
    policy.finish(request, now=end)             # EOS / stop (max_tokens finishes itself)
    policy.abort(request_id)                    # client gone

Subclasses implement :meth:`Policy._schedule` with the helpers below; "does not fit" is a
return value (:meth:`Policy._can_allocate`), never an exception.
"""

from __future__ import annotations

import bisect
import itertools
from abc import ABC, abstractmethod
from collections.abc import Iterable
from typing import ClassVar

from accelgen.core.config import PolicyConfig
from accelgen.core.latency import LatencyModel
from accelgen.core.plan import EngineLimits, IterationPlan, ScheduledChunk, shape_of
from accelgen.core.request import Request, blocks_for
from accelgen.core.tiers import TierSet

SortKey = tuple[float, ...]


class Policy(ABC):
    """Base class of all scheduling policies.

    Args:
        tiers: The configured SLO tiers.
        latency_model: Predicts iteration durations.
        limits: The engine's capacities.
        config: Tuning; each policy reads the fields it uses.
    """

    name: ClassVar[str] = ""
    description: ClassVar[str] = ""

    def __init__(
        self,
        *,
        tiers: TierSet,
        latency_model: LatencyModel,
        limits: EngineLimits,
        config: PolicyConfig | None = None,
    ) -> None:
        self.tiers = tiers
        self.model = latency_model
        self.limits = limits
        self.config = config or PolicyConfig()
        self.running: list[Request] = []
        # Sorted by (key..., seq); seq breaks ties in arrival order and keeps Requests
        # from ever being compared.
        self._waiting: list[tuple[SortKey, int, Request]] = []
        self._seq = itertools.count()
        self.free_blocks = limits.num_kv_blocks
        self.num_preemptions = 0
        self._preempted_now: list[Request] = []

    # ----------------------------------------------------------------- the contract

    def add_request(self, request: Request) -> None:
        """Queue a new request.

        Args:
            request: Fresh state (no computed tokens, no blocks).
        """
        self._enqueue(request)

    def plan(self, now: float) -> IterationPlan:
        """Decide the next iteration.

        Args:
            now: Current time on the caller's clock.

        Returns:
            The plan; KV for its chunks is already allocated. An empty plan means
            nothing can run now.
        """
        self._preempted_now = []
        chunks, budget, dropped = self._schedule(now)
        shape = shape_of(chunks)
        return IterationPlan(
            chunks=tuple(chunks),
            preempted=tuple(self._preempted_now),
            dropped=tuple(dropped),
            budget_tokens=budget,
            shape=shape,
            predicted_s=self.model.predict_s(shape) if chunks else 0.0,
        )

    def update(self, plan: IterationPlan, *, now: float) -> list[Request]:
        """Apply a finished iteration.

        Args:
            plan: The plan that ran.
            now: When it finished.

        Returns:
            The requests that produced an output token. Requests that reached
            ``max_tokens`` are finished here; the caller finishes the others on EOS.
        """
        emitted = []
        for chunk in plan.chunks:
            r = chunk.request
            r.num_computed_tokens += chunk.num_tokens
            if r.num_new_tokens == 0:  # the chunk completed the sequence: sample a token
                r.num_output_tokens += 1
                r.last_token_s = now
                emitted.append(r)
        for r in emitted:
            if r.num_output_tokens >= r.max_tokens:
                self.finish(r, now=now)
        return emitted

    def finish(self, request: Request, *, now: float) -> None:
        """The request is complete (EOS, stop or max_tokens): free its KV. Idempotent."""
        del now  # part of the contract; policies that learn from completions override
        request.finished = True
        self._release(request)

    def abort(self, request_id: str) -> Request | None:
        """Forget a request wherever it is; returns it, or None if unknown."""
        for r in self.running:
            if r.request_id == request_id:
                self._release(r)
                return r
        for i, (_, _, r) in enumerate(self._waiting):
            if r.request_id == request_id:
                del self._waiting[i]
                return r
        return None

    def requeue(self, request: Request, *, num_computed_tokens: int = 0, preempted: bool = False) -> None:
        """Send a running request back to the queue because its engine decided so.

        For an engine that overrides a plan (e.g. vLLM preempting on its own KV view, or
        not carrying out a planned admission). Args:
            request: A request this policy has running.
            num_computed_tokens: What the engine still holds computed for it (0 after a
                preemption by recompute).
            preempted: Count it as a preemption (in ``num_preemptions`` and the plan's
                ``preempted``), as when the policy itself preempts.
        """
        if preempted:
            self._preempt(request)
            return
        self._release(request)
        request.num_computed_tokens = num_computed_tokens
        self._enqueue(request)

    def set_latency_model(self, model: LatencyModel) -> None:
        """Plan with ``model`` from now on (e.g. once an engine has calibrated one)."""
        self.model = model
        self._on_latency_model()

    def _on_latency_model(self) -> None:  # noqa: B027 (a hook; most policies derive nothing)
        """Recompute whatever the policy derives from its latency model."""

    @property
    def num_waiting(self) -> int:
        return len(self._waiting)

    @property
    def num_unfinished(self) -> int:
        return len(self.running) + len(self._waiting)

    def waiting(self) -> Iterable[Request]:
        """Queued requests in the policy's order."""
        return (r for _, _, r in self._waiting)

    # ------------------------------------------------------------ for subclasses

    @abstractmethod
    def _schedule(self, now: float) -> tuple[list[ScheduledChunk], int, list[Request]]:
        """Choose chunks (allocating their KV); return (chunks, budget_tokens, dropped)."""

    def _queue_key(self, request: Request) -> SortKey:
        """Order of the waiting queue; arrival order by default."""
        return (request.arrival_s,)

    def _enqueue(self, request: Request, key: SortKey | None = None) -> None:
        """Insert into the waiting queue at ``key`` (default: :meth:`_queue_key`)."""
        entry = (self._queue_key(request) if key is None else key, next(self._seq), request)
        bisect.insort(self._waiting, entry)

    def _dequeue_at(self, index: int) -> Request:
        request = self._waiting.pop(index)[2]
        self.running.append(request)
        return request

    def _blocks_needed(self, request: Request, num_tokens: int) -> int:
        need = blocks_for(request.num_computed_tokens + num_tokens, self.limits.block_size_tokens)
        return max(0, need - request.num_blocks)

    def _can_allocate(self, request: Request, num_tokens: int) -> bool:
        return self._blocks_needed(request, num_tokens) <= self.free_blocks

    def _max_tokens_in_free_blocks(self, request: Request) -> int:
        """Most new tokens ``request`` can compute with the blocks it holds plus free ones."""
        capacity = (request.num_blocks + self.free_blocks) * self.limits.block_size_tokens
        return max(0, capacity - request.num_computed_tokens)

    def _allocate(self, request: Request, num_tokens: int) -> ScheduledChunk:
        need = self._blocks_needed(request, num_tokens)
        assert need <= self.free_blocks, "caller must check _can_allocate first"
        request.num_blocks += need
        self.free_blocks -= need
        return ScheduledChunk(request, num_tokens, request.num_computed_tokens)

    def _release(self, request: Request) -> None:
        self.free_blocks += request.num_blocks
        request.num_blocks = 0
        if request in self.running:
            self.running.remove(request)

    def _preempt(self, request: Request) -> None:
        """Free the victim's KV and send it back to the queue to recompute."""
        self._release(request)
        request.num_computed_tokens = 0
        request.num_preemptions += 1
        self.num_preemptions += 1
        self._preempted_now.append(request)
        self._enqueue(request)
