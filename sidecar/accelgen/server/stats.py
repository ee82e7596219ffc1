"""The last window (default 60 s) per tier, for ``GET /stats`` and the operator.

Memory is bounded whatever the load: a ring of one-second slots per tier, each with
counters and log-spaced histograms of TTFT and TBT gaps (p99 read from the merged
histogram, to within one bin: about 3 %). A window's figures are a
:class:`~accelgen.core.summary.TierSummary` per tier.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass, field

import numpy as np

from accelgen.core.summary import TierSummary, histogram_quantile

_BINS = 400
_LO_S, _HI_S = 1e-5, 1e3
_EDGES = np.geomspace(_LO_S, _HI_S, _BINS + 1)
_LOG_RANGE = math.log(_HI_S / _LO_S)


def _bin(value_s: float) -> int:
    if value_s <= _LO_S:
        return 0
    return min(_BINS - 1, int(math.log(value_s / _LO_S) / _LOG_RANGE * _BINS))


@dataclass(slots=True)
class _Slot:
    second: int = -1
    completed: int = 0
    slo_met: int = 0
    tokens: int = 0
    good_tokens: int = 0
    rejected: int = 0
    ttft: np.ndarray = field(default_factory=lambda: np.zeros(_BINS, dtype=np.int64))
    tbt: np.ndarray = field(default_factory=lambda: np.zeros(_BINS, dtype=np.int64))

    def reset(self, second: int) -> None:
        self.second = second
        self.completed = self.slo_met = self.tokens = self.good_tokens = self.rejected = 0
        self.ttft[:] = 0
        self.tbt[:] = 0


def _p99(hist: np.ndarray) -> float:
    return histogram_quantile(hist, _EDGES, 0.99) or 0.0


class WindowStats:
    """Per-tier counters over the last ``window_s`` seconds of a caller-given clock."""

    def __init__(self, window_s: int = 60) -> None:
        self.window_s = window_s
        self._rings: dict[str, list[_Slot]] = {}

    def _slot(self, tier: str, now_s: float) -> _Slot:
        ring = self._rings.get(tier)
        if ring is None:
            ring = self._rings[tier] = [_Slot() for _ in range(self.window_s)]
        second = int(now_s)
        slot = ring[second % self.window_s]
        if slot.second != second:
            slot.reset(second)
        return slot

    def completed(
        self,
        tier: str,
        now_s: float,
        *,
        met: bool,
        tokens: int,
        ttft_s: float | None,
        gaps_s: Iterable[float],
    ) -> None:
        slot = self._slot(tier, now_s)
        slot.completed += 1
        slot.tokens += tokens
        if met:
            slot.slo_met += 1
            slot.good_tokens += tokens
        if ttft_s is not None:
            slot.ttft[_bin(ttft_s)] += 1
        gaps = np.fromiter(gaps_s, dtype=np.float64)
        if gaps.size:  # _bin, for all gaps at once
            bins = np.log(np.maximum(gaps, _LO_S) / _LO_S) / _LOG_RANGE * _BINS
            slot.tbt += np.bincount(np.minimum(bins.astype(np.int64), _BINS - 1), minlength=_BINS)

    def rejected(self, tier: str, now_s: float) -> None:
        self._slot(tier, now_s).rejected += 1

    def snapshot(self, tiers: Iterable[str], now_s: float) -> list[TierSummary]:
        """One summary per tier of the last ``window_s`` seconds up to ``now_s``."""
        out = []
        oldest = int(now_s) - self.window_s + 1
        for name in tiers:
            slots = [s for s in self._rings.get(name, ()) if s.second >= oldest]
            completed = sum(s.completed for s in slots)
            ttft = sum((s.ttft for s in slots), np.zeros(_BINS, dtype=np.int64))
            tbt = sum((s.tbt for s in slots), np.zeros(_BINS, dtype=np.int64))
            out.append(
                TierSummary(
                    name=name,
                    window_s=self.window_s,
                    num_requests=completed,  # judged when they complete; refusals apart
                    num_completed=completed,
                    num_slo_met=sum(s.slo_met for s in slots),
                    num_rejected=sum(s.rejected for s in slots),
                    num_tokens=sum(s.tokens for s in slots),
                    num_good_tokens=sum(s.good_tokens for s in slots),
                    ttft_p99_s=_p99(ttft),
                    tbt_p99_s=_p99(tbt),
                )
            )
        return out
