"""Output-length prediction: online quantiles per tier and prompt-length bucket.

A policy reserves KV for what running requests will still generate and spreads an
offline request's deadline over the outputs it still has to produce; both need its
output length before it is known. :class:`OutputLengths` learns it from completions:

    key      (tier, prompt bucket)   buckets: prompt < 256, < 512, ... < 16384, longer
    keeps    the last ``window`` output lengths of each key, sorted (and of each tier)
    predicts the ``quantile`` of those longer than what the request has produced so
             far (a request already past the typical length is likely a long one)
    falls    back to the tier's window, then the tier's running mean, then max_tokens

A sliding window, not all history: lengths drift with the traffic, and a bounded
window bounds memory and the cost of an update (a bisection and a list shift).
:func:`prediction_error` replays a request sequence through a predictor and reports
its error, for benchmarks.
"""

from __future__ import annotations

import bisect
import math
from collections import deque
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

#: Upper edges of the prompt-length buckets (the last bucket is open).
PROMPT_BUCKET_EDGES: tuple[int, ...] = (256, 512, 1024, 2048, 4096, 8192, 16384)


class _Window:
    """The last ``size`` values, in arrival order and sorted."""

    __slots__ = ("_order", "_size", "sorted")

    def __init__(self, size: int) -> None:
        self._size = size
        self._order: deque[int] = deque()
        self.sorted: list[int] = []

    def add(self, value: int) -> None:
        self._order.append(value)
        bisect.insort(self.sorted, value)
        if len(self._order) > self._size:
            old = self._order.popleft()
            del self.sorted[bisect.bisect_left(self.sorted, old)]


class OutputLengths:
    """Learned output lengths per (tier, prompt bucket).

    Args:
        quantile: The quantile predicted (0 < q ≤ 1).
        window: Lengths kept per key.
        min_samples: A bucket predicts once it holds this many (else its tier does).
        bucket_edges: Upper edges of the prompt-length buckets, ascending.
    """

    def __init__(
        self,
        *,
        quantile: float = 0.5,
        window: int = 256,
        min_samples: int = 8,
        bucket_edges: Sequence[int] = PROMPT_BUCKET_EDGES,
    ) -> None:
        if not 0 < quantile <= 1:
            raise ValueError(f"quantile must be in (0, 1], got {quantile}")
        if window < 1 or min_samples < 1:
            raise ValueError("window and min_samples must be positive")
        self.quantile = quantile
        self.window = window
        self.min_samples = min_samples
        self.bucket_edges = tuple(bucket_edges)
        self._buckets: dict[tuple[str, int], _Window] = {}
        self._tiers: dict[str, _Window] = {}
        self._means: dict[str, tuple[int, int]] = {}  # tier → (total, count), all history

    def bucket(self, prompt_tokens: int) -> int:
        """The prompt-length bucket of a prompt (0 for the shortest)."""
        return bisect.bisect_right(self.bucket_edges, prompt_tokens - 1)

    def observe(self, tier: str, prompt_tokens: int, output_tokens: int) -> None:
        """A request of ``tier`` with this prompt finished after ``output_tokens``."""
        key = (tier, self.bucket(prompt_tokens))
        if key not in self._buckets:
            self._buckets[key] = _Window(self.window)
        if tier not in self._tiers:
            self._tiers[tier] = _Window(self.window)
        self._buckets[key].add(output_tokens)
        self._tiers[tier].add(output_tokens)
        total, count = self._means.get(tier, (0, 0))
        self._means[tier] = (total + output_tokens, count + 1)

    def tier_mean(self, tier: str) -> float | None:
        """The running mean of every length observed for ``tier``; None before the first."""
        total, count = self._means.get(tier, (0, 0))
        return total / count if count else None

    def predict(self, tier: str, prompt_tokens: int, *, produced: int = 0, max_tokens: int) -> int:
        """The predicted total output of a request that has produced ``produced`` tokens.

        Always more than ``produced`` (the request has not finished) and at most
        ``max_tokens``.

        NOTE: on the planner's hot path (every running request when KV is reserved):
        the window lookups and the quantile are inlined.
        """
        key = (tier, bisect.bisect_right(self.bucket_edges, prompt_tokens - 1))
        for window in (self._buckets.get(key), self._tiers.get(tier)):
            if window is None:
                continue
            values = window.sorted
            if len(values) < self.min_samples:
                continue
            start = bisect.bisect_right(values, produced)
            above = len(values) - start
            if above:
                value = values[start + max(math.ceil(self.quantile * above) - 1, 0)]
                return value if value < max_tokens else max_tokens
        mean = self.tier_mean(tier)
        if mean is not None and round(mean) > produced:
            return min(round(mean), max_tokens)
        return max_tokens


@dataclass(frozen=True, slots=True)
class PredictionError:
    """How far predictions at arrival were from the true output lengths.

    Args:
        num_requests: Requests predicted.
        mean_abs_error_tokens: Mean of |predicted − actual|.
        p90_relative_error: 90th percentile of |predicted − actual| / actual.
        mean_bias_tokens: Mean of predicted − actual (> 0: overestimates).
    """

    num_requests: int
    mean_abs_error_tokens: float
    p90_relative_error: float
    mean_bias_tokens: float


class TierMean:
    """The per-tier running mean the policies used before :class:`OutputLengths` (the baseline)."""

    def __init__(self) -> None:
        self._means: dict[str, tuple[int, int]] = {}

    def observe(self, tier: str, prompt_tokens: int, output_tokens: int) -> None:
        del prompt_tokens  # a mean per tier only
        total, count = self._means.get(tier, (0, 0))
        self._means[tier] = (total + output_tokens, count + 1)

    def predict(self, tier: str, prompt_tokens: int, *, produced: int = 0, max_tokens: int) -> int:
        del prompt_tokens, produced  # the mean ignores both
        total, count = self._means.get(tier, (0, 0))
        return round(total / count) if count else max_tokens


def prediction_error(
    requests: Iterable[tuple[str, int, int]], predictor: OutputLengths | TierMean, *, max_tokens: int
) -> PredictionError:
    """Replay ``(tier, prompt_tokens, output_tokens)`` in order: predict at arrival, then observe.

    Each request is observed as soon as it is predicted (in a real run it completes
    later, so a live predictor has seen a little less).
    """
    errors: list[int] = []
    relative: list[float] = []
    for tier, prompt, output in requests:
        predicted = predictor.predict(tier, prompt, max_tokens=max_tokens)
        errors.append(predicted - output)
        relative.append(abs(predicted - output) / max(output, 1))
        predictor.observe(tier, prompt, output)
    if not errors:
        return PredictionError(0, 0.0, 0.0, 0.0)
    relative.sort()
    p90 = relative[max(math.ceil(0.9 * len(relative)) - 1, 0)]
    return PredictionError(
        num_requests=len(errors),
        mean_abs_error_tokens=sum(abs(e) for e in errors) / len(errors),
        p90_relative_error=p90,
        mean_bias_tokens=sum(errors) / len(errors),
    )
