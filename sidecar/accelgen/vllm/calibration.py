"""Online calibration of the iteration latency model from the engine's own steps.

The scheduler times every step and hands ``(BatchShape, measured seconds)`` here. Once
``min_samples`` have been seen, the samples are fitted with the core's
:class:`~accelgen.core.latency.FittedLatencyModel` and the fit replaces the prior; it is
refitted every ``refit_every`` samples on a sliding window. Each fit is written to
``path`` (JSON) so a restarted engine starts calibrated.

[ours] Slowdown: the fit is the engine's cost when the machine is its own (steps slowed
by other processes are dropped from it, below). When the machine gets slower for a while
(other work on shared CPUs, a throttled GPU, a noisy neighbour), the planner would keep
planning steps that overrun their deadlines. So the ratio measured / fitted of recent
steps (those predicted at ``slowdown_min_s`` or more: the ones a TBT budget is made of) is
tracked, and the model in use is the fit scaled by its ``slowdown_quantile`` (at least 1,
at most ``max_slowdown``), updated every 8 such steps when it moves by over 5 %. The
persisted fit stays unscaled.

Errors reported (fractions, mean absolute percentage error): ``fit_error`` on the samples
the fit kept, ``fit_error_all_samples`` on every sample of the window including the steps
dropped as outliers (slowed by other processes: over twice their prediction), and
``online_error``, the error of the model *in use* on steps it had not seen yet — the
number that says whether the planner's predictions hold.

Pure Python (no vLLM), so it is unit-tested without an engine.
"""

from __future__ import annotations

import json
import math
import os
import statistics
import tempfile
from collections import deque
from pathlib import Path
from typing import Any

import numpy as np

from accelgen.core.errors import ConfigError
from accelgen.core.latency import BatchShape, FittedLatencyModel

#: [ours] A rough prior for the tests' tiny model on a small CPU, from the figures in the
#: project's issue (prefill of 1,024 tokens ~34 ms; a decode step of 128 requests ~15 ms).
#: It is only used until ``min_samples`` steps have been timed (or a calibration file
#: is given); on a busy 2-core machine the real steps were 3-10x slower.
TINY_CPU_PRIOR = FittedLatencyModel(coefficients=(0.003, 3.0e-5, 2.0e-5, 2.0e-9, 5.0e-8), name="prior-tiny-cpu")


