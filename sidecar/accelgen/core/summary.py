"""What one tier did over a window, and the one way quantiles are computed.

:class:`TierSummary` is the per-tier result the simulator reports for a run, the
sidecar publishes on ``GET /stats`` for its last window, and the operator adds up
across a pool's pods. It holds counts; attainment and rates are derived from them, so
they are defined here once:

* attainment = requests that met their SLO / requests judged. The attainment of an
  empty window is 1.0: no request missed its SLO. Whether anything was measured is the
  count's to say (``num_requests == 0``), never the ratio's, so sums and comparisons
  never meet a None;
* a rate = its count / ``window_s`` (0.0 for a window of no length).

:func:`quantile` is linear interpolation between order statistics (numpy's default),
for every figure computed from raw samples; :func:`histogram_quantile` is its bounded-
memory stand-in over binned samples, an upper bound to within one bin.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import numpy as np


def quantile(values: Sequence[float], q: float) -> float | None:
    """The ``q`` quantile (``0 <= q <= 1``) of ``values``, interpolated; None if empty."""
    if not len(values):
        return None
    return float(np.quantile(values, q))


def histogram_quantile(counts: np.ndarray, edges: np.ndarray, q: float) -> float | None:
    """The upper edge of the bin holding the ``q`` quantile; None with no sample.

    ``counts[i]`` samples fell in ``[edges[i], edges[i + 1])``, so ``edges`` has one more
    entry than ``counts``. The upper edge never under-reports.
    """
    total = int(counts.sum())
    if total == 0:
        return None
    i = int(np.searchsorted(np.cumsum(counts), math.ceil(q * total)))
    return float(edges[i + 1])


@dataclass(frozen=True, slots=True)
class TierSummary:
    """One tier's outcome over a window (one engine's, or a pool's sum).

    Args:
        name: The tier.
        window_s: The span the rates are over (a run's, or the sidecar's window).
        num_requests: Requests judged: the attainment's denominator. In a simulated run
            every request (a dropped or unfinished one has missed); in the sidecar's
            window those that completed in it.
        num_completed: Requests that completed.
        num_slo_met: Completed requests that met their SLO.
        num_rejected: Requests refused at admission (not judged).
        num_tokens: Output tokens of the completed requests.
        num_good_tokens: Output tokens of the requests that met their SLO.
        ttft_p99_s: 99th percentile of the time to first token (0.0 with none).
        tbt_p99_s: 99th percentile of the gaps between tokens (0.0 with none).
    """

    name: str
    window_s: float
    num_requests: int
    num_completed: int
    num_slo_met: int
    num_rejected: int = 0
    num_tokens: int = 0
    num_good_tokens: int = 0
    ttft_p99_s: float = 0.0
    tbt_p99_s: float = 0.0

    @property
    def attainment(self) -> float:
        """Fraction of judged requests that met the SLO; 1.0 for an empty window."""
        return self.num_slo_met / self.num_requests if self.num_requests else 1.0

    def _rate(self, count: int) -> float:
        return count / self.window_s if self.window_s > 0 else 0.0

    @property
    def throughput_rps(self) -> float:
        return self._rate(self.num_completed)

    @property
    def throughput_tokens_per_s(self) -> float:
        return self._rate(self.num_tokens)

    @property
    def goodput_rps(self) -> float:
        return self._rate(self.num_slo_met)

    @property
    def goodput_tokens_per_s(self) -> float:
        return self._rate(self.num_good_tokens)


def merge(name: str, parts: Iterable[TierSummary]) -> TierSummary:
    """Several engines' summaries of one tier over the same window, as one.

    Counts add up; the window is the longest; a p99 is the worst part's, an upper
    bound: percentiles of different engines cannot be merged exactly.
    """
    parts = list(parts)
    return TierSummary(
        name=name,
        window_s=max((p.window_s for p in parts), default=0.0),
        num_requests=sum(p.num_requests for p in parts),
        num_completed=sum(p.num_completed for p in parts),
        num_slo_met=sum(p.num_slo_met for p in parts),
        num_rejected=sum(p.num_rejected for p in parts),
        num_tokens=sum(p.num_tokens for p in parts),
        num_good_tokens=sum(p.num_good_tokens for p in parts),
        ttft_p99_s=max((p.ttft_p99_s for p in parts), default=0.0),
        tbt_p99_s=max((p.tbt_p99_s for p in parts), default=0.0),
    )
