"""What a policy decides for one iteration, and the engine limits it decides within."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import NamedTuple

from accelgen.core.latency import BatchShape, attention_pairs
from accelgen.core.request import Request


@dataclass(frozen=True, slots=True)
class EngineLimits:
    """Capacities of one engine replica.

    Args:
        num_kv_blocks: KV cache capacity in blocks.
        block_size_tokens: Tokens per KV block.
        max_num_batched_tokens: Most tokens one iteration may process (sizes the
            engine's buffers; fixed-budget baselines use it as their budget).
        max_num_seqs: Most requests holding KV at once.
    """

    num_kv_blocks: int
    block_size_tokens: int = 16
    max_num_batched_tokens: int = 8192
    max_num_seqs: int = 256

    def __post_init__(self) -> None:
        for name in ("num_kv_blocks", "block_size_tokens", "max_num_batched_tokens", "max_num_seqs"):
            if getattr(self, name) <= 0:
                raise ValueError(f"{name} must be positive")


class ScheduledChunk(NamedTuple):
    """``num_tokens`` of ``request`` computed this iteration, after ``context_tokens``.

    NOTE: a NamedTuple, not a frozen dataclass: one is built per decode per iteration
    and frozen dataclasses construct several times slower.
    """

    request: Request
    num_tokens: int
    context_tokens: int


@dataclass(frozen=True, slots=True)
class IterationPlan:
    """One iteration: the chunks to run and what was given up to make room.

    Args:
        chunks: Work for the engine, in the policy's priority order.
        preempted: Requests whose KV was freed (they recompute later).
        dropped: Requests the policy refused for good (only admission-controlling
            policies such as the oracle drop anything).
        budget_tokens: The token budget S_b the policy planned against.
        shape: The batch shape of ``chunks``.
        predicted_s: The policy's latency model's prediction for ``shape``.
    """

    chunks: tuple[ScheduledChunk, ...]
    preempted: tuple[Request, ...] = ()
    dropped: tuple[Request, ...] = ()
    budget_tokens: int = 0
    shape: BatchShape = BatchShape()  # noqa: RUF009 (immutable)
    predicted_s: float = 0.0

    @property
    def num_tokens(self) -> int:
        return self.shape.num_tokens

    @property
    def is_empty(self) -> bool:
        return not self.chunks


def shape_of(chunks: Iterable[ScheduledChunk]) -> BatchShape:
    """The batch shape of some chunks.

    A decode is a one-token chunk of a request that has output: it reads its context
    from the KV cache. (A one-token chunk ending a recompute costs the same.)
    """
    num_prefill = num_decodes = kv_tokens = prefill_kv = num_prefills = 0
    pairs = context_pairs = 0.0
    for request, n, context in chunks:
        if n == 1 and request.num_output_tokens > 0:
            num_decodes += 1
            kv_tokens += context
        else:
            num_prefill += n
            pairs += attention_pairs(n, context)
            context_pairs += n * context
            prefill_kv += context
            num_prefills += 1
    return BatchShape(num_prefill, num_decodes, pairs, kv_tokens, context_pairs, prefill_kv, num_prefills)
