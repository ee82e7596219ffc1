"""``accelgen``: tier-aware placement from each pod's headroom, with pool-level flow control.

AccelGen's own router. Every pod reports, per tier, the prompt tokens it can still start
in that tier's target (:attr:`PodState.headroom`; estimated from the pod's queue and
latency model when it is not reported). A request fits a pod where its prompt fits that
headroom, less what its wait at the router has already spent::

    room = headroom[tier] − rate × (now − arrival)       fits where room ≥ prompt tokens

Placement among the pods it fits:

* a long prompt (≥ ``long_prompt_tokens``) goes to a pod that holds no other long
  prompt still prefilling (AccelGen's engine prefills one long prompt at a time, so a
  second one on the same pod only waits there), and of those to the one running the
  fewest requests of the tightest tier: every step that carries its chunks is planned
  up to the tightest running TBT, so that is where it costs the tight requests least;
  then the most room;
* a tight request (the tightest TBT of the tiers) goes where its TBT holds (one more
  decode fits in it), to a pod holding no long prompt where there is one (the steps that
  carry a long prompt's chunks are planned up to the tightest TBT, so the engine's
  latency noise makes their tokens late; a pod without one runs short decode steps),
  then where it has the most room (its first token comes soonest);
* other (looser, short) work goes where its own tier has the most room.

Flow control: when no pod fits the request now but its first-token deadline can still
be met (an idle pod would prefill it in time), the decision is ``queue``: the caller
holds it and asks again as pods change, least slack first (:class:`RouterQueue`), so it
goes to whichever pod frees first. Only a request that no pod could serve in time any
more is shed; a request that is not sheddable goes to the pod with the most room.
Where no pod reports more than vLLM's metrics, it places as ``queue-kv`` does.
"""

from __future__ import annotations

import heapq
import itertools
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import ClassVar, Generic, TypeVar

from accelgen.core.routing.estimate import pod_rate, predicted_tpot_s, request_urgency_s, tokens_ahead
from accelgen.core.routing.queue_kv import QueueKvRouter
from accelgen.core.routing.types import Decision, PodState, RouteRequest, no_ready_pod
from accelgen.core.tiers import SLOTier, TierSet

LONG_PROMPT_TOKENS = 2048  # PolicyConfig.long_prompt_tokens: the planner's exclusive allocation


