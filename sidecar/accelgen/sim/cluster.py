"""A pool in simulated time: one arrival stream, a router, N full single-replica systems.

Each replica is :mod:`accelgen.sim.system`'s full system (the sidecar's admission in
front of a simulated engine running a core policy); the router is a core routing
policy (:mod:`accelgen.core.routing`) fed each replica's true state::

    arrivals ──► router.pick(request, [PodState of each replica], now)
                   │ pod i: enters replica i's sidecar now (its inbox)
                   │ queue: held at the router, offered again every retry_s, least slack first
                   │ shed:  a miss, counted as shed by the router
                   ▼
    replica 0 … N−1: SystemFront (admission) → EngineCore (policy, latency model)

One clock: before every router event (an arrival, a retry of the held requests) every
replica is advanced to that time, step by step, exactly as
:func:`accelgen.sim.engine.run_engine` advances one, except that a step still running
at that time stays in flight (its front sees what happens meanwhile). A request held at
the router reaches its pod with the targets its wait left it (as a gateway would pass
them in the ``x-llm-d-slo-*`` headers); it is judged from when the client sent it.
"""

from __future__ import annotations

import dataclasses
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from accelgen.core.admission import AdmissionConfig, Speed
from accelgen.core.latency import BatchShape, LatencyModel
from accelgen.core.policy import Policy
from accelgen.core.request import Request
from accelgen.core.routing import Decision, PodState, Router, RouteRequest, RouterQueue
from accelgen.core.routing.estimate import headroom_tokens
from accelgen.core.tiers import SLOTier, TierSet
from accelgen.sim.engine import SimStats, _planned, _record
from accelgen.sim.metrics import Recorder
from accelgen.sim.step import EngineCore, Step
from accelgen.sim.system import SystemFront
from accelgen.sim.workload import SimRequest

#: How often requests held at the router are offered again (the sidecar's shedding tick).
RETRY_S = 0.02
#: Prefill tokens whose marginal cost gives a pod's seconds per prefill token.
_PROBE_TOKENS = 512


class Replica:
    """One replica of the pool, advanced step-wise on the pool's clock."""

    def __init__(self, name: str, core: EngineCore, front: SystemFront, inbox: list[SimRequest]) -> None:
        self.name, self.core, self.front, self.inbox = name, core, front, inbox
        self.now_s = 0.0
        self.step: Step | None = None
        self.stats = SimStats()

    def route(self, request: SimRequest, now: float, tier: SLOTier | None) -> None:
        """``request`` reaches this replica's sidecar at ``now`` (with ``tier``'s targets).

        The replica has been advanced to ``now``: its sidecar handles the arrival at once,
        so the next decision sees it there.
        """
        self.inbox.append(dataclasses.replace(request, arrival_s=now))
        if tier is not None:
            self.front.tier_overrides[request.request_id] = tier
        if self.step is None:  # idle since now_s: nothing happened in between
            self.now_s = max(self.now_s, now)
        self.front.admit(self.core, now)

    def advance_to(self, until: float, recorder: Recorder, *, stop_at: float) -> None:
        """Run every step that starts by ``until`` (none after ``stop_at``); handle the front's events."""
        core, front, policy = self.core, self.front, self.core.policy
        while True:
            if self.step is not None:
                end = self.now_s + self.step.duration_s
                if end > until:
                    front.admit(core, until)  # what happens meanwhile; the step runs on
                    return
                self.now_s = end
                self.stats.ran(self.step)
                front.advance(core, end)
                _record(recorder, core, front, self.step, end)
                self.step = None
            front.admit(core, self.now_s)
            if policy.num_unfinished == 0 or self.now_s > stop_at:
                nxt = math.inf if front.done else front.next_s
                if math.isinf(nxt) or nxt > until or self.now_s > stop_at:
                    return
                self.now_s = max(self.now_s, nxt)
                continue
            step = core.plan(self.now_s)
            _planned(recorder, self.stats, front, step, self.now_s)
            if step.plan.is_empty:
                nxt = math.inf if front.done else front.next_s
                if math.isinf(nxt) or nxt > until:
                    return
                self.now_s = max(self.now_s, nxt)
                continue
            self.step = step

    def pod_state(self, now: float, *, tiers: TierSet, long_prompt_tokens: int) -> PodState:
        """What this replica's sidecar would report now (the truth: a perfect scrape)."""
        policy, model = self.core.policy, self.core.model
        queued = self.front.admission.queued_tickets()
        by_tier: dict[str, int] = {t.name: 0 for t in tiers}
        num_long = 0
        for t in queued:
            by_tier[t.tier.name] += t.num_prompt_tokens
            num_long += t.num_prompt_tokens >= long_prompt_tokens
        for r in (*policy.waiting(), *policy.running):
            if r.is_decoding or r.num_new_tokens <= 0:
                continue
            by_tier[r.tier.name] = by_tier.get(r.tier.name, 0) + r.num_new_tokens
            num_long += r.num_prompt_tokens >= long_prompt_tokens
        decode, per_token, tightest, min_slack = _batch_costs(policy.running, model, now)
        kv_free = policy.free_blocks * policy.limits.block_size_tokens
        total = policy.limits.num_kv_blocks
        return PodState(
            name=self.name,
            address=f"sim:{self.name}",
            waiting=len(queued) + policy.num_waiting,
            running=len(policy.running),
            kv_usage=1.0 - policy.free_blocks / total if total else 0.0,
            headroom=headroom_tokens(
                tiers,
                queued_tokens_by_tier=by_tier,
                decode_step_s=decode,
                prefill_s_per_token=per_token,
                tightest_tbt_s=tightest,
                kv_free_tokens=kv_free,
            ),
            queued_prefill_tokens=sum(by_tier.values()),
            queued_tokens_by_tier=by_tier,
            min_slack_s=min_slack,
            tightest_tbt_s=tightest,
            decode_step_s=decode,
            prefill_s_per_token=per_token,
            running_by_tier=_count_tiers(policy.running),
            long_prompts=num_long,
            max_num_seqs=policy.limits.max_num_seqs,
            kv_free_tokens=kv_free,
        )


