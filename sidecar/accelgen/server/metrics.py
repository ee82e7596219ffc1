"""The sidecar's Prometheus metrics: prefix ``accelgen_``, label ``tier`` (and ``pool``).

Counters: ``accelgen_requests_total{outcome}`` with outcome admitted (entered a queue),
rejected (refused before queueing: infeasible, queue full, tenant forbidden or over
its limit), shed (dropped from a queue), failed (engine error after admission),
cancelled (client went away); ``accelgen_requests_completed_total``,
``accelgen_requests_slo_met_total``, ``accelgen_output_tokens_total``,
``accelgen_goodput_tokens_total``. Histograms of TTFT, TBT gaps and queue time whose
bucket edges include every tier's targets (fixed at start: a reload with new targets
keeps the old edges). Gauges: queue depth, each tier's headroom
(``accelgen_tier_headroom_tokens``: the prompt tokens of that tier the pod can still
start within its target, see :mod:`accelgen.server.pod_state`), each tier's targets
(latency targets and attainment target, republished on a tier reload), and the engine
as seen (its raw running and waiting counts; ``vllm:num_requests_waiting`` on the same
page counts the sidecar's queue too), including
the token budget per step that AccelGen's in-engine scheduler reports in its stats file
and how its latency model errs per region of shape space (:class:`LatencyModelCollector`).
And the sidecar's own health: how late its event loop runs (``accelgen_event_loop_lag_seconds``).
"""

from __future__ import annotations

import bisect
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    disable_created_metrics,
)
from prometheus_client.core import GaugeMetricFamily, Metric

from accelgen.core.tiers import SLOTier, TierSet
from accelgen.server.engine_state import DIAGNOSES, LatencyModelReport

OUTCOMES = ("admitted", "rejected", "shed", "failed", "cancelled")
# The in-engine stats file's ``budget_tokens`` keys (accelgen.vllm.stats), as label ``stat``.
BUDGET_STATS = ("last", "median", "min", "max")
# ... and its ``planner_s`` keys.
PLANNER_STATS = ("median", "p99", "mean")
_BASE_EDGES_S = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)


def observe_all(histogram: Any, values: Sequence[float]) -> None:
    """``histogram.observe(v)`` for each value, exactly, in one pass (a TBT gap per token).

    Counts per bucket are added once each instead of taking the child's locks per value.
    Falls back to one ``observe`` each if prometheus-client's internals ever change
    (tests compare both paths).
    """
    bounds = getattr(histogram, "_upper_bounds", None)
    buckets = getattr(histogram, "_buckets", None)
    total = getattr(histogram, "_sum", None)
    if not values:
        return
    if bounds is None or buckets is None or total is None or len(bounds) != len(buckets):
        for value in values:
            histogram.observe(value)
        return
    counts = [0] * len(bounds)
    last = len(bounds) - 1  # +Inf
    for value in values:
        counts[min(last, bisect.bisect_left(bounds, value))] += 1  # first bound >= value
    total.inc(sum(values))
    for i, count in enumerate(counts):
        if count:
            buckets[i].inc(count)


class LatencyModelCollector:
    """The engine's latency-model error (:class:`LatencyModelReport`) as gauges, per scrape.

    A collector, not Gauges: an unlabelled Gauge always has a sample (0 before any
    report), and what the engine did not report must have none. Labels ``region`` and
    ``diagnosis`` only take values from fixed lists, so the series stay bounded.
    """

    def __init__(self, *, pool: str | None) -> None:
        self.pool = pool
        self.report = LatencyModelReport()

    def _family(self, name: str, doc: str, *labels: str) -> GaugeMetricFamily:
        return GaugeMetricFamily(name, doc, labels=[*(("pool",) if self.pool else ()), *labels])

    def _add(self, family: GaugeMetricFamily, value: float | None, *labels: str) -> None:
        if value is not None:
            family.add_metric([*((self.pool,) if self.pool else ()), *labels], value)

    def collect(self) -> Iterator[Metric]:
        r = self.report
        ratio = self._family(
            "accelgen_engine_step_time_ratio",
            "Engine step time measured / predicted by its fitted latency model, per region of "
            "shape space: quantiles over the region's recent steps (AccelGen's in-engine calibration)",
            "region",
            "quantile",
        )
        for region, quantiles in r.ratios.items():
            for quantile, value in quantiles.items():
                self._add(ratio, value, region, quantile)
        allowance = self._family(
            "accelgen_engine_step_time_allowance_seconds",
            "Seconds AccelGen's planner adds to the scaled fit's prediction of each region's steps "
            "(the 95th percentile of their recent excess over it; an overrun raises it at once)",
            "region",
        )
        for region, value in r.allowances_s.items():
            self._add(allowance, value, region)
        slowdown = self._family(
            "accelgen_engine_latency_model_slowdown",
            "How much slower than fitted the engine's steps run, every region alike (the smallest "
            "median measured / predicted over the regions): the planner scales the fit by it",
        )
        self._add(slowdown, r.slowdown)
        in_use = self._family(
            "accelgen_engine_latency_model_in_use_ratio_p99",
            "99th percentile of measured / predicted by the model the planner uses (scale and allowance "
            "applied), over recent steps predicted at 20 ms or more: above 1, plans overrun",
        )
        self._add(in_use, r.in_use_ratio_p99)
        diagnosis = self._family(
            "accelgen_engine_latency_model_diagnosis",
            "1 for the engine's current diagnosis of its latency model, 0 for the others: ok, "
            "machine-slower (every region runs long) or model-off (some regions run long)",
            "diagnosis",
        )
        if r.diagnosis is not None:
            for name in DIAGNOSES:
                self._add(diagnosis, 1.0 if name == r.diagnosis else 0.0, name)
        overruns = self._family(
            "accelgen_engine_latency_model_overruns",
            "Engine steps that overran the planner's prediction by more than its tolerance: "
            "the engine's cumulative count since it started, copied (a gauge: it restarts at 0 "
            "with the engine)",
        )
        self._add(overruns, r.num_overruns)
        yield from (ratio, allowance, slowdown, in_use, diagnosis, overruns)