class AccelGenRouter:
    """Tier-aware placement and flow control (module docstring).

    Args:
        seed: Seeds the gateway scoring it falls back to where no pod reports more than
            vLLM's metrics (otherwise the policy is deterministic).
        tiers: The pool's tiers (to tell tight from loose and order queued work).
        long_prompt_tokens: Prompts at least this long are spread one per pod.
    """

    name: ClassVar[str] = "accelgen"
    uses_tiers: ClassVar[bool] = True
    description: ClassVar[str] = "AccelGen: tier-aware placement by headroom, flow control at the router"

    def __init__(
        self, *, seed: int = 0, tiers: TierSet | None = None, long_prompt_tokens: int = LONG_PROMPT_TOKENS
    ) -> None:
        self.tiers: Mapping[str, SLOTier] | None = {t.name: t for t in tiers} if tiers is not None else None
        self.long_prompt_tokens = long_prompt_tokens
        tbts = [t.tbt_slo_s for t in tiers or () if t.tbt_slo_s is not None]
        self.tight_tbt_s = min(tbts) if tbts else None
        online = [t for t in tiers or () if t.tbt_slo_s == self.tight_tbt_s and not t.is_offline]
        self.tight_tier: SLOTier | None = online[0] if online else None
        self._blind = QueueKvRouter(seed=seed)

    def room(self, request: RouteRequest, pod: PodState, now: float) -> float:
        """Prompt tokens of the request's tier ``pod`` can still start in time, now."""
        rate = pod_rate(pod)
        waited_s = max(0.0, now - request.arrival_s)
        reported = pod.headroom.get(request.tier)
        if reported is not None:
            return reported - (rate or 0.0) * waited_s
        target_s = request.ttft_slo_s if request.ttft_slo_s is not None else request.deadline_s
        ahead = tokens_ahead(pod, request_urgency_s(request), self.tiers)
        if rate is None or ahead is None or target_s is None:
            return math.inf if pod.load == 0 else -math.inf  # nothing reported: idle pods only
        return rate * (target_s - waited_s - (pod.decode_step_s or 0.0)) - ahead

    def pick(self, request: RouteRequest, pods: Sequence[PodState], now: float) -> Decision:
        none = no_ready_pod(pods)
        if none is not None:
            return none
        ready = [p for p in pods if p.ready]
        if all(not p.headroom and pod_rate(p) is None for p in ready):
            blind = self._blind.pick(request, ready, now)  # NOTE: nothing to place by but the queues
            return Decision(blind.pod, reason=f"no pod reports headroom: {blind.reason}")
        rooms = {p.name: self.room(request, p, now) for p in ready}
        fits = [p for p in ready if rooms[p.name] >= request.prompt_tokens]
        if not fits:
            return self._no_fit(request, ready, rooms, now)
        if request.prompt_tokens >= self.long_prompt_tokens:
            free = [p for p in fits if p.long_prompts == 0]
            if not free and self._can_wait(request, ready, now, factor=2.0):
                return Decision(None, queue=True, reason="every pod that fits is prefilling a long prompt")
            pod = max(free or fits, key=lambda p: (-p.long_prompts, -self._tight_running(p), rooms[p.name]))
            return Decision(pod.name, reason="long prompt: a pod with no other long prompt" if free else "long prompt")
        if self._is_tight(request):
            tbt_ok = [p for p in fits if (predicted_tpot_s(p) or 0.0) <= (request.tbt_slo_s or math.inf)]
            pod = max(tbt_ok or fits, key=lambda p: (p.long_prompts == 0, rooms[p.name]))
            reason = "no long prompt there" if pod.long_prompts == 0 else "every pod holds a long prompt"
            return Decision(pod.name, reason=f"tight: its TBT holds, {reason}, most room")
        pod = max(fits, key=lambda p: rooms[p.name])
        return Decision(pod.name, reason="looser: most room")

    def _tight_running(self, pod: PodState) -> int:
        """The tightest tier's requests running on ``pod`` (all running when not reported)."""
        if self.tight_tier is None or not pod.running_by_tier:
            return pod.running
        return pod.running_by_tier.get(self.tight_tier.name, 0)

    def _is_tight(self, request: RouteRequest) -> bool:
        if request.tbt_slo_s is None:
            return False
        return self.tight_tbt_s is None or request.tbt_slo_s <= self.tight_tbt_s

    def _can_wait(self, request: RouteRequest, pods: Sequence[PodState], now: float, *, factor: float) -> bool:
        """An idle pod would still prefill it in time after waiting a little (``factor`` margin)."""
        deadline = request.first_token_deadline_s
        if deadline is None:
            return True
        rates = [r for r in (pod_rate(p) for p in pods) if r is not None]
        if not rates:
            return False
        best_s = request.prompt_tokens / max(rates)
        return now + factor * best_s < deadline

    def _no_fit(
        self, request: RouteRequest, ready: Sequence[PodState], rooms: Mapping[str, float], now: float
    ) -> Decision:
        if self._can_wait(request, ready, now, factor=1.0):
            return Decision(None, queue=True, reason="no pod has room for it now: held at the router")
        if request.sheddable:
            return Decision(None, shed=True, reason="no pod can serve it in time")
        pod = max(ready, key=lambda p: rooms[p.name])
        return Decision(pod.name, reason="no pod can serve it in time; not sheddable: most room")


T = TypeVar("T")


@dataclass(slots=True)
class RouterQueue(Generic[T]):
    """Requests held at the router, least slack (earliest first-token deadline) first.

    The caller pushes what a router answered ``queue`` for and, whenever pods change,
    offers them again in order with :meth:`ordered`.
    """

    _heap: list[tuple[float, int, T]] = field(default_factory=list)
    _seq: itertools.count[int] = field(default_factory=itertools.count)

    def __len__(self) -> int:
        return len(self._heap)

    def push(self, deadline_s: float | None, item: T) -> None:
        heapq.heappush(self._heap, (math.inf if deadline_s is None else deadline_s, next(self._seq), item))

    def ordered(self) -> list[T]:
        """Take every held item out, least slack first (push back what stays held)."""
        items = [heapq.heappop(self._heap)[2] for _ in range(len(self._heap))]
        return items
