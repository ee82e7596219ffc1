"""A request as the scheduler sees it: what it asked for and how far it has got.

Token accounting follows vLLM's unified model: a request has ``num_tokens`` =
prompt + output so far; ``num_computed_tokens`` of them have KV in the cache. Every
scheduled chunk advances ``num_computed_tokens``; when it reaches ``num_tokens`` the
iteration samples one new output token. Preemption by recompute drops the KV and sets
``num_computed_tokens`` back to 0, so prompt *and* generated tokens are prefilled again::

    prompt ........ output
    |<- computed ->|<-- new -->|      new = num_tokens - num_computed_tokens
                                      decode: new == 1; prefill (or recompute): new > 1
"""

from __future__ import annotations

from dataclasses import dataclass

from accelgen.core.tiers import SLOTier


@dataclass(slots=True, eq=False)
class Request:
    """Mutable per-request scheduling state (identity semantics: one object per request).

    Args:
        request_id: Unique id.
        arrival_s: Arrival time, on the caller's clock.
        num_prompt_tokens: Prompt length.
        max_tokens: Most output tokens the request may produce.
        tier: Its SLO tier (possibly with per-request targets).
        expected_output_tokens: A prediction (or, for the oracle, the truth) of the output
            length; ``None`` lets the policy use its own estimate.
    """

    request_id: str
    arrival_s: float
    num_prompt_tokens: int
    max_tokens: int
    tier: SLOTier
    expected_output_tokens: int | None = None
    num_computed_tokens: int = 0
    num_output_tokens: int = 0
    last_token_s: float | None = None
    num_blocks: int = 0
    num_preemptions: int = 0
    finished: bool = False

    @property
    def num_tokens(self) -> int:
        return self.num_prompt_tokens + self.num_output_tokens

    @property
    def num_new_tokens(self) -> int:
        """Tokens still to compute before the next output token."""
        return self.num_prompt_tokens + self.num_output_tokens - self.num_computed_tokens

    @property
    def is_decoding(self) -> bool:
        """Past its (re)prefill: each iteration computes one token and emits the next."""
        return self.num_output_tokens > 0 and self.num_new_tokens == 1

    @property
    def ttft_deadline_s(self) -> float | None:
        t = self.tier.ttft_slo_s
        return None if t is None else self.arrival_s + t

    @property
    def job_deadline_s(self) -> float | None:
        d = self.tier.deadline_s
        return None if d is None else self.arrival_s + d

    @property
    def next_token_deadline_s(self) -> float | None:
        """When the next token is due: TTFT deadline before the first, last + TBT after."""
        if self.tier.tbt_slo_s is None:
            return None
        if self.last_token_s is None:
            return self.ttft_deadline_s
        return self.last_token_s + self.tier.tbt_slo_s


def blocks_for(num_tokens: int, block_size: int) -> int:
    """KV blocks that hold ``num_tokens`` tokens."""
    return -(-num_tokens // block_size) if num_tokens > 0 else 0
