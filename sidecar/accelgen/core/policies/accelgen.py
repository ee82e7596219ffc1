"""``accelgen``: the AccelGen planner (Shen & Sen, arXiv 2503.13737), as ACCELGEN.md specifies.

One :meth:`AccelGenPolicy._schedule` call, every iteration::

    1. time limit   = min over running requests of (next-token deadline − now) − margin
                      (deadlines already lost do not constrain)            [invariant]
    2. decodes      in slack order, as many as fit the limit (prefix by bisection)
    3. budget S_b   = tokens of the decodes + the largest prefill that still fits the
                      limit (latency model inverted), capped by max_num_batched_tokens
    4. urgent set   queued requests with slack < one iteration, first, in slack order;
                    KV short → preempt the running request with the largest slack
    5. best fit     windows of candidates within γ of the window head's slack; pick the
                    demand (tokens/S_b, blocks/total) closest to what remains; a prompt
                    is cut where the batch reaches S_b, its KV or the time limit
    6. exclusive    a new long prompt starts only when no long prompt is mid-prefill

The queue is kept sorted by latest start time (see :mod:`accelgen.core.slack`), so the
planner touches the head of the queue and the running set, never the whole backlog.
"""

from __future__ import annotations

import math
from bisect import bisect_right
from collections import defaultdict

from accelgen.core.latency import BatchShape, max_prefill_tokens_within
from accelgen.core.plan import ScheduledChunk
from accelgen.core.policy import Policy, SortKey
from accelgen.core.request import Request
from accelgen.core.slack import latest_start_s

#: Queue key offset that sends requests whose TTFT is lost behind all others.
_LOST_S = 1e12


