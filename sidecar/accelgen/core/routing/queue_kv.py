"""``queue-kv``: the inference gateway's default scoring (GAIE's endpoint picker, llm-d's router).

What the Gateway API Inference Extension's endpoint picker and llm-d's inference
scheduler run out of the box: a weighted sum of per-pod scores, the highest wins, ties
broken at random (their ``max-score-picker``). The default scheduling profile, as the
published ``EndpointPickerConfig`` examples and llm-d's deployment guides give it, weighs

* ``queue-scorer`` 2: the pod's waiting queue (``vllm:num_requests_waiting``), min-max
  normalised over the candidates, 1 for the shortest queue, 0 for the longest (1 for
  all when they are equal);
* ``kv-cache-utilization-scorer`` 2: one minus the pod's KV-cache use
  (``vllm:kv_cache_usage_perc``);
* ``prefix-cache-scorer`` 3: the share of the prompt's blocks already cached on the
  pod. The simulated workloads share no prefixes, so it scores every pod alike and
  changes no decision; it is left out.

Where pods report the sidecar's queue in ``waiting`` (as AccelGen's do), this policy
sees it, as a gateway scraping them would.
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from typing import ClassVar

from accelgen.core.routing.types import Decision, PodState, RouteRequest, no_ready_pod

QUEUE_WEIGHT = 2.0
KV_WEIGHT = 2.0


class QueueKvRouter:
    """Max of 2 × queue score + 2 × KV score over the ready pods (module docstring)."""

    name: ClassVar[str] = "queue-kv"
    description: ClassVar[str] = "the gateway's default scorers: queue depth (2) + KV use (2)"

    def __init__(self, *, seed: int = 0, queue_weight: float = QUEUE_WEIGHT, kv_weight: float = KV_WEIGHT) -> None:
        self._rng = random.Random(seed)
        self.queue_weight, self.kv_weight = queue_weight, kv_weight

    def scores(self, pods: Sequence[PodState]) -> list[float]:
        """Each pod's total score, in the order given."""
        lo = min(p.waiting for p in pods)
        hi = max(p.waiting for p in pods)
        span = hi - lo
        return [
            self.queue_weight * (1.0 if span == 0 else (hi - p.waiting) / span)
            + self.kv_weight * (1.0 - min(1.0, max(0.0, p.kv_usage)))
            for p in pods
        ]

    def pick(self, request: RouteRequest, pods: Sequence[PodState], now: float) -> Decision:
        none = no_ready_pod(pods)
        if none is not None:
            return none
        ready = [p for p in pods if p.ready]
        scores = self.scores(ready)
        best = max(scores)
        tied = [p for p, s in zip(ready, scores, strict=True) if s >= best - 1e-12]
        pod = tied[0] if len(tied) == 1 else self._rng.choice(tied)
        return Decision(pod.name, reason=f"highest queue+kv score {best:.2f}")
