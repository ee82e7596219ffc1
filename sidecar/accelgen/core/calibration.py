"""Online calibration of the iteration latency model from the engine's own steps.

An engine times every step and hands ``(BatchShape, measured seconds)`` here. Once
``min_samples`` have been seen, the samples are fitted with
:class:`~accelgen.core.latency.FittedLatencyModel` (relative least squares) and the fit
replaces the prior; it is refitted every ``refit_every`` samples on a sliding window.
Each new fit goes to ``on_fit`` (the vLLM scheduler persists it, so a restarted engine
starts calibrated); no file is touched here.

[ours] The planner plans with a high quantile of each step's time, not the fit's mean,
in two parts: how much slower the machine runs than fitted (a proportion, every shape
alike) and, per region of shape space (:func:`~accelgen.core.latency.region_of`: decode /
prefill / mixed × short / long context), the tail its steps need beyond that (a time:
jitter from other processes adds milliseconds, not a percentage)::

    scale      = min over regions of the median measured / fitted   (in [1, max_slowdown])
    offset(r)  = quantile(last `slowdown_window` (measured - scale x fitted) of region r), >= 0
    default    = the same over every region's recent steps (regions with too few steps)
    model in use = QuantileLatencyModel(fit, scale, offsets, default)

Both are re-derived every 8 steps. Feedback: a step that overruns the model in use by
more than ``overrun_tolerance`` raises its region's offset (and the default) to its own
excess at once, so the very next plan is smaller; the quantile takes over again at the
next update, so the allowance falls back once overruns stop. Stalls (:data:`STALL_FACTOR`) count in
neither: no smaller plan avoids them, and at a high quantile one stall would hold the
allowance up for a whole window, starving every prefill behind the decodes. The fit handed to
``on_fit`` stays as fitted.

A slower machine and a wrong model look different: on a slower machine (other work on
shared CPUs, a throttled GPU) every region's steps run long; with a wrong model one
region does (chunks deep into a long prompt, say). ``report()["diagnosis"]`` says which.
Neither is discarded: a step is dropped from the fit only when it took over twice what
its own region's steps usually take relative to the fit (a step slowed by another
process), so a region the model gets wrong keeps its samples and the next refit learns
it.

Errors reported (fractions): ``fit_error`` (mean absolute percentage error on the
samples the fit kept), ``fit_error_all_samples`` (every sample of the window),
``online_error`` (the model *in use* on steps it had not seen yet), per region the
quantiles of measured ÷ fitted and the factor in use, and ``in_use_ratio_p99``: the 99th
percentile of measured ÷ predicted-by-the-model-in-use over recent steps predicted at
20 ms or more — whether the planner's predictions hold.
"""

from __future__ import annotations

import math
import statistics
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from accelgen.core.latency import REGIONS, BatchShape, FittedLatencyModel, LatencyModel, QuantileLatencyModel, region_of
from accelgen.core.slo import PLANNING_QUANTILE

#: [ours] A rough prior for the tests' tiny model (hidden 256, 2 layers) on a small CPU:
#: prefill of 1,024 tokens ~34 ms, a decode step of 128 requests ~15 ms. Other models get
#: it scaled by their size (:func:`prior_for`). Used only until ``min_samples`` steps have
#: been timed, or not at all when the engine starts from a calibration file (one that
#: ``accelgen bench vllm`` measures with probe steps, or an earlier run's).
TINY_CPU_PRIOR = FittedLatencyModel(coefficients=(0.003, 3.0e-5, 2.0e-5, 2.0e-9, 5.0e-8), name="prior-tiny-cpu")
_TINY = {"hidden": 256, "layers": 2, "intermediate": 512}

#: Steps predicted at this or longer count towards ``in_use_ratio_p99`` (the figure the
#: project's benchmark goal is stated in).
REPORT_MIN_S = 0.02

