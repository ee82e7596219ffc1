"""Calibration files (:mod:`accelgen.vllm.calibration`): a fit persisted and started from."""

from __future__ import annotations

import random
from pathlib import Path

import pytest

from accelgen.core.errors import ConfigError
from accelgen.core.latency import BatchShape, FittedLatencyModel
from accelgen.vllm.calibration import load_fit, persisted_calibrator, save_fit

TRUE_MODEL = FittedLatencyModel(coefficients=(0.004, 2.0e-4, 1.0e-5, 1.0e-8, 2.0e-7))
# Every term of the model varied on its own: decodes, their context, prompt chunks.
GRID = [
    BatchShape(num_decodes=d, decode_kv_tokens=d * kv).plus_prefill(p, context_tokens=0)
    for d in (1, 4, 16)
    for kv in (100, 1000)
    for p in (16, 256, 2048)
]


def test_calibrator_fits_persists_and_restarts_calibrated(tmp_path: Path) -> None:
    rng = random.Random(3)
    path = tmp_path / "fit.json"
    prior = FittedLatencyModel(coefficients=(0.001, 1e-5, 0.0, 0.0, 0.0), name="prior")
    cal = persisted_calibrator(prior=prior, path=path, min_samples=32, refit_every=32, skip_first=2)
    changed = []
    for shape in (GRID * 12)[:200]:
        noise = rng.uniform(0.95, 1.05)
        changed.append(cal.add(shape, TRUE_MODEL.predict_s(shape) * noise))
    assert not any(changed[:33]) and any(changed)  # the prior until 32 samples
    report = cal.report()
    assert report["model"] == "fitted-online"
    assert report["fit_error"] < 0.05
    again = persisted_calibrator(prior=prior, path=path)
    assert again.started_from_fit and again.model.name == "fitted-online"
    probe = BatchShape(num_decodes=16, decode_kv_tokens=16_000).plus_prefill(512, context_tokens=0)
    assert again.model.predict_s(probe) == pytest.approx(TRUE_MODEL.predict_s(probe), rel=0.1)
    assert cal.fitted is not None and load_fit(path).coefficients == cal.fitted.coefficients


def test_load_fit_rejects_other_files(tmp_path: Path) -> None:
    bad = tmp_path / "fit.json"
    bad.write_text('{"latency_model": {"coefficients": {"intercept_s": -1}}}')
    with pytest.raises(ConfigError, match=str(bad)):
        load_fit(bad)
    save_fit(bad, TRUE_MODEL)
    assert load_fit(bad).coefficients == TRUE_MODEL.coefficients
