"""``accelgen``: the AccelGen planner (Shen & Sen, arXiv 2503.13737).

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

import functools
import math
from bisect import bisect_right
from collections import defaultdict
from collections.abc import Callable, Sequence
from operator import itemgetter

from accelgen.core.latency import BatchShape, max_prefill_tokens_within
from accelgen.core.output_lengths import OutputLengths
from accelgen.core.plan import ScheduledChunk, shape_of
from accelgen.core.policy import Policy, SortKey
from accelgen.core.request import Request, blocks_for
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
        self._outputs_by_tier: dict[str, list[int]] = defaultdict(lambda: [0, 0])
        self._learned = (
            OutputLengths(quantile=self.config.output_quantile) if self.config.output_lengths == "learned" else None
        )
        self._on_latency_model()

    def _on_latency_model(self) -> None:
        """The reference chunk and iteration that slack is measured in, from the model."""
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
        self._min_iteration_s = self.model.predict_s(BatchShape(num_decodes=1))
        # NOTE: queued requests keep the keys they were sorted by; new ones use the new
        # references. The order stays consistent; only its estimate improves.

    # ------------------------------------------------------------------- slack

    def expected_output_tokens(self, request: Request) -> int:
        """The oracle's truth, else the prediction ``config.output_lengths`` names: the
        learned quantile given the tokens produced so far, or the tier's running mean
        (either falls back to ``max_tokens`` with no history)."""
        if request.expected_output_tokens is not None:
            return request.expected_output_tokens
        if self._learned is not None:
            return self._learned.predict(
                request.tier.name,
                request.num_prompt_tokens,
                produced=request.num_output_tokens,
                max_tokens=request.max_tokens,
            )
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
        if self._learned is not None:
            self._learned.observe(request.tier.name, request.num_prompt_tokens, request.num_output_tokens)
        super().finish(request, now=now)

    # ---------------------------------------------------------------- planning

    def _scan_running(self, now: float) -> tuple[list[Request], list[Request], float]:
        """One pass over the running set: (decodes in slack order, prompts in progress, time limit).

        The time limit is the invariant: no iteration outlasts any running request's
        next deadline. A deadline closer than the cheapest possible iteration (one lone
        decode) is already lost and does not constrain. [ours] Its request's clock
        restarts instead: the token after the late one is due one TBT after it, so the
        iteration is still held to one TBT and one overrun does not become a run of
        full-budget iterations that loses every deadline again.

        A decode's slack is its next-token deadline (its latest start when it has no TBT
        target) minus ``now``; sorting by the deadline gives the same order.

        NOTE: the planner's hot loop (every running request, every iteration), hence
        the inlined ``is_decoding`` and the single pass.
        """
        ordered = self.config.slo_ordering
        shortest = self._min_iteration_s + self.config.safety_margin_s
        limit = math.inf
        keyed: list[tuple[float, Request]] = []
        prefilling: list[Request] = []
        for r in self.running:
            tbt = r.tier.tbt_slo_s
            last = r.last_token_s
            deadline = None
            if tbt is not None and last is not None:
                deadline = last + tbt
                remaining = deadline - now
                if remaining <= shortest:
                    remaining = tbt
                if remaining < limit:
                    limit = remaining
            outputs = r.num_output_tokens
            if outputs > 0 and r.num_prompt_tokens + outputs - r.num_computed_tokens == 1:
                if not ordered:
                    keyed.append((r.arrival_s, r))
                else:
                    keyed.append((self._latest_start(r) if deadline is None else deadline, r))
            else:
                prefilling.append(r)
        keyed.sort(key=itemgetter(0))
        limit_s = limit - self.config.safety_margin_s if self.config.dynamic_chunking else math.inf
        return [r for _, r in keyed], prefilling, limit_s

    def _schedule(self, now: float) -> tuple[list[ScheduledChunk], int, list[Request]]:
        decodes, prefilling, limit_s = self._scan_running(now)
        cap = self.limits.max_num_batched_tokens
        admitting = bool(self._waiting) and (self.drop_lost or len(self.running) < self.limits.max_num_seqs)
        deferred = self._deferrable(decodes, prefilling, now, limit_s, admitting=admitting)
        if deferred:
            decodes = decodes[: len(decodes) - len(deferred)]
        chunks, shape = self._schedule_decodes(decodes, now, limit_s, cap)
        if self._preempted_now:  # the decodes preempted some running requests
            gone = set(self._preempted_now)
            prefilling = [r for r in prefilling if r not in gone]
        left = cap - shape.num_tokens
        if limit_s < math.inf:
            left = max_prefill_tokens_within(self.model, limit_s, base=shape, context_tokens=0, cap_tokens=left)
        budget = shape.num_tokens + left
        dropped: list[Request] = []
        # Only prompts in progress and admissions use the rest; with neither possible
        # (the common decode-only step) there is nothing to pack.
        if left > 0 and (prefilling or admitting):
            candidates = self._candidates(prefilling, now, dropped, admitting=admitting)
            self._schedule_prefills(candidates, chunks, shape, budget, limit_s, now)
        if deferred:
            # What time the prefills left goes to the decodes that could wait.
            more, _ = self._schedule_decodes(deferred, now, limit_s, cap, base=shape_of(chunks))
            chunks.extend(more)
            budget = max(budget, shape_of(chunks).num_tokens)
        return chunks, budget, dropped

    def _deferrable(
        self, decodes: list[Request], prefilling: list[Request], now: float, limit_s: float, *, admitting: bool
    ) -> list[Request]:
        """The decodes that yield this iteration's time to prompts with less slack: a suffix of ``decodes``.

        [ours] The paper's slack order across the whole batch: when the time limit
        leaves too little for the prompts ahead of them, the batched requests with the
        largest slack give way. A decode may wait when its slack exceeds both the head
        prompt's (a prompt in progress, or the head of the queue) and two reference
        iterations: this one and the next, which the time limit then holds to its
        deadline, so it still gets its token in time. Offline decodes (a job deadline,
        no TBT) and looser TBT tiers are the ones that qualify; the tightest tier's
        decodes never do. They run after the prompts, in what time is left, so a step
        with time to spare runs them all as before.
        """
        if limit_s == math.inf or not decodes or not (prefilling or admitting):
            return []
        head_s = min((self._latest_start(r) for r in prefilling), default=math.inf)
        if admitting:
            head_s = min(head_s, self._waiting[0][0][0])
        if head_s >= _LOST_S:
            return []  # only requests that lost their TTFT wait: nothing to yield to
        wait_s = max(head_s, now + 2 * self.ref_iteration_s)
        n = len(decodes)
        while n > 0 and self._running_slack(decodes[n - 1], now) + now > wait_s:
            n -= 1
        return decodes[n:]

    def _schedule_decodes(
        self, decodes: list[Request], now: float, limit_s: float, cap: int, *, base: BatchShape | None = None
    ) -> tuple[list[ScheduledChunk], BatchShape]:
        """The largest prefix of the slack order whose iteration fits the limit.

        Alone (no ``base``), at least one decode runs. Beside a ``base`` of work
        already planned (decodes that waited for the prompts), none may run when
        none fits: the planned work is the step's.
        """
        model = self.model
        room = cap if base is None else cap - base.num_tokens
        n = max(min(len(decodes), room), 0)
        least = 1 if base is None else 0
        if limit_s < math.inf and n > least:
            kv_prefix = [0]
            for r in decodes:
                kv_prefix.append(kv_prefix[-1] + r.num_computed_tokens)
            start = BatchShape() if base is None else base

            def fits(k: int) -> bool:
                return model.predict_s(start.plus_decodes(k, kv_prefix[k])) <= limit_s

            if not fits(n):
                lo, hi = least, n
                while hi - lo > 1:
                    mid = (lo + hi) // 2
                    lo, hi = (mid, hi) if fits(mid) else (lo, mid)
                n = lo
        chunks: list[ScheduledChunk] = []
        block_size = self.limits.block_size_tokens
        for r in decodes[:n]:
            computed = r.num_computed_tokens
            if computed == 0:
                continue  # preempted to make room for a tighter decode
            # A decode needs a new block exactly when its computed tokens fill its blocks.
            if computed % block_size == 0:
                # Beside planned work, a decode that waited preempts nobody (the
                # victims' chunks may be in that work): with no block free it waits on.
                if self.free_blocks == 0 and (
                    base is not None
                    or not self._make_room(
                        r,
                        chunks,
                        now,
                        self._running_slack(r, now),
                        fits=functools.partial(self._fits_decode, r),
                    )
                ):
                    continue
                r.num_blocks += 1
                self.free_blocks -= 1
            chunks.append(ScheduledChunk(r, 1, computed))
        # NOTE: summed at the end: _make_room removes its victims' chunks from ``chunks``.
        return chunks, (base or BatchShape()).plus_decodes(len(chunks), sum(c[2] for c in chunks))

    def _candidates(
        self, prefilling: list[Request], now: float, dropped: list[Request], *, admitting: bool
    ) -> list[tuple[float, Request]]:
        """Prompts in progress and (when ``admitting``) the head of the queue as (order, request), sorted.

        The order is slack (arrival time when SLO ordering is off). Queued requests
        found lost on the way are re-queued last (or dropped, for the oracle).
        """
        ordered = self.config.slo_ordering
        cands = [(self._latest_start(r) - now if ordered else r.arrival_s, r) for r in prefilling]
        i = 0
        while admitting and i < len(self._waiting) and len(cands) < 4 * self.config.max_window:
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
        packer = _Packer(self, chunks, shape, budget, limit_s, candidates)
        pending = list(candidates)
        # Urgent set first, in slack order; KV short → preempt the largest slack.
        urgent_s = self.ref_iteration_s if cfg.slo_ordering else -math.inf
        while pending and pending[0][0] < urgent_s and packer.left > 0:
            slack, r = pending.pop(0)
            if not packer.eligible(r, check_kv=False):
                continue
            want = min(r.num_new_tokens, packer.left)
            if not packer.fits_kv(r, want) and self._make_room(
                r, chunks, now, slack, fits=functools.partial(packer.fits_kv, r, want)
            ):
                packer.resync()
            if packer.eligible(r):
                packer.take(r)
        # Then windows of similar slack, best fit on (tokens, blocks).
        while pending and packer.left > 0 and self.free_blocks > 0 and not packer.out_of_time:
            head = pending[0][0]
            end = len(pending)
            if cfg.slo_ordering:
                end = bisect_right([s for s, _ in pending], head + cfg.gamma_s)
            window = [r for _, r in pending[: max(min(end, cfg.max_window), 1)]]
            del pending[: len(window)]
            while window and packer.left > 0 and not packer.out_of_time:
                best = packer.best_fit(window) if cfg.best_fit else packer.first_fit(window)
                if best is None:
                    break
                window.remove(best)
                packer.take(best)

    def _waiting_index(self, request: Request) -> int:
        for i, (_, _, r) in enumerate(self._waiting):
            if r is request:
                return i
        raise ValueError(f"{request.request_id} is not waiting")

    def _fits_decode(self, request: Request, gone: Sequence[Request]) -> bool:
        return self._blocks_needed(request, 1) <= self.free_blocks + sum(v.num_blocks for v in gone)

    def _make_room(
        self,
        request: Request,
        chunks: list[ScheduledChunk],
        now: float,
        slack_s: float,
        *,
        fits: Callable[[Sequence[Request]], bool],
    ) -> bool:
        """Preempt running requests with more slack than ``request`` until it fits.

        ``fits(gone)`` says whether ``request`` would fit were ``gone`` preempted;
        nobody is preempted unless the victims together make room.

        [ours] A request that is not running yet may only displace offline work whose
        slack still covers recomputing it: evicting an online request to admit a new
        one trades a sure late token (and the recompute) for a maybe, and under KV
        pressure that trade repeated is thrashing.
        """
        admitting = request.num_blocks == 0
        victims = []
        for r in self.running:
            if r is request:
                continue
            slack = self._running_slack(r, now)
            if admitting:
                if r.tier.deadline_s is None:
                    continue
                slack -= self.model.predict_s(BatchShape().plus_prefill(r.num_computed_tokens, context_tokens=0))
            if slack > slack_s:
                victims.append((slack, r))
        victims.sort(key=lambda v: v[0], reverse=True)
        # Decide on the untouched state: the fewest largest-slack victims that suffice.
        gone: list[Request] = []
        for _, victim in victims:
            gone.append(victim)
            if fits(gone):
                break
        else:
            return False
        for victim in gone:
            self._preempt(victim)
            chunks[:] = [c for c in chunks if c.request is not victim]
        return True


class _Packer:
    """Per-iteration state of prefill packing: what is left of tokens, KV and time.

    Also enforces exclusive long-prompt allocation and the two admission checks of
    ``PolicyConfig``: ``decode_fraction`` (decode load) and ``reserve_kv`` (KV for the
    predicted outputs). Their running sums are built on first use: most iterations
    admit nobody and never need them.
    """

    def __init__(
        self,
        policy: AccelGenPolicy,
        chunks: list[ScheduledChunk],
        shape: BatchShape,
        budget: int,
        limit_s: float,
        candidates: list[tuple[float, Request]],
    ) -> None:
        self.policy = policy
        self.chunks = chunks
        self.budget = budget
        self.limit_s = limit_s
        self.out_of_time = False
        self.long_tokens = policy.config.long_prompt_tokens
        self.busy_long = {
            r for _, r in candidates if r.num_prompt_tokens >= self.long_tokens and r.num_computed_tokens > 0
        }
        self._start(shape)

    def resync(self) -> None:
        """Re-derive the batch state from ``chunks``, e.g. after preemptions."""
        self._start(shape_of(self.chunks))

    def _start(self, shape: BatchShape) -> None:
        self.shape = shape
        self.left = self.budget - shape.num_tokens
        # A request preempted while packing is re-queued and may be met again.
        self.scheduled = {c.request for c in self.chunks}
        self._load: list[float] | None = None
        self._reserved: int | None = None

    def _decode_load(self) -> list[float]:
        """[requests decoding, their KV tokens, tightest TBT] once all running decode."""
        if self._load is None:
            running = self.policy.running
            tbts = [r.tier.tbt_slo_s for r in running if r.tier.tbt_slo_s is not None]
            self._load = [len(running), sum(r.num_tokens for r in running), min(tbts, default=math.inf)]
        return self._load

    def _reserved_blocks(self) -> int:
        """Blocks the running requests will still claim for the rest of their outputs."""
        if self._reserved is None:
            self._reserved = sum(self._future_blocks(r) - r.num_blocks for r in self.policy.running)
        return self._reserved

    def _future_blocks(self, r: Request) -> int:
        """Blocks ``r`` holds at the end of its predicted output."""
        remaining = max(self.policy.expected_output_tokens(r) - r.num_output_tokens, 0)
        return blocks_for(r.num_tokens + remaining, self.policy.limits.block_size_tokens)

    def eligible(self, r: Request, *, check_kv: bool = True) -> bool:
        policy = self.policy
        if r in self.scheduled:
            return False
        if r.num_blocks > 0:  # NOTE: a request holds KV blocks exactly while it runs
            return True
        if r.num_prompt_tokens >= self.long_tokens and r.num_computed_tokens == 0 and self.busy_long:
            return False  # exclusive long-prompt allocation
        if len(policy.running) >= policy.limits.max_num_seqs:
            return False
        if check_kv and not self.fits_kv(r, 1):
            return False
        if not policy.running:
            return True  # an idle engine serves anything it can hold, however tight its TBT
        num_decoding, kv_tokens, tightest_s = self._decode_load()
        tbt_s = min(tightest_s, r.tier.tbt_slo_s or math.inf)
        if tbt_s == math.inf:
            return True
        step = BatchShape(num_decodes=int(num_decoding) + 1, decode_kv_tokens=int(kv_tokens) + r.num_tokens)
        return policy.model.predict_s(step) <= policy.config.decode_fraction * tbt_s

    def fits_kv(self, r: Request, num_tokens: int, gone: Sequence[Request] = ()) -> bool:
        """KV for ``num_tokens`` more of ``r`` — and, to admit it, for its whole
        predicted life — were the requests in ``gone`` preempted."""
        policy = self.policy
        free = policy.free_blocks + sum(v.num_blocks for v in gone)
        if policy._blocks_needed(r, num_tokens) > free:
            return False
        if r.num_blocks > 0 or not policy.config.reserve_kv:
            return True
        reserved = self._reserved_blocks() - sum(self._future_blocks(v) - v.num_blocks for v in gone)
        return self._future_blocks(r) <= free - reserved

    def demand(self, r: Request) -> int:
        return min(r.num_new_tokens, self.left, self.policy._max_tokens_in_free_blocks(r))

    def take(self, r: Request) -> None:
        """Schedule ``r``'s next chunk, cut to tokens, KV and time left."""
        policy = self.policy
        n = self.demand(r)
        if self.limit_s < math.inf and n > 0:
            n = max_prefill_tokens_within(
                policy.model, self.limit_s, base=self.shape, context_tokens=r.num_computed_tokens, cap_tokens=n
            )
            if n == 0:
                # Nothing more of this context fits; a fresh short prompt might.
                self.out_of_time = r.num_computed_tokens == 0
                return
        if n <= 0:
            return
        admitted = r.num_blocks == 0
        if admitted:
            policy._dequeue_at(policy._waiting_index(r))
            if self._load is not None:
                self._load[0] += 1
                self._load[1] += r.num_tokens
                self._load[2] = min(self._load[2], r.tier.tbt_slo_s or math.inf)
        if self._reserved is not None and admitted:
            self._reserved += self._future_blocks(r)
        blocks_before = r.num_blocks
        chunk = policy._allocate(r, n)
        if self._reserved is not None:
            self._reserved -= r.num_blocks - blocks_before
        self.chunks.append(chunk)
        self.scheduled.add(r)
        self.shape = self.shape.plus_prefill(n, context_tokens=chunk.context_tokens)
        self.left -= n
        if r in self.busy_long and r.num_new_tokens == n:
            self.busy_long.discard(r)

    def first_fit(self, window: list[Request]) -> Request | None:
        return next((r for r in window if self.eligible(r) and self.demand(r) > 0), None)

    def best_fit(self, window: list[Request]) -> Request | None:
        """The candidate whose (tokens, blocks) demand is closest to what remains."""
        policy = self.policy
        total_blocks = policy.limits.num_kv_blocks
        free = policy.free_blocks
        best: Request | None = None
        best_dist = math.inf
        for r in window:
            d_c = self.demand(r)
            if d_c <= 0 or not self.eligible(r):
                continue
            d_m = policy._blocks_needed(r, d_c)
            dist = math.hypot((self.left - d_c) / self.budget, (free - d_m) / total_blocks)
            if dist < best_dist:
                best, best_dist = r, dist
        return best
