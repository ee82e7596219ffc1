"""The per-tier summary: attainment (of an empty window too), rates, merging, quantiles."""

from __future__ import annotations

import numpy as np
import pytest

from accelgen.core.summary import TierSummary, histogram_quantile, merge, quantile


def test_attainment_and_rates_come_from_the_counts() -> None:
    tier = TierSummary("chat", 10.0, num_requests=8, num_completed=6, num_slo_met=4, num_tokens=60, num_good_tokens=40)
    assert tier.attainment == 0.5  # judged: every request, the unfinished ones missed
    assert (tier.throughput_rps, tier.goodput_rps) == (0.6, 0.4)
    assert (tier.throughput_tokens_per_s, tier.goodput_tokens_per_s) == (6.0, 4.0)


def test_an_empty_window_missed_nothing() -> None:
    empty = TierSummary("chat", 60.0, num_requests=0, num_completed=0, num_slo_met=0)
    assert empty.attainment == 1.0 and empty.goodput_rps == 0.0
    no_span = TierSummary("chat", 0.0, num_requests=1, num_completed=1, num_slo_met=1)
    assert no_span.throughput_rps == 0.0 and no_span.attainment == 1.0


def test_merge_adds_counts_and_keeps_the_worst_p99() -> None:
    a = TierSummary("chat", 60.0, num_requests=90, num_completed=90, num_slo_met=90, ttft_p99_s=0.1, tbt_p99_s=0.5)
    b = TierSummary("chat", 60.0, num_requests=10, num_completed=10, num_slo_met=0, num_rejected=3, ttft_p99_s=0.4)
    pool = merge("chat", [a, b])
    assert (pool.num_requests, pool.num_slo_met, pool.num_rejected) == (100, 90, 3)
    assert pool.attainment == 0.9  # weighted by requests, not the mean of 1.0 and 0.0
    assert pool.goodput_rps == pytest.approx(90 / 60)
    assert (pool.ttft_p99_s, pool.tbt_p99_s) == (0.4, 0.5)
    assert merge("chat", []) == TierSummary("chat", 0.0, num_requests=0, num_completed=0, num_slo_met=0)


def test_quantile_interpolates_as_numpy_percentile() -> None:
    values = [0.3, 0.1, 0.7, 0.2, 0.9, 0.4]
    for q, percent in ((0.0, 0), (0.5, 50), (0.9, 90), (0.99, 99), (1.0, 100)):
        assert quantile(values, q) == float(np.percentile(values, percent))
    assert quantile([], 0.5) is None


def test_histogram_quantile_is_the_upper_edge_of_its_bin() -> None:
    edges = np.array([0.0, 1.0, 2.0, 4.0, 8.0])
    counts = np.array([50, 40, 9, 1])
    assert histogram_quantile(counts, edges, 0.5) == 1.0
    assert histogram_quantile(counts, edges, 0.9) == 2.0
    assert histogram_quantile(counts, edges, 0.99) == 4.0
    assert histogram_quantile(counts, edges, 1.0) == 8.0
    assert histogram_quantile(np.zeros(4, dtype=np.int64), edges, 0.99) is None