#: A step over this many times what its region's steps usually take (relative to the
#: fit) is a stall — another process had the CPU — not the batch's cost: left out of the
#: fit, of the tail allowance and of the overrun feedback.
STALL_FACTOR = 2.0


def prior_for(*, hidden: int, layers: int, intermediate: int) -> FittedLatencyModel:
    """:data:`TINY_CPU_PRIOR` scaled to a model of this size: per-token terms by the weights
    each token multiplies, attention terms by layers × hidden, the fixed cost by layers."""

    def weights(h: int, n: int, i: int) -> float:
        return n * (4.0 * h * h + 3.0 * h * i)

    c = TINY_CPU_PRIOR.coefficients
    per_token = weights(hidden, layers, intermediate) / weights(_TINY["hidden"], _TINY["layers"], _TINY["intermediate"])
    attention = (layers * hidden) / (_TINY["layers"] * _TINY["hidden"])
    fixed = layers / _TINY["layers"]
    return FittedLatencyModel(
        coefficients=(c[0] * fixed, c[1] * per_token, c[2] * per_token, c[3] * attention, c[4] * attention),
        name=f"prior-cpu-h{hidden}-l{layers}",
    )


@dataclass(slots=True)
class _Region:
    """Recent (fitted, measured) seconds of one region's steps, and its offset in use."""

    steps: deque[tuple[float, float]]
    offset_s: float = 0.0
    num_steps: int = 0


@dataclass(slots=True)
class _Window:
    """Per-region and overall windows of recent steps."""

    size: int
    regions: dict[str, _Region] = field(default_factory=dict)
    overall: deque[tuple[float, float]] = field(default_factory=deque)

    def __post_init__(self) -> None:
        self.regions = {r: _Region(deque(maxlen=self.size)) for r in REGIONS}
        self.overall = deque(maxlen=self.size)

    def clear(self) -> None:
        self.__post_init__()


