"""What the sidecar last saw of its engine, parsed from the engine's Prometheus ``/metrics``.

vLLM exports ``vllm:num_requests_running``, ``vllm:num_requests_waiting`` and
``vllm:kv_cache_usage_perc`` (a fraction in [0, 1] despite the name; older versions
call it ``vllm:gpu_cache_usage_perc``), one series per model; they are summed.
AccelGen's in-engine scheduler also writes a stats file (its side channel, see
:class:`accelgen.wire.EngineStatsFile`; the sim engine writes the same file): its preemption count
says when KV is short, its ``budget_tokens`` (last, and median/min/max over the
engine's recent steps) is exported as a gauge, and so is its ``calibration``: how far
the engine's steps run from its latency model, per region of shape space
(:class:`LatencyModelReport`).
"""

from __future__ import annotations

import logging
import math
from collections.abc import Collection
from dataclasses import dataclass, field
from pathlib import Path

from prometheus_client.parser import text_string_to_metric_families
from prometheus_client.samples import Sample

from accelgen import wire
from accelgen.core.errors import ConfigError
from accelgen.core.latency import REGIONS, FittedLatencyModel
from accelgen.wire import EngineStatsFile

log = logging.getLogger(__name__)
_last_problem = ""  # the stats file's last problem logged

_RUNNING = "vllm:num_requests_running"
_WAITING = "vllm:num_requests_waiting"
_KV = ("vllm:kv_cache_usage_perc", "vllm:gpu_cache_usage_perc")
_READ = (_RUNNING, _WAITING, *_KV)

#: What ``Calibrator.diagnosis()`` (accelgen.core.calibration) can say of the latency model.
DIAGNOSES = ("ok", "machine-slower", "model-off")
#: Label ``quantile`` → the key of a region's ratio in the stats file's ``calibration``.
RATIO_QUANTILES = {"0.5": "ratio_p50", "0.9": "ratio_p90", "0.99": "ratio_p99"}


@dataclass(frozen=True, slots=True)
class LatencyModelReport:
    """The engine's latency-model error, from its stats file's ``calibration`` object.

    Ratios are measured step time ÷ the fitted model's prediction. Only what the engine
    reported as a finite number ≥ 0, a known region or a known diagnosis is kept; the
    rest is None or absent, so it is never exported as a made-up value.
    """

    slowdown: float | None = None
    in_use_ratio_p99: float | None = None  # measured ÷ the model the planner used
    num_overruns: float | None = None  # cumulative, from the engine's start
    diagnosis: str | None = None  # one of DIAGNOSES
    ratios: dict[str, dict[str, float]] = field(default_factory=dict)  # region → {quantile: ratio}
    allowances_s: dict[str, float] = field(default_factory=dict)  # region → seconds the planner adds
    fit: FittedLatencyModel | None = None  # the engine's latest fit of its own steps


@dataclass(slots=True)
class EngineState:
    """The latest engine snapshot (``updated_s`` on the sidecar's monotonic clock)."""

    ready: bool = False
    running: int = 0
    waiting: int = 0
    waiting_before: int = 0  # the poll before: a queue that persists, not a passing one
    kv_usage: float = 0.0
    updated_s: float = -1e9
    vllm_text: str = ""  # the engine's vllm:* families, re-exported on our /metrics
    preemptions: int = 0  # cumulative, from AccelGen's in-engine side channel
    preempting: bool = False  # the count grew since the previous poll: KV is short
    budget_tokens: dict[str, float] = field(default_factory=dict)  # from the side channel
    planner_s: dict[str, float] = field(default_factory=dict)  # likewise: seconds per plan
    latency_model: LatencyModelReport = field(default_factory=LatencyModelReport)  # likewise
    error: str = "engine not checked yet"


def read_engine_stats(path: str) -> EngineStatsFile | None:
    """The in-engine scheduler's stats file (:mod:`accelgen.wire`), or None.

    The file is rewritten atomically by the engine; None if it is missing, unreadable
    or not that format (logged once per distinct problem: the poll repeats it).
    """
    global _last_problem
    try:
        return wire.read_engine_stats(Path(path))
    except OSError:
        return None
    except wire.WireError as err:
        if str(err) != _last_problem:
            _last_problem = str(err)
            log.warning("engine stats file ignored: %s", err)
        return None


def preemptions_of(snapshot: EngineStatsFile) -> int:
    """Total preemptions in a snapshot (summed over tiers)."""
    return snapshot.num_preemptions