@dataclass(frozen=True, slots=True)
class TierSeries:
    """One tier's labelled children, looked up once (``labels()`` is costly per request)."""

    outcomes: dict[str, Any]
    completed: Any
    slo_met: Any
    output_tokens: Any
    goodput_tokens: Any
    ttft: Any
    tbt: Any
    queue_time: Any


def _edges(base: tuple[float, ...], targets: list[float | None]) -> list[float]:
    return sorted(set(base) | {t for t in targets if t is not None})


class SidecarMetrics:
    """All sidecar metrics in their own registry (one per app, so tests can run many)."""

    def __init__(self, tiers: TierSet, *, pool: str | None) -> None:
        # NOTE: process-wide; the *_created series only double the scrape size.
        disable_created_metrics()  # type: ignore[no-untyped-call]
        self.pool = pool
        self._series: dict[str, TierSeries] = {}
        self.registry = CollectorRegistry()
        names = ("pool", "tier") if pool else ("tier",)
        engine_names = ("pool",) if pool else ()
        # NOTE: registration order is the order of /metrics: keep the groups in this order.
        self._add_request_counters(names)
        self._add_latency_histograms(names, tiers)
        self._add_tier_gauges(names)
        self._add_engine_gauges(engine_names)
        self._add_health(engine_names)
        self.set_tiers(tiers)

    def _add_request_counters(self, names: tuple[str, ...]) -> None:
        """Per-tier counters: requests by outcome, completions, SLO hits and their tokens."""
        r = self.registry
        self.requests = Counter("accelgen_requests", "Requests by outcome", [*names, "outcome"], registry=r)
        self.completed = Counter("accelgen_requests_completed", "Requests completed", names, registry=r)
        self.slo_met = Counter("accelgen_requests_slo_met", "Completed requests that met their SLO", names, registry=r)
        self.output_tokens = Counter("accelgen_output_tokens", "Output tokens of completed requests", names, registry=r)
        self.goodput_tokens = Counter(
            "accelgen_goodput_tokens",
            "Output tokens of requests that met their SLO",
            names,
            registry=r,
        )

    def _add_latency_histograms(self, names: tuple[str, ...], tiers: TierSet) -> None:
        """Per-tier TTFT, TBT-gap and queue-time histograms, with every tier's targets as edges."""

        def histogram(name: str, doc: str, targets: list[float | None]) -> Histogram:
            return Histogram(name, doc, names, buckets=_edges(_BASE_EDGES_S, targets), registry=self.registry)

        self.ttft = histogram(
            "accelgen_ttft_seconds", "Time to first token (from arrival)", [t.ttft_slo_s for t in tiers]
        )
        self.tbt = histogram("accelgen_tbt_seconds", "Gaps between consecutive tokens", [t.tbt_slo_s for t in tiers])
        self.queue_time = histogram("accelgen_queue_time_seconds", "Time queued in the sidecar", [])

    def _add_tier_gauges(self, names: tuple[str, ...]) -> None:
        """Per-tier gauges: queue depth, latency targets and attainment target."""
        r = self.registry
        self.queue_depth = Gauge("accelgen_queue_depth", "Requests queued in the sidecar", names, registry=r)
        self.headroom = Gauge(
            "accelgen_tier_headroom_tokens",
            "Prompt tokens of this tier's requests the pod can still start now and meet the tier's "
            "first-token target (offline: its deadline), after the work queued ahead of them, at the "
            "prefill rate the running requests' TBT targets leave; 0 or less: the tier is full here",
            names,
            registry=r,
        )
        self.target = Gauge(
            "accelgen_tier_target_seconds",
            "Each tier's SLO targets",
            [*names, "target"],
            registry=r,
        )
        self.attainment_target = Gauge(
            "accelgen_tier_attainment_target_ratio",
            "Each tier's attainment target: the share of its requests that should meet their SLO",
            names,
            registry=r,
        )

    def _add_engine_gauges(self, enames: tuple[str, ...]) -> None:
        """The engine as seen: readiness, requests, KV usage, preemptions, budget, latency model."""
        r = self.registry
        self.engine_ready = Gauge("accelgen_engine_ready", "1 if the engine answers", enames, registry=r)
        self.engine_running = Gauge(
            "accelgen_engine_requests_running",
            "Requests the engine reports running (its raw vllm:num_requests_running)",
            enames,
            registry=r,
        )
        self.engine_waiting = Gauge(
            "accelgen_engine_requests_waiting",
            "Requests waiting inside the engine (its raw vllm:num_requests_waiting; the page's "
            "vllm:num_requests_waiting adds the sidecar's queues)",
            enames,
            registry=r,
        )
        self.engine_kv = Gauge("accelgen_engine_kv_usage_ratio", "Engine KV cache usage (0..1)", enames, registry=r)
        self.engine_preemptions = Gauge(
            "accelgen_engine_preemptions",
            "Preemptions so far, from AccelGen's in-engine side channel (0 without it)",
            enames,
            registry=r,
        )
        self.engine_budget = Gauge(
            "accelgen_engine_budget_tokens",
            "Token budget per engine step chosen by AccelGen's in-engine scheduler: the last "
            "step's, and median/min/max over the engine's recent steps (from its stats file)",
            [*enames, "stat"],
            registry=r,
        )
        self.engine_planner = Gauge(
            "accelgen_engine_planner_seconds",
            "Seconds the in-engine planner takes per step: median, p99 and mean over the "
            "engine's recent steps (from its stats file)",
            [*enames, "stat"],
            registry=r,
        )
        self.latency_model = LatencyModelCollector(pool=self.pool)
        r.register(self.latency_model)

    def _add_health(self, enames: tuple[str, ...]) -> None:
        """The sidecar's own health: how late its event loop runs."""
        self.loop_lag = Histogram(
            "accelgen_event_loop_lag_seconds",
            "How late the sidecar's event loop ran a periodic timer: every request in the "
            "sidecar was delayed by as much (a busy loop, or a process starved of CPU)",
            enames,
            buckets=(0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0),
            registry=self.registry,
        )

    def labels(self, tier: str) -> dict[str, str]:
        return {"pool": self.pool, "tier": tier} if self.pool else {"tier": tier}

    def set_tiers(self, tiers: TierSet) -> None:
        """(Re)publish target gauges and create every tier's series at zero."""
        self.target.clear()
        self.attainment_target.clear()
        for tier in tiers:
            self._touch(tier)

    def _touch(self, tier: SLOTier) -> None:
        lab = self.labels(tier.name)
        for outcome in OUTCOMES:
            self.requests.labels(**lab, outcome=outcome)
        for metric in (
            self.completed,
            self.slo_met,
            self.output_tokens,
            self.goodput_tokens,
            self.ttft,
            self.tbt,
            self.queue_time,
            self.queue_depth,
            self.headroom,
        ):
            metric.labels(**lab)
        for target, value in (
            ("ttft", tier.ttft_slo_s),
            ("tbt", tier.tbt_slo_s),
            ("deadline", tier.deadline_s),
        ):
            if value is not None:
                self.target.labels(**lab, target=target).set(value)
        self.attainment_target.labels(**lab).set(tier.attainment_target)

    def set_budget(self, budget: dict[str, float], planner_s: dict[str, float]) -> None:
        """Publish the engine's budget and planner-time stats; a stat the engine did not
        report has no series."""
        pool = {"pool": self.pool} if self.pool else {}
        for gauge, stats, values in (
            (self.engine_budget, BUDGET_STATS, budget),
            (self.engine_planner, PLANNER_STATS, planner_s),
        ):
            gauge.clear()
            for stat in stats:
                if stat in values:
                    gauge.labels(**pool, stat=stat).set(values[stat])

    def set_latency_model(self, report: LatencyModelReport) -> None:
        """Publish the engine's latency-model report (at the next scrape)."""
        self.latency_model.report = report

    def series(self, tier: str) -> TierSeries:
        """The tier's children (cached; a tier's series are never removed)."""
        found = self._series.get(tier)
        if found is None:
            lab = self.labels(tier)
            found = self._series[tier] = TierSeries(
                outcomes={o: self.requests.labels(**lab, outcome=o) for o in OUTCOMES},
                completed=self.completed.labels(**lab),
                slo_met=self.slo_met.labels(**lab),
                output_tokens=self.output_tokens.labels(**lab),
                goodput_tokens=self.goodput_tokens.labels(**lab),
                ttft=self.ttft.labels(**lab),
                tbt=self.tbt.labels(**lab),
                queue_time=self.queue_time.labels(**lab),
            )
        return found

    def count(self, tier: str, outcome: str) -> None:
        self.series(tier).outcomes[outcome].inc()
