"""The routing contract: what a pod reports, what a request asks for, what the router decides.

A router places one request on one pod of a pool. It is sans-IO: the caller (the
cluster simulator, the gateway's endpoint picker) scrapes the pods, builds one
:class:`PodState` per pod, calls :meth:`Router.pick` with the time, and acts on the
:class:`Decision`::

    sidecars ──scrape──► [PodState, ...] ──┐
    request ──parse──► RouteRequest ───────┼─► Router.pick(request, pods, now) ─► Decision
                                           │        pod: send it there
                                           │        queue: hold it at the router, ask again
                                           │        shed: refuse it (429 if sheddable)
                                           │        none of these: no pod can take it (503)

Only the first six fields of :class:`PodState` are what an endpoint picker that knows
vLLM's metrics can fill; every other field has a default that means "not reported", and
each policy copes with it (falls back to the vLLM metrics).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import ClassVar, Protocol


@dataclass(frozen=True, slots=True)
class PodState:
    """One pod as its sidecar reports it (and the picker scrapes it).

    Args:
        name: The pod's name, unique in the pool.
        address: ``"host:port"`` to send its requests to.
        ready: Whether it takes requests now (a not-ready pod is never picked).
        waiting: Requests waiting: the sidecar's queues plus the engine's waiting queue.
        running: Requests the engine runs (released by the sidecar, holding KV).
        kv_usage: Fraction of the KV cache in use, 0..1.
        headroom: Per tier name, in **prompt tokens**: how many more prompt tokens of
            that tier's requests the pod can start now and still meet the tier's first
            token target (its deadline for an offline tier), given the work queued ahead
            of them and the prefill rate the running requests' TBT targets leave.
            A request of ``p`` prompt tokens fits where ``p <= headroom[tier]``; 0 (or
            less) means the tier is full there. A tier missing from the mapping is
            not reported (unknown), not full.
        queued_prefill_tokens: Prompt tokens not yet prefilled, over every request the
            pod holds (queued in the sidecar, waiting in or partly prefilled by the
            engine); ``None``: not reported.
        queued_tokens_by_tier: The same per tier name.
        min_slack_s: The smallest slack (time to its next-token deadline) of any running
            online request; ``None``: none running or not reported.
        tightest_tbt_s: The smallest TBT target of any running request (its next step
            must fit in it); ``None``: none or not reported.
        decode_step_s: The predicted duration of the engine's next step with its current
            running batch and no prefill (its latency model); ``None``: not reported.
        prefill_s_per_token: The latency model's marginal seconds per prefill token
            beside that batch; ``None``: not reported.
        running_by_tier: Running requests per tier name (empty: not reported).
        long_prompts: Long prompts the pod holds that have not finished their prefill
            (queued or in progress).
        max_num_seqs: The most requests its engine runs at once (0: not reported).
        kv_free_tokens: Tokens of KV still free (``None``: not reported).
    """

    name: str
    address: str
    ready: bool = True
    waiting: int = 0
    running: int = 0
    kv_usage: float = 0.0
    headroom: Mapping[str, float] = field(default_factory=dict)
    queued_prefill_tokens: int | None = None
    queued_tokens_by_tier: Mapping[str, int] = field(default_factory=dict)
    min_slack_s: float | None = None
    tightest_tbt_s: float | None = None
    decode_step_s: float | None = None
    prefill_s_per_token: float | None = None
    running_by_tier: Mapping[str, int] = field(default_factory=dict)
    long_prompts: int = 0
    max_num_seqs: int = 0
    kv_free_tokens: int | None = None

    @property
    def load(self) -> int:
        """Requests the pod holds: waiting plus running."""
        return self.waiting + self.running


@dataclass(frozen=True, slots=True)
class RouteRequest:
    """One request to place, as the router sees it.

    Args:
        tier: Its SLO tier's name.
        prompt_tokens: Prompt length.
        expected_output_tokens: Predicted output length (``max_tokens`` when unknown).
        ttft_slo_s: First-token target (online tiers), seconds from ``arrival_s``.
        tbt_slo_s: Time-between-tokens target (online tiers).
        deadline_s: Completion deadline from ``arrival_s`` (offline tiers).
        sheddable: May be refused under load (the gateway's "sheddable" criticality).
        arrival_s: When the client sent it, on the caller's clock (the router's queue
            counts its wait against the targets).
        request_id: For logs and the caller's bookkeeping only.
    """

    tier: str
    prompt_tokens: int
    expected_output_tokens: int = 1
    ttft_slo_s: float | None = None
    tbt_slo_s: float | None = None
    deadline_s: float | None = None
    sheddable: bool = False
    arrival_s: float = 0.0
    request_id: str = ""

    @property
    def is_offline(self) -> bool:
        return self.deadline_s is not None and self.ttft_slo_s is None

    @property
    def first_token_deadline_s(self) -> float | None:
        """When its first token is due (online) or its job (offline), on the caller's clock."""
        if self.ttft_slo_s is not None:
            return self.arrival_s + self.ttft_slo_s
        if self.deadline_s is not None:
            return self.arrival_s + self.deadline_s
        return None


@dataclass(frozen=True, slots=True)
class Decision:
    """What to do with a request.

    Exactly one of: ``pod`` set (send it there); ``queue`` (hold it at the router and
    ask again when pods change: pool-level flow control); ``shed`` (refuse it: no pod
    can serve it in time); or none of them (no pod is ready). ``reason`` says why, in
    words, for logs and metrics.
    """

    pod: str | None
    shed: bool = False
    reason: str = ""
    queue: bool = False

    def __post_init__(self) -> None:
        if sum((self.pod is not None, self.shed, self.queue)) > 1:
            raise ValueError("a decision routes, queues or sheds, not more than one")


def no_ready_pod(pods: Sequence[PodState]) -> Decision | None:
    """The decision every router returns when no pod is ready (``None`` if one is)."""
    if any(p.ready for p in pods):
        return None
    return Decision(None, reason="no ready pod" if pods else "no pods")


class Router(Protocol):
    """A routing policy.

    Implementations are constructed by :func:`accelgen.core.routing.make_router` with
    keyword options (at least ``seed``) and keep only their own small state (a
    round-robin cursor, a random generator).
    """

    name: ClassVar[str]
    description: ClassVar[str]

    def pick(self, request: RouteRequest, pods: Sequence[PodState], now: float) -> Decision:
        """Place ``request`` on one of ``pods`` at time ``now``.

        Args:
            request: The request.
            pods: Every pod of the pool, ready or not.
            now: The caller's clock (the router never reads one).

        Returns:
            A :class:`Decision` naming a ready pod of ``pods``, or one that queues, sheds
            or says no pod is ready (with a reason).
        """
        ...