class Calibrator:
    """Collects step timings and keeps the fitted latency model current.

    Args:
        prior: The model used until enough samples exist.
        path: Where the fit is persisted (read at start if present); None: not persisted.
        min_samples: Samples needed before the first fit is used.
        refit_every: Samples between refits (at least an eighth of the window's samples).
        window: Most recent samples a fit uses.
        skip_first: Steps ignored at start (warm-up: allocator, first-touch, caches).
        slowdown_quantile: Quantile of recent measured / fitted ratios the model in use
            is scaled by (see the module docstring); None: never scale.
        slowdown_window: Recent steps the quantile is taken over.
        slowdown_min_s: Only steps the fit predicts at this or longer count.
        max_slowdown: The largest scale applied.
    """

    def __init__(
        self,
        *,
        prior: FittedLatencyModel,
        path: Path | None = None,
        min_samples: int = 32,
        refit_every: int = 32,
        window: int = 4096,
        skip_first: int = 3,
        slowdown_quantile: float | None = 0.9,
        slowdown_window: int = 64,
        slowdown_min_s: float = 0.02,
        max_slowdown: float = 3.0,
    ) -> None:
        if min_samples < 2 or refit_every < 1:
            raise ValueError("min_samples must be >= 2 and refit_every >= 1")
        self.path = path
        self.min_samples = min_samples
        self.refit_every = refit_every
        self.skip_first = skip_first
        self.model: FittedLatencyModel = prior
        self.fitted: FittedLatencyModel | None = None
        self.loaded_from_file = False
        self._samples: deque[tuple[BatchShape, float]] = deque(maxlen=window)
        self._since_fit = 0
        self._seen = 0
        # Relative errors of the model in use on samples it was not fitted on.
        self._online_errors: deque[float] = deque(maxlen=1024)
        self.num_outliers = 0
        self.fit_error_all: float | None = None
        self.slowdown_quantile = slowdown_quantile
        self.slowdown_min_s = slowdown_min_s
        self.max_slowdown = max_slowdown
        self.slowdown = 1.0
        self._ratios: deque[float] = deque(maxlen=slowdown_window)  # measured / fitted, recent steps
        self._since_slowdown = 0
        if path is not None and path.exists():
            self.fitted = load_fit(path)
            self.model = self.fitted
            self.loaded_from_file = True

    @property
    def num_samples(self) -> int:
        return len(self._samples)

    def add(self, shape: BatchShape, measured_s: float) -> bool:
        """Record one timed step; returns True when the model in use changed."""
        self._seen += 1
        if self._seen <= self.skip_first or shape.num_tokens == 0 or measured_s <= 0:
            return False
        predicted_s = self.model.predict_s(shape)
        self._online_errors.append(abs(predicted_s - measured_s) / measured_s)
        self._samples.append((shape, measured_s))
        self._since_fit += 1
        changed = self._track_slowdown(shape, measured_s)
        # Refits get rarer as the window fills (a fit costs milliseconds inside the engine
        # loop; once hundreds of samples agree, one more moves little).
        due = max(self.refit_every, len(self._samples) // 8)
        if len(self._samples) < self.min_samples or self._since_fit < due:
            return changed
        return self.refit() or changed

    def _track_slowdown(self, shape: BatchShape, measured_s: float) -> bool:
        """Update the slowdown from this step; True when the model in use changed."""
        fit = self.fitted
        if fit is None or self.slowdown_quantile is None:
            return False  # the prior is no yardstick for the machine's speed
        fitted_s = fit.predict_s(shape)
        if fitted_s < self.slowdown_min_s:
            return False
        self._ratios.append(measured_s / fitted_s)
        self._since_slowdown += 1
        if len(self._ratios) < 16 or self._since_slowdown < 8:
            return False
        self._since_slowdown = 0
        q = float(np.quantile(list(self._ratios), self.slowdown_quantile))
        slowdown = min(max(q, 1.0), self.max_slowdown)
        if abs(slowdown - self.slowdown) <= 0.05 * self.slowdown:
            return False
        self.slowdown = slowdown
        self.model = fit if slowdown == 1.0 else fit.scaled(slowdown)
        return True

    def refit(self) -> bool:
        """Fit the window now; True when the fit is in use afterwards."""
        if len(self._samples) < 2:
            return False
        self._since_fit = 0
        samples = list(self._samples)
        fit = fit_relative(samples)
        # [ours] Steps slowed by other processes on the machine are not the batch's cost:
        # drop samples measured at over twice their prediction (the median sample's ratio
        # is ~1) and refit, twice. Contention only ever adds time, so only slow ones go.
        kept = samples
        for _ in range(2):
            ratios = [d / max(fit.predict_s(shape), 1e-9) for shape, d in samples]
            cutoff = 2.0 * statistics.median(ratios)
            kept = [x for x, ratio in zip(samples, ratios, strict=True) if ratio <= cutoff]
            if len(kept) < max(2, len(samples) // 2):
                break
            fit = fit_relative(kept)
        if not all(math.isfinite(c) for c in fit.coefficients) or fit.predict_s(BatchShape()) < 0:
            return False
        self.num_outliers = len(samples) - len(kept)
        self.fit_error_all = statistics.fmean(abs(fit.predict_s(shape) - d) / d for shape, d in samples)
        self.fitted = fit
        self.model = fit if self.slowdown == 1.0 else fit.scaled(self.slowdown)
        self._ratios.clear()  # they were against the previous fit
        if self.path is not None:
            save_fit(self.path, fit)
        return True

    def report(self) -> dict[str, Any]:
        """Numbers for the stats side channel (errors are fractions, 0.1 = 10 %)."""
        errors = list(self._online_errors)
        return {
            "model": self.model.name,
            "num_samples": len(self._samples),
            "loaded_from_file": self.loaded_from_file,
            "fit_error": None if self.fitted is None else self.fitted.fit_error,
            "fit_p90_error": None if self.fitted is None else self.fitted.p90_error,
            "fit_error_all_samples": self.fit_error_all,
            "num_outliers": self.num_outliers,
            "noise_floor": noise_floor(list(self._samples)),
            "online_error": statistics.fmean(errors) if errors else None,
            "online_median_error": statistics.median(errors) if errors else None,
            "slowdown": self.slowdown,
            "fit": None if self.fitted is None else self.fitted.to_dict(),
        }


def _features(shape: BatchShape) -> list[float]:
    # NOTE: the terms of FittedLatencyModel.predict_s, in the order of its coefficients.
    return [
        1.0,
        float(shape.num_prefill_tokens + shape.num_decodes),
        float(shape.num_decodes),
        shape.prefill_attention_pairs,
        float(shape.decode_kv_tokens),
    ]


def fit_relative(samples: list[tuple[BatchShape, float]], *, name: str = "fitted-online") -> FittedLatencyModel:
    """Non-negative least squares on *relative* error: each row weighted by 1/duration.

    [ours] The core's fit minimises squared seconds, where a 500 ms prefill outweighs a
    hundred 5 ms decode steps; the planner needs every step right in proportion (a TBT
    budget is decided by the small ones), so the objective here matches the reported
    error. Columns without variation are left out, as in the core's fit.
    """
    x = np.array([_features(shape) for shape, _ in samples])
    y = np.array([d for _, d in samples])
    w = 1.0 / np.maximum(y, 1e-9)
    active = [0] + [j for j in range(1, x.shape[1]) if np.ptp(x[:, j]) > 0]
    coef = np.zeros(x.shape[1])
    while True:  # active-set NNLS: drop the columns that come out negative, refit
        scale = np.maximum(np.abs(x[:, active]).max(axis=0), 1e-12)
        a = x[:, active] / scale * w[:, None]
        sol = np.linalg.lstsq(a, y * w, rcond=None)[0] / scale
        negative = {j for j, v in zip(active, sol, strict=True) if v < 0}
        if not negative:
            break
        active = [j for j in active if j not in negative]
        if not active:
            break
    coef[:] = 0.0
    if active:
        coef[active] = sol
    rel = np.abs(x @ coef - y) / np.maximum(y, 1e-12)
    return FittedLatencyModel(
        coefficients=(float(coef[0]), float(coef[1]), float(coef[2]), float(coef[3]), float(coef[4])),
        num_samples=len(samples),
        fit_error=float(rel.mean()),
        p90_error=float(np.quantile(rel, 0.9)),
        name=name,
    )


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


def save_fit(path: Path, fit: FittedLatencyModel) -> None:
    """Write the fit atomically (a reader never sees half a file)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".calibration-", suffix=".json")
    with os.fdopen(fd, "w", encoding="utf-8") as f:
        json.dump({"latency_model": fit.to_dict()}, f, indent=2)
    os.replace(tmp, path)


def load_fit(path: Path) -> FittedLatencyModel:
    """Read a fit written by :func:`save_fit`; ConfigError naming the file otherwise."""
    try:
        raw = json.loads(path.read_text(encoding="utf-8"))
        return FittedLatencyModel.from_dict(raw["latency_model"])
    except ConfigError as err:
        raise err.within(source=str(path), prefix="latency_model") from None
    except (OSError, ValueError, KeyError, TypeError) as err:
        raise ConfigError(f"not a calibration file: {err}", source=str(path)) from None
