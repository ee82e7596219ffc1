"""vLLM's scheduling loop with one fixed token budget, the skeleton of most baselines.

As vLLM V1's ``Scheduler.schedule``: running requests first, in the policy's order, each
getting its next chunk (or one decode token) while budget lasts; when KV runs out the
*last* running request in that order is preempted (recompute), possibly the one being
scheduled. New requests are admitted from the waiting queue only in an iteration that
preempted nothing. Subclasses choose the order, the budget and whether prompts may be
split (chunked prefill).
"""

from __future__ import annotations

from accelgen.core.plan import ScheduledChunk
from accelgen.core.policy import Policy, SortKey
from accelgen.core.request import Request


class FixedBudgetPolicy(Policy):
    """Running first, then waiting, against a fixed ``budget_tokens``."""

    #: Split prompts across iterations (False: a prompt runs whole or not at all).
    chunked_prefill: bool = True

    @property
    def budget_tokens(self) -> int:
        return self.limits.max_num_batched_tokens

    def _running_key(self, request: Request, now: float) -> SortKey:
        """Order of running requests; the last one is the preemption victim."""
        del now
        return self._queue_key(request)

    def _chunk(self, request: Request, budget: int) -> int:
        n = min(request.num_new_tokens, budget)
        if not self.chunked_prefill and n < request.num_new_tokens:
            # NOTE: an oversized prompt still runs alone in an otherwise empty batch.
            return request.num_new_tokens if budget == self.budget_tokens else 0
        return n

    def _schedule(self, now: float) -> tuple[list[ScheduledChunk], int, list[Request]]:
        budget = self.budget_tokens
        left = budget
        self.running.sort(key=lambda r: self._running_key(r, now))
        queue = list(self.running)
        chunks: list[ScheduledChunk] = []
        preempted_any = False
        i = 0
        while i < len(queue) and left > 0:
            r = queue[i]
            n = self._chunk(r, left)
            if n == 0:
                i += 1
                continue
            while not self._can_allocate(r, n):
                victim = queue.pop()
                self._preempt(victim)
                preempted_any = True
                if victim is r:
                    break
            else:
                chunks.append(self._allocate(r, n))
                left -= n
                i += 1
        if preempted_any:
            return chunks, budget, []
        idx = 0
        while idx < len(self._waiting) and left > 0:
            if len(self.running) >= self.limits.max_num_seqs:
                break
            r = self._waiting[idx][2]
            n = self._chunk(r, left)
            if n == 0:
                if not self.chunked_prefill:  # a later, shorter prompt may still fit
                    idx += 1
                    continue
                break
            if not self._can_allocate(r, n):
                break
            self._dequeue_at(idx)
            chunks.append(self._allocate(r, n))
            left -= n
        return chunks, budget, []