def budget_of(snapshot: EngineStatsFile) -> dict[str, float]:
    """The snapshot's ``budget_tokens`` stats that are finite numbers (none before a step)."""
    budget = snapshot.budget_tokens
    raw = {"last": budget.last, "min": budget.min, "max": budget.max, "median": budget.median}
    return {stat: float(value) for stat, value in raw.items() if value is not None and math.isfinite(value)}


def planner_of(snapshot: EngineStatsFile) -> dict[str, float]:
    """The snapshot's planner seconds per step (median, p99, mean; none before a step)."""
    times = snapshot.planner_s
    raw = {"median": times.median, "p99": times.p99, "mean": times.mean}
    return {stat: float(value) for stat, value in raw.items() if value is not None and math.isfinite(value)}


def _number(value: object) -> float | None:
    """``value`` as a float if it is a finite number ≥ 0 (not a bool, a string or NaN)."""
    if isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value) and value >= 0:
        return float(value)
    return None


def latency_model_of(snapshot: EngineStatsFile) -> LatencyModelReport:
    """The snapshot's ``calibration`` (empty for an engine that reports none, or garbage)."""
    raw = snapshot.calibration
    regions = raw.get("regions")
    ratios: dict[str, dict[str, float]] = {}
    allowances_s: dict[str, float] = {}
    for region in REGIONS:  # a fixed list: unknown names never become label values
        entry = regions.get(region) if isinstance(regions, dict) else None
        if not isinstance(entry, dict):
            continue
        quantiles = {q: v for q, key in RATIO_QUANTILES.items() if (v := _number(entry.get(key))) is not None}
        if quantiles:
            ratios[region] = quantiles
        allowance = _number(entry.get("offset_s"))
        if allowance is not None:
            allowances_s[region] = allowance
    diagnosis = raw.get("diagnosis")
    fit: FittedLatencyModel | None = None
    if isinstance(raw.get("fit"), dict):
        try:
            fit = FittedLatencyModel.from_dict(raw["fit"])
        except (ConfigError, TypeError, ValueError):
            fit = None  # garbage: keep following the model the sidecar has
    return LatencyModelReport(
        slowdown=_number(raw.get("slowdown")),
        in_use_ratio_p99=_number(raw.get("in_use_ratio_p99")),
        num_overruns=_number(raw.get("num_overruns")),
        diagnosis=str(diagnosis) if diagnosis in DIAGNOSES else None,
        ratios=ratios,
        allowances_s=allowances_s,
        fit=fit,
    )


def read_preemptions(path: str) -> int | None:
    """Total preemptions in the stats file at ``path``; None if missing or unreadable."""
    snapshot = read_engine_stats(path)
    return None if snapshot is None else preemptions_of(snapshot)


def series_name(line: str) -> str:
    """The metric name a sample line starts with (up to its labels or its value); "" for a
    comment or an empty line."""
    if not line or line[0] == "#":
        return ""
    end = len(line)
    for mark in ("{", " "):
        at = line.find(mark)
        if at != -1:
            end = min(end, at)
    return line[:end]


def metric_samples(text: str, names: Collection[str]) -> list[Sample]:
    """The samples of the series ``names`` in a Prometheus text page, in page order.

    Parsed by prometheus_client's own parser, one line at a time: only the lines of
    those series are read (an engine's page has hundreds), and a line that is not a
    sample is skipped rather than losing the page.
    """
    out: list[Sample] = []
    for line in text.splitlines():
        if series_name(line) not in names:
            continue
        try:
            out.extend(s for family in text_string_to_metric_families(line + "\n") for s in family.samples)
        except ValueError:
            continue
    return out


def parse_engine_metrics(text: str) -> tuple[int, int, float, str]:
    """(running, waiting, kv_usage, vllm_families_text) from an engine's metrics page."""
    running = waiting = 0.0
    kv = 0.0
    for sample in metric_samples(text, _READ):
        if sample.name == _RUNNING:
            running += sample.value
        elif sample.name == _WAITING:
            waiting += sample.value
        else:
            kv = max(kv, sample.value)
    kept = [line for line in text.splitlines() if line.startswith(("vllm:", "# HELP vllm:", "# TYPE vllm:"))]
    text_out = "\n".join(kept) + "\n" if kept else ""
    return int(running), int(waiting), kv, text_out