class AccelGenPolicy(Policy):
    name = "accelgen"
    description = "AccelGen: dynamic chunking, slack ordering, two-resource best fit"

    #: Drop (instead of deprioritise) requests that can no longer meet their SLO.
    drop_lost = False

    def __init__(self, **kwargs: object) -> None:
        super().__init__(**kwargs)  # type: ignore[arg-type]
        cfg, limits = self.config, self.limits
        tbt_s = self.tiers.tightest_tbt_s
        if tbt_s is None:
            self.ref_chunk_tokens = limits.max_num_batched_tokens
            self.ref_iteration_s = self.model.predict_s(
                BatchShape().plus_prefill(limits.max_num_batched_tokens, context_tokens=0)
            )
        else:
            chunk = max_prefill_tokens_within(
                self.model,
                tbt_s - cfg.safety_margin_s,
                base=BatchShape(),
                context_tokens=0,
                cap_tokens=limits.max_num_batched_tokens,
            )
            self.ref_chunk_tokens = max(chunk, 1)
            self.ref_iteration_s = tbt_s
        self._outputs_by_tier: dict[str, list[int]] = defaultdict(lambda: [0, 0])

    # ------------------------------------------------------------------- slack

    def expected_output_tokens(self, request: Request) -> int:
        """The oracle's truth, else the tier's running mean, else ``max_tokens``."""
        if request.expected_output_tokens is not None:
            return request.expected_output_tokens
        total, count = self._outputs_by_tier[request.tier.name]
        return round(total / count) if count else request.max_tokens

    def _latest_start(self, request: Request) -> float:
        return latest_start_s(
            request,
            ref_iteration_s=self.ref_iteration_s,
            ref_chunk_tokens=self.ref_chunk_tokens,
            expected_output_tokens=self.expected_output_tokens(request),
        )

    def _running_slack(self, request: Request, now: float) -> float:
        if request.is_decoding and request.tier.tbt_slo_s is not None:
            assert request.last_token_s is not None
            return request.last_token_s + request.tier.tbt_slo_s - now
        return self._latest_start(request) - now

    def _queue_key(self, request: Request) -> SortKey:
        if not self.config.slo_ordering:
            return (request.arrival_s,)
        return (self._latest_start(request),)

    def _is_lost(self, request: Request, now: float) -> bool:
        """A queued request that can no longer make its TTFT (or job deadline)."""
        if request.last_token_s is not None:
            return False  # started: it can still meet its SLO with a late token or two
        deadline = request.ttft_deadline_s or request.job_deadline_s
        return deadline is not None and deadline < now

    def finish(self, request: Request, *, now: float) -> None:
        if request.finished:
            return
        stats = self._outputs_by_tier[request.tier.name]
        stats[0] += request.num_output_tokens
        stats[1] += 1
        super().finish(request, now=now)

    # ---------------------------------------------------------------- planning

    def _time_limit_s(self, now: float) -> float:
        """The invariant: no iteration outlasts any running request's next deadline."""
        if not self.config.dynamic_chunking:
            return math.inf
        limit = math.inf
        for r in self.running:
            tbt = r.tier.tbt_slo_s
            if tbt is not None and r.last_token_s is not None:
                remaining = r.last_token_s + tbt - now
                if 0.0 < remaining < limit:
                    limit = remaining
        return limit - self.config.safety_margin_s if limit < math.inf else limit

    def _schedule(self, now: float) -> tuple[list[ScheduledChunk], int, list[Request]]:
        limit_s = self._time_limit_s(now)
        cap = self.limits.max_num_batched_tokens
        decodes = [r for r in self.running if r.is_decoding]
        prefilling = [r for r in self.running if not r.is_decoding]
        chunks, shape = self._schedule_decodes(decodes, now, limit_s, cap)
        left = cap - shape.num_tokens
        if limit_s < math.inf:
            left = max_prefill_tokens_within(
                self.model, limit_s, base=shape, context_tokens=0, cap_tokens=left
            )
        budget = shape.num_tokens + left
        dropped: list[Request] = []
        if left > 0:
            candidates = self._candidates(prefilling, now, dropped)
            self._schedule_prefills(candidates, chunks, shape, budget, limit_s, now)
        return chunks, budget, dropped

    def _schedule_decodes(
        self, decodes: list[Request], now: float, limit_s: float, cap: int
    ) -> tuple[list[ScheduledChunk], BatchShape]:
        if self.config.slo_ordering:
            decodes.sort(key=lambda r: self._running_slack(r, now))
        else:
            decodes.sort(key=lambda r: r.arrival_s)
        # Largest prefix of the slack order whose iteration fits the limit (at least one).
        kv_prefix = [0]
        for r in decodes:
            kv_prefix.append(kv_prefix[-1] + r.num_computed_tokens)
        n = min(len(decodes), cap)
        if limit_s < math.inf and n > 1:
            def fits(k: int) -> bool:
                return self.model.predict_s(BatchShape(num_decodes=k, decode_kv_tokens=kv_prefix[k])) <= limit_s
            if not fits(n):
                lo, hi = 1, n
                while hi - lo > 1:
                    mid = (lo + hi) // 2
                    lo, hi = (mid, hi) if fits(mid) else (lo, mid)
                n = lo
        chunks: list[ScheduledChunk] = []
        kv_tokens = 0
        for r in decodes[:n]:
            if not r.is_decoding:
                continue  # preempted to make room for a tighter decode
            if not self._can_allocate(r, 1) and not self._make_room(r, 1, chunks, now):
                continue
            chunks.append(self._allocate(r, 1))
            kv_tokens += r.num_computed_tokens
        return chunks, BatchShape(num_decodes=len(chunks), decode_kv_tokens=kv_tokens)

    def _candidates(
        self, prefilling: list[Request], now: float, dropped: list[Request]
    ) -> list[tuple[float, Request]]:
        """Prompts in progress and the head of the queue as (order, request), sorted.

        The order is slack (arrival time when SLO ordering is off). Queued requests
        found lost on the way are re-queued last (or dropped, for the oracle).
        """
        ordered = self.config.slo_ordering
        cands = [
            (self._latest_start(r) - now if ordered else r.arrival_s, r) for r in prefilling
        ]
        i = 0
        while i < len(self._waiting) and len(cands) < 4 * self.config.max_window:
            key, _, r = self._waiting[i]
            if key[0] < _LOST_S and self.config.deprioritize_lost and self._is_lost(r, now):
                del self._waiting[i]
                if self.drop_lost:
                    dropped.append(r)
                else:
                    self._enqueue(r, (_LOST_S + r.arrival_s,))
                continue
            cands.append((key[0] - now if ordered else key[0], r))
            i += 1
        cands.sort(key=lambda c: c[0])
        return cands

    def _schedule_prefills(
        self,
        candidates: list[tuple[float, Request]],
        chunks: list[ScheduledChunk],
        shape: BatchShape,
        budget: int,
        limit_s: float,
        now: float,
    ) -> None:
        cfg = self.config
        long_tokens = cfg.long_prompt_tokens
        busy_long = {r for _, r in candidates if r.num_prompt_tokens >= long_tokens and r.num_computed_tokens > 0}
        left = budget - shape.num_tokens
        total_blocks = self.limits.num_kv_blocks
        urgent_s = self.ref_iteration_s if cfg.slo_ordering else -math.inf
        pending = list(candidates)

        def eligible(r: Request) -> bool:
            if r.num_prompt_tokens >= long_tokens and r.num_computed_tokens == 0 and busy_long:
                return False  # exclusive long-prompt allocation
            # NOTE: a request holds KV blocks exactly while it is running.
            return r.num_blocks > 0 or len(self.running) < self.limits.max_num_seqs

        def demand(r: Request) -> int:
            return min(r.num_new_tokens, left, self._max_tokens_in_free_blocks(r))

        def take(r: Request) -> bool:
            """Schedule r's next chunk; False when the time limit is reached."""
            nonlocal shape, left
            n = demand(r)
            if limit_s < math.inf:
                n = max_prefill_tokens_within(
                    self.model, limit_s, base=shape, context_tokens=r.num_computed_tokens, cap_tokens=n
                )
            if n <= 0:
                return False
            if r.num_blocks == 0:
                self._dequeue_at(self._waiting_index(r))
            chunk = self._allocate(r, n)
            chunks.append(chunk)
            shape = shape.plus_prefill(n, context_tokens=chunk.context_tokens)
            left -= n
            if r in busy_long and r.num_new_tokens == n:
                busy_long.discard(r)
            return True

        # Urgent set first, in slack order; KV short → preempt the largest slack.
        while pending and pending[0][0] < urgent_s and left > 0:
            slack, r = pending.pop(0)
            if not eligible(r):
                continue
            want = min(r.num_new_tokens, left)
            if self._max_tokens_in_free_blocks(r) < want:
                self._make_room(r, want, chunks, now, slack)  # best effort
            if demand(r) > 0 and not take(r):
                return
        # Then windows of similar slack, best fit on (tokens, blocks).
        while pending and left > 0 and self.free_blocks > 0:
            head = pending[0][0]
            end = bisect_right([s for s, _ in pending], head + cfg.gamma_s) if cfg.slo_ordering else len(pending)
            window = [r for _, r in pending[: min(end, cfg.max_window) or 1]]
            del pending[: len(window)]
            while window and left > 0:
                best: Request | None = None
                best_dist = math.inf
                for r in window:
                    if not eligible(r):
                        continue
                    d_c = demand(r)
                    if d_c <= 0:
                        continue
                    if not cfg.best_fit:
                        best = r
                        break
                    d_m = self._blocks_needed(r, d_c)
                    dist = math.hypot((left - d_c) / budget, (self.free_blocks - d_m) / total_blocks)
                    if dist < best_dist:
                        best, best_dist = r, dist
                if best is None:
                    break
                window.remove(best)
                if not take(best):
                    return

    def _waiting_index(self, request: Request) -> int:
        for i, (_, _, r) in enumerate(self._waiting):
            if r is request:
                return i
        raise ValueError(f"{request.request_id} is not waiting")

    def _make_room(
        self,
        request: Request,
        num_tokens: int,
        chunks: list[ScheduledChunk],
        now: float,
        slack_s: float | None = None,
    ) -> bool:
        """Preempt running requests with more slack than ``request`` until it fits."""
        if slack_s is None:
            slack_s = self._running_slack(request, now)
        scheduled = {c.request for c in chunks}
        victims = sorted(
            (
                (self._running_slack(r, now), r)
                for r in self.running
                if r is not request and r not in scheduled
            ),
            key=lambda v: v[0],
        )
        while not self._can_allocate(request, num_tokens):
            if not victims or victims[-1][0] <= slack_s:
                return False
            self._preempt(victims.pop()[1])
        return True