def _count_tiers(requests: Sequence[Request]) -> dict[str, int]:
    counts: dict[str, int] = {}
    for r in requests:
        counts[r.tier.name] = counts.get(r.tier.name, 0) + 1
    return counts


def _batch_costs(
    running: Sequence[Request], model: LatencyModel, now: float
) -> tuple[float, float, float | None, float | None]:
    """Decode step time, seconds per prefill token, tightest TBT and least slack of a batch."""
    decodes = [r for r in running if r.is_decoding]
    shape = BatchShape(num_decodes=len(decodes), decode_kv_tokens=sum(r.num_tokens for r in decodes))
    decode_s = model.predict_s(shape)
    per_token = (model.predict_s(shape.plus_prefill(_PROBE_TOKENS, context_tokens=0)) - decode_s) / _PROBE_TOKENS
    tbts = [r.tier.tbt_slo_s for r in running if r.tier.tbt_slo_s is not None]
    slacks = [d - now for d in (r.next_token_deadline_s for r in decodes) if d is not None]
    return decode_s, max(per_token, 1e-9), min(tbts) if tbts else None, min(slacks) if slacks else None


@dataclass(slots=True)
class ClusterStats:
    """The pool's counters: each replica's engine, the router's decisions and their cost."""

    replicas: list[SimStats]
    routed: dict[str, int]
    held: int = 0  # requests the router queued at least once
    router_shed: int = 0
    decision_times_s: list[float] = field(default_factory=list)


def route_request(s: SimRequest, tier: SLOTier) -> RouteRequest:
    """The router's view of a simulated request (every request may be shed, as the sidecar does)."""
    return RouteRequest(
        tier=s.tier,
        prompt_tokens=s.prompt_tokens,
        expected_output_tokens=s.output_tokens,
        ttft_slo_s=tier.ttft_slo_s,
        tbt_slo_s=tier.tbt_slo_s,
        deadline_s=tier.deadline_s,
        sheddable=True,
        arrival_s=s.arrival_s,
        request_id=s.request_id,
    )


def _targets_left(tier: SLOTier, waited_s: float) -> SLOTier | None:
    """``tier`` with what a wait at the router left of its targets (None: no wait)."""
    if waited_s <= 0:
        return None
    if tier.is_offline:
        return dataclasses.replace(tier, deadline_s=max(1e-3, (tier.deadline_s or 0.0) - waited_s))
    return tier.with_targets(ttft_slo_s=max(1e-3, (tier.ttft_slo_s or 0.0) - waited_s), tbt_slo_s=None)