class Calibrator:
    """Collects step timings and keeps the fitted latency model (and the one in use) current.

    Args:
        prior: The model used until enough samples exist.
        start_fit: A fit to start from (e.g. an earlier run's, persisted); None: the prior.
        on_fit: Called with every new fit (to persist it); None: not persisted.
        min_samples: Samples needed before the first fit is used.
        refit_every: Samples between refits (at least an eighth of the window's samples).
        window: Most recent samples a fit uses.
        skip_first: Steps ignored at start (warm-up: allocator, first-touch, caches).
        slowdown_quantile: The quantile of each region's steps the planner plans for
            (module docstring); None: plan with the fit itself, never scale or offset.
            Default: 1 − the SLO rule's share of late tokens (a step may overrun as
            often as a token may be late).
        slowdown_window: Recent steps per region the quantile is taken over.
        slowdown_min_s: Only steps the fit predicts at this or longer count; None: all.
        max_slowdown: The largest scale applied.
        overrun_tolerance: A step longer than (1 + this) × its prediction is an overrun.
        long_context_tokens: Where a region's context turns ``long``.
    """

    def __init__(
        self,
        *,
        prior: FittedLatencyModel,
        start_fit: FittedLatencyModel | None = None,
        on_fit: Callable[[FittedLatencyModel], None] | None = None,
        min_samples: int = 32,
        refit_every: int = 32,
        window: int = 4096,
        skip_first: int = 3,
        slowdown_quantile: float | None = PLANNING_QUANTILE,
        slowdown_window: int = 64,
        slowdown_min_s: float | None = None,
        max_slowdown: float = 3.0,
        overrun_tolerance: float = 0.1,
        long_context_tokens: int = 1024,
    ) -> None:
        if min_samples < 2 or refit_every < 1:
            raise ValueError("min_samples must be >= 2 and refit_every >= 1")
        self.on_fit = on_fit
        self.min_samples = min_samples
        self.refit_every = refit_every
        self.skip_first = skip_first
        self.model: LatencyModel = prior
        self.fitted: FittedLatencyModel | None = None
        self.started_from_fit = False
        self._samples: deque[tuple[BatchShape, float]] = deque(maxlen=window)
        self._since_fit = 0
        self._seen = 0
        # Relative errors of the model in use on samples it was not fitted on.
        self._online_errors: deque[float] = deque(maxlen=1024)
        # (predicted by the model in use, measured) of recent steps predicted >= REPORT_MIN_S.
        self._in_use: deque[float] = deque(maxlen=1024)
        self.num_outliers = 0
        self.num_overruns = 0
        self.fit_error_all: float | None = None
        self.slowdown_quantile = slowdown_quantile
        self.slowdown_min_s = slowdown_min_s
        self.max_slowdown = max_slowdown
        self.overrun_tolerance = overrun_tolerance
        self.long_context_tokens = long_context_tokens
        self.slowdown = 1.0  # the machine's scale: how much slower than fitted, every shape alike
        self.default_offset_s = 0.0  # the tail allowance of regions without enough steps of their own
        self._window = _Window(slowdown_window)
        self._since_update = 0
        if start_fit is not None:
            self._use_fit(start_fit)
            self.started_from_fit = True

    @property
    def num_samples(self) -> int:
        return len(self._samples)

    def region(self, shape: BatchShape) -> str:
        return region_of(shape, long_context_tokens=self.long_context_tokens)

    def add(self, shape: BatchShape, measured_s: float) -> bool:
        """Record one timed step; returns True when the model in use changed."""
        self._seen += 1
        if self._seen <= self.skip_first or shape.num_tokens == 0 or measured_s <= 0:
            return False
        predicted_s = self.model.predict_s(shape)
        self._online_errors.append(abs(predicted_s - measured_s) / measured_s)
        if predicted_s >= REPORT_MIN_S:
            self._in_use.append(measured_s / predicted_s)
        self._samples.append((shape, measured_s))
        self._since_fit += 1
        changed = self._track(shape, measured_s, predicted_s)
        # Refits get rarer as the window fills (a fit costs milliseconds inside the engine
        # loop; once hundreds of samples agree, one more moves little).
        due = max(self.refit_every, len(self._samples) // 8)
        if len(self._samples) < self.min_samples or self._since_fit < due:
            return changed
        return self.refit() or changed

    def _track(self, shape: BatchShape, measured_s: float, predicted_s: float) -> bool:
        """Update scale and offsets from this step; True when the model in use changed."""
        fit = self.fitted
        if fit is None or self.slowdown_quantile is None:
            return False  # the prior is no yardstick for the machine's speed
        fitted_s = fit.predict_s(shape)
        if fitted_s <= 0 or (self.slowdown_min_s is not None and fitted_s < self.slowdown_min_s):
            return False
        region = self._window.regions[self.region(shape)]
        region.steps.append((fitted_s, measured_s))
        region.num_steps += 1
        self._window.overall.append((fitted_s, measured_s))
        self._since_update += 1
        changed = False
        overran = measured_s > predicted_s * (1.0 + self.overrun_tolerance)
        if overran and not self._stalled(region, fitted_s, measured_s):
            # Feedback: plan the next steps for this overrun now, not at the next update.
            self.num_overruns += 1
            excess = measured_s - self.slowdown * fitted_s
            region.offset_s = max(region.offset_s, excess)
            self.default_offset_s = max(self.default_offset_s, excess)
            changed = True
        if self._since_update >= 8 and len(self._window.overall) >= 16:
            self._since_update = 0
            changed = self._update() or changed
        if changed:
            self._rebuild_model()
        return changed

    @staticmethod
    def _stalled(region: _Region, fitted_s: float, measured_s: float) -> bool:
        """Over :data:`STALL_FACTOR` × what the region's steps usually take relative to the fit."""
        if len(region.steps) < 16:
            return False
        return measured_s > STALL_FACTOR * statistics.median(m / f for f, m in region.steps) * fitted_s

    def _update(self) -> bool:
        """Re-derive the scale and the offsets from the windows; True when they moved."""
        q = self.slowdown_quantile
        assert q is not None
        medians = [
            statistics.median(m / f for f, m in r.steps) for r in self._window.regions.values() if len(r.steps) >= 16
        ]
        if not medians:
            medians = [statistics.median(m / f for f, m in self._window.overall)]
        scale = min(max(min(medians), 1.0), self.max_slowdown)

        def tail_s(steps: deque[tuple[float, float]]) -> float:
            # A stall (another process had the CPU) is no cost of the batch: no smaller
            # plan avoids it, and at a high quantile one would hold the allowance up
            # for a whole window. Left out, as the fit leaves it out.
            usual = STALL_FACTOR * statistics.median(m / f for f, m in steps)
            return max(0.0, float(np.quantile([m - scale * f for f, m in steps if m <= usual * f], q)))

        moved = abs(scale - self.slowdown) > 0.01 * self.slowdown
        self.slowdown = scale
        new_default = tail_s(self._window.overall)
        moved = moved or abs(new_default - self.default_offset_s) > max(0.05 * self.default_offset_s, 2e-4)
        self.default_offset_s = new_default
        for region in self._window.regions.values():
            if len(region.steps) >= 16:
                new = tail_s(region.steps)
                moved = moved or abs(new - region.offset_s) > max(0.05 * region.offset_s, 2e-4)
                region.offset_s = new
        return moved

    def _rebuild_model(self) -> None:
        fit = self.fitted
        assert fit is not None
        offsets = {name: r.offset_s for name, r in self._window.regions.items() if len(r.steps) >= 16}
        self.model = QuantileLatencyModel(
            fit,
            scale=self.slowdown,
            offsets_s=offsets,
            default_offset_s=self.default_offset_s,
            long_context_tokens=self.long_context_tokens,
        )

    def _use_fit(self, fit: FittedLatencyModel) -> None:
        """Make ``fit`` the fit; the windows are re-derived from the recent samples."""
        self.fitted = fit
        counts = {name: r.num_steps for name, r in self._window.regions.items()}
        self._window.clear()
        for name, count in counts.items():
            self._window.regions[name].num_steps = count
        if self.slowdown_quantile is None:
            self.model = fit
            return
        for shape, measured_s in list(self._samples)[-4 * self._window.size :]:
            fitted_s = fit.predict_s(shape)
            if fitted_s > 0 and (self.slowdown_min_s is None or fitted_s >= self.slowdown_min_s):
                self._window.regions[self.region(shape)].steps.append((fitted_s, measured_s))
                self._window.overall.append((fitted_s, measured_s))
        if len(self._window.overall) >= 16:
            self._update()
        self._rebuild_model()

    def refit(self) -> bool:
        """Fit the window now; True when the fit is in use afterwards."""
        if len(self._samples) < 2:
            return False
        self._since_fit = 0
        samples = list(self._samples)
        fit = FittedLatencyModel.fit(samples, relative=True, name="fitted-online")
        # [ours] A step slowed by another process is not the batch's cost: drop samples
        # measured at over twice what their own region's steps take relative to the fit,
        # and refit, twice. Per region: a region the model gets wrong is not noise.
        kept = samples
        for _ in range(2):
            ratios = [d / max(fit.predict_s(shape), 1e-9) for shape, d in samples]
            by_region: dict[str, list[float]] = {}
            regions = [self.region(shape) for shape, _ in samples]
            for region, ratio in zip(regions, ratios, strict=True):
                by_region.setdefault(region, []).append(ratio)
            cutoff = {region: STALL_FACTOR * statistics.median(values) for region, values in by_region.items()}
            kept = [x for x, r, g in zip(samples, ratios, regions, strict=True) if r <= cutoff[g]]
            if len(kept) < max(2, len(samples) // 2):
                break
            fit = FittedLatencyModel.fit(kept, relative=True, name="fitted-online")
        if not all(math.isfinite(c) for c in fit.coefficients) or fit.predict_s(BatchShape()) < 0:
            return False
        self.num_outliers = len(samples) - len(kept)
        self.fit_error_all = statistics.fmean(abs(fit.predict_s(shape) - d) / d for shape, d in samples)
        self._use_fit(fit)
        if self.on_fit is not None:
            self.on_fit(fit)
        return True

    def diagnosis(self) -> tuple[str, list[str]]:
        """("ok" | "machine-slower" | "model-off", the regions the model gets wrong).

        Machine slower: every region with steps runs ≥ 15 % over the fit at the median.
        Model off: a region's median runs over 25 % above the fastest region's (the
        model errs in it, not the machine, which would slow every region alike). A
        region the model overestimates is safe and not flagged.
        """
        medians = {
            name: statistics.median(m / f for f, m in region.steps)
            for name, region in self._window.regions.items()
            if len(region.steps) >= 16
        }
        if not medians:
            return "ok", []
        fastest = min(medians.values())
        off = sorted(name for name, m in medians.items() if m > 1.25 * fastest)
        if off:
            return "model-off", off
        if fastest >= 1.15:
            return "machine-slower", []
        return "ok", []

    def report(self) -> dict[str, Any]:
        """Numbers for the stats side channel (errors are fractions, 0.1 = 10 %)."""
        errors = list(self._online_errors)
        diagnosis, off = self.diagnosis()
        regions = {}
        for name, region in self._window.regions.items():
            if not region.steps:
                continue
            ratios = [m / f for f, m in region.steps]
            p50, p90, p99 = (float(v) for v in np.quantile(ratios, [0.5, 0.9, 0.99]))
            regions[name] = {
                "num_steps": region.num_steps,  # timed since the first fit
                "window_steps": len(region.steps),  # the quantiles are over these
                "ratio_p50": p50,
                "ratio_p90": p90,
                "ratio_p99": p99,
                "offset_s": region.offset_s if len(region.steps) >= 16 else self.default_offset_s,
            }
        return {
            "model": self.model.name,
            "num_samples": len(self._samples),
            "loaded_from_file": self.started_from_fit,  # its readers' name: a persisted fit
            "fit_error": None if self.fitted is None else self.fitted.fit_error,
            "fit_p90_error": None if self.fitted is None else self.fitted.p90_error,
            "fit_error_all_samples": self.fit_error_all,
            "num_outliers": self.num_outliers,
            "noise_floor": noise_floor(list(self._samples)),
            "online_error": statistics.fmean(errors) if errors else None,
            "online_median_error": statistics.median(errors) if errors else None,
            "in_use_ratio_p99": float(np.quantile(self._in_use, 0.99)) if self._in_use else None,
            "num_in_use_steps": len(self._in_use),
            "num_overruns": self.num_overruns,
            "quantile": self.slowdown_quantile,
            "slowdown": self.slowdown,
            "default_offset_s": self.default_offset_s,
            "diagnosis": diagnosis,
            "model_off_regions": off,
            "regions": regions,
            "fit": None if self.fitted is None else self.fitted.to_dict(),
        }


def noise_floor(samples: list[tuple[BatchShape, float]], *, min_repeats: int = 5) -> float | None:
    """The median relative deviation of steps of one identical shape from their median.

    No latency model can be more accurate than the machine is repeatable; this says how
    repeatable it was (None when no shape repeated ``min_repeats`` times).
    """
    groups: dict[BatchShape, list[float]] = {}
    for shape, d in samples:
        groups.setdefault(shape, []).append(d)
    deviations = []
    for durations in groups.values():
        if len(durations) >= min_repeats:
            m = statistics.median(durations)
            deviations += [abs(d - m) / m for d in durations]
    return statistics.median(deviations) if deviations else None