class _Pool:
    """The replicas, the router and its queue, on one clock."""

    def __init__(
        self, replicas: list[Replica], router: Router, recorder: Recorder, tiers: TierSet, **opts: float
    ) -> None:
        self.replicas, self.router, self.recorder, self.tiers = replicas, router, recorder, tiers
        self.stop_at = opts["stop_at"]
        self.long_prompt_tokens = int(opts["long_prompt_tokens"])
        self.held: RouterQueue[SimRequest] = RouterQueue()
        self.stats = ClusterStats([r.stats for r in replicas], {r.name: 0 for r in replicas})
        self._ever_held: set[str] = set()

    def advance(self, now: float) -> None:
        for replica in self.replicas:
            replica.advance_to(now, self.recorder, stop_at=self.stop_at)

    def states(self, now: float) -> list[PodState]:
        return [r.pod_state(now, tiers=self.tiers, long_prompt_tokens=self.long_prompt_tokens) for r in self.replicas]

    def offer(self, s: SimRequest, now: float, states: list[PodState] | None = None) -> None:
        """Ask the router where ``s`` goes now, and act on it.

        Args:
            states: The pods' states now, if known; the chosen pod's is brought up to
                date in place (one scrape serves a whole pass over the held requests).
        """
        tier = self.tiers.get(s.tier)
        request = route_request(s, tier)
        states = self.states(now) if states is None else states
        started = time.perf_counter()
        decision: Decision = self.router.pick(request, states, now)
        self.stats.decision_times_s.append(time.perf_counter() - started)
        if decision.pod is not None:
            i = next(i for i, r in enumerate(self.replicas) if r.name == decision.pod)
            replica = self.replicas[i]
            replica.route(s, now, _targets_left(tier, now - s.arrival_s))
            states[i] = replica.pod_state(now, tiers=self.tiers, long_prompt_tokens=self.long_prompt_tokens)
            self.stats.routed[replica.name] += 1
        elif decision.queue:
            self.held.push(request.first_token_deadline_s, s)
            if s.request_id not in self._ever_held:
                self._ever_held.add(s.request_id)
                self.stats.held += 1
        else:  # shed, or no ready pod: a miss
            self.recorder.refused(s.request_id, "shed")
            self.stats.router_shed += 1

    def retry(self, now: float) -> None:
        states = self.states(now)
        for s in self.held.ordered():
            self.offer(s, now, states)


def simulate_cluster(
    make_policy: Callable[[], Policy],
    requests: Sequence[SimRequest],
    *,
    replicas: int,
    router: Router,
    tiers: TierSet,
    model: LatencyModel,
    max_tokens: int,
    admission: AdmissionConfig,
    clairvoyant: bool = False,
    latency_noise: float = 0.0,
    seed: int = 0,
    drain_s: float = 600.0,
    long_prompt_tokens: int = 2048,
) -> tuple[Recorder, ClusterStats]:
    """Run ``requests`` (sorted by arrival) through ``router`` onto ``replicas`` full systems.

    Args:
        make_policy: A fresh engine policy per replica.
        replicas: How many (≥ 1).
        router: The routing policy (fresh).
        long_prompt_tokens: What a pod reports as a long prompt.
        Others: as :func:`accelgen.sim.system.simulate_system`, per replica (replica i's
            latency noise is seeded ``seed + i``).
    """
    if replicas < 1:
        raise ValueError("replicas must be at least 1")
    recorder = Recorder(requests, tiers, admission=True)
    pods = []
    for i in range(replicas):
        inbox: list[SimRequest] = []
        front = SystemFront(
            inbox,
            tiers=tiers,
            recorder=recorder,
            speed=Speed(model),
            config=admission,
            max_tokens=max_tokens,
            clairvoyant=clairvoyant,
        )
        core = EngineCore(make_policy(), model, latency_noise=latency_noise, seed=seed + i)
        pods.append(Replica(f"pod-{i}", core, front, inbox))
    stop_at = (requests[-1].arrival_s if requests else 0.0) + drain_s
    pool = _Pool(pods, router, recorder, tiers, stop_at=stop_at, long_prompt_tokens=long_prompt_tokens)
    _run(pool, requests)
    return recorder, pool.stats


def _run(pool: _Pool, requests: Sequence[SimRequest]) -> None:
    """Arrivals and retries of held requests in time order, then the drain."""
    index, next_retry = 0, math.inf
    while index < len(requests) or len(pool.held):
        arrival = requests[index].arrival_s if index < len(requests) else math.inf
        now = min(arrival, next_retry)
        pool.advance(now)
        if now > pool.stop_at:  # the run is over: what is still held never ran
            for s in pool.held.ordered():
                pool.recorder.refused(s.request_id, "shed")
                pool.stats.router_shed += 1
            break
        if now == next_retry:
            pool.retry(now)
        else:
            pool.offer(requests[index], now)
            index += 1
        if not len(pool.held):
            next_retry = math.inf
        elif math.isinf(next_retry) or now == next_retry:
            next_retry = now + RETRY_S
    pool.advance(math.inf)
