"""The online calibration of the latency model (:mod:`accelgen.core.calibration`), engine-free."""

from __future__ import annotations

import random

import pytest

from accelgen.core.calibration import Calibrator
from accelgen.core.latency import BatchShape, FittedLatencyModel, max_prefill_tokens_within

TRUE_MODEL = FittedLatencyModel(coefficients=(0.004, 2.0e-4, 1.0e-5, 1.0e-8, 2.0e-7))


def _shapes(rng: random.Random, n: int) -> list[BatchShape]:
    shapes = []
    for _ in range(n):
        shape = BatchShape()
        for _ in range(rng.randrange(0, 20)):
            shape = shape.plus_decode(context_tokens=rng.randrange(10, 3000))
        if rng.random() < 0.5:
            shape = shape.plus_prefill(rng.randrange(16, 2048), context_tokens=rng.randrange(0, 3000))
        if shape.num_tokens:
            shapes.append(shape)
    return shapes


def test_calibrator_fits_hands_on_each_fit_and_starts_from_one() -> None:
    rng = random.Random(3)
    prior = FittedLatencyModel(coefficients=(0.001, 1e-5, 0.0, 0.0, 0.0), name="prior")
    fits: list[FittedLatencyModel] = []
    cal = Calibrator(prior=prior, on_fit=fits.append, min_samples=32, refit_every=32, skip_first=2)
    changed = []
    for shape in _shapes(rng, 200):
        noise = rng.uniform(0.95, 1.05)
        changed.append(cal.add(shape, TRUE_MODEL.predict_s(shape) * noise))
    assert not any(changed[:33]) and any(changed)  # the prior until 32 samples
    assert fits and fits[-1] is cal.fitted and not cal.started_from_fit
    report = cal.report()
    assert report["model"] == "fitted-online" and report["loaded_from_file"] is False
    assert report["fit_error"] < 0.05
    assert report["online_error"] < 0.5  # includes the prior's predictions
    again = Calibrator(prior=prior, start_fit=fits[-1])
    assert again.started_from_fit and again.report()["loaded_from_file"] is True
    probe = BatchShape(num_decodes=16, decode_kv_tokens=16_000).plus_prefill(512, context_tokens=0)
    assert again.model.predict_s(probe) == pytest.approx(TRUE_MODEL.predict_s(probe), rel=0.1)


def test_calibrator_ignores_outliers_from_a_busy_machine() -> None:
    rng = random.Random(5)
    cal = Calibrator(prior=TRUE_MODEL, min_samples=32, refit_every=1000, skip_first=0)
    for shape in _shapes(rng, 300):
        slow = 10.0 if rng.random() < 0.05 else 1.0  # another process had the cores
        cal.add(shape, TRUE_MODEL.predict_s(shape) * slow * rng.uniform(0.97, 1.03))
    assert cal.refit() and cal.fitted is not None
    probe = BatchShape().plus_prefill(1024, context_tokens=0)
    assert cal.fitted.predict_s(probe) == pytest.approx(TRUE_MODEL.predict_s(probe), rel=0.1)
    assert cal.report()["fit_error"] < 0.05
    # The planner still plans for what the machine does: its tail, not only the fit.
    assert cal.model.predict_s(probe) >= cal.fitted.predict_s(probe)


@pytest.mark.parametrize("quantile", [0.95, None])
def test_calibrator_plans_for_a_machine_that_got_slower(quantile: float | None) -> None:
    """Sustained contention scales the model in use (not the fit handed on), and it recovers."""
    rng = random.Random(7)
    fits: list[FittedLatencyModel] = []
    cal = Calibrator(
        prior=TRUE_MODEL, on_fit=fits.append, min_samples=32, refit_every=10_000, slowdown_quantile=quantile
    )
    probe = BatchShape(num_decodes=8, decode_kv_tokens=4000).plus_prefill(400, context_tokens=0)
    big = [s for s in _shapes(rng, 2000) if TRUE_MODEL.predict_s(s) >= 0.05]

    def feed(shapes: list[BatchShape], slow: float) -> None:
        for shape in shapes:
            cal.add(shape, TRUE_MODEL.predict_s(shape) * slow * rng.uniform(0.97, 1.03))

    feed(big[:100], 1.0)  # quiet: fitted; planned at the machine's own 95th percentile
    assert cal.refit() and cal.slowdown <= 1.05
    assert cal.fitted is not None
    fitted_s = cal.fitted.predict_s(probe)
    # The allowance is the tail of every step size's ±3 % noise, in seconds.
    quiet_s = cal.model.predict_s(probe)
    assert fitted_s <= quiet_s <= 1.15 * fitted_s
    feed(big[100:200], 1.5)  # another job takes a share of the cores
    if quantile is None:
        assert cal.slowdown == 1.0 and cal.model.predict_s(probe) == pytest.approx(fitted_s)
        return
    assert 1.4 <= cal.slowdown <= 1.6
    assert 1.4 * fitted_s <= cal.model.predict_s(probe) <= 1.7 * fitted_s
    report = cal.report()
    assert report["slowdown"] == cal.slowdown and report["diagnosis"] == "machine-slower", report
    assert fits[-1].coefficients == cal.fitted.coefficients  # the fit handed on stays unscaled
    feed(big[200:300], 1.0)  # the other job ends
    assert cal.slowdown <= 1.05 and cal.model.predict_s(probe) <= 1.05 * quiet_s  # back to the quiet plan
    assert cal.report()["diagnosis"] == "ok"


def test_an_overrun_shrinks_the_next_plan_at_once_and_it_recovers() -> None:
    rng = random.Random(11)
    cal = Calibrator(prior=TRUE_MODEL, min_samples=32, refit_every=10_000, skip_first=0)
    shapes = [s for s in _shapes(rng, 3000) if TRUE_MODEL.predict_s(s) >= 0.02]
    for shape in shapes[:200]:
        cal.add(shape, TRUE_MODEL.predict_s(shape) * rng.uniform(0.98, 1.02))
    assert cal.refit()
    head = BatchShape(num_decodes=4, decode_kv_tokens=400)

    def budget() -> int:
        return max_prefill_tokens_within(cal.model, 0.1, base=head, context_tokens=0, cap_tokens=8192)

    before = budget()
    overrun = head.plus_prefill(300, context_tokens=0)
    assert cal.add(overrun, 1.8 * TRUE_MODEL.predict_s(overrun))  # one step took 1.8 x its prediction
    assert budget() < 0.6 * before  # the very next plan is smaller
    for shape in shapes[200:400]:
        cal.add(shape, TRUE_MODEL.predict_s(shape) * rng.uniform(0.98, 1.02))
    assert budget() >= 0.95 * before
    assert cal.report()["num_overruns"] >= 1


def test_a_region_the_model_gets_wrong_is_learnt_not_dropped() -> None:
    """Chunks deep into a long prompt cost more than the fit says: that region (not the
    machine) is off, its steps are kept, and the refit with the context terms learns them."""
    rng = random.Random(13)
    truth = FittedLatencyModel(coefficients=(*TRUE_MODEL.coefficients[:5], 0.0, 6e-6, 0.0))
    cal = Calibrator(prior=TRUE_MODEL, min_samples=32, refit_every=10_000, skip_first=0)
    short = [s for s in _shapes(rng, 600) if s.prefill_kv_tokens == 0]
    for shape in short[:150]:
        cal.add(shape, truth.predict_s(shape) * rng.uniform(0.98, 1.02))
    assert cal.refit()
    deep = [
        BatchShape(num_decodes=2, decode_kv_tokens=200).plus_prefill(
            rng.randrange(64, 512), context_tokens=rng.randrange(3000, 6000)
        )
        for _ in range(60)
    ]
    for shape in deep:
        cal.add(shape, truth.predict_s(shape) * rng.uniform(0.98, 1.02))
    diagnosis = cal.report()
    assert diagnosis["diagnosis"] == "model-off" and diagnosis["model_off_regions"] == ["mixed-long"], diagnosis
    assert cal.slowdown <= 1.05  # not the machine: the other regions run as fitted
    # Planned for meanwhile: that region's steps get an allowance of their own, in seconds.
    regions = diagnosis["regions"]
    others = [v["offset_s"] for r, v in regions.items() if r != "mixed-long" and v["window_steps"] >= 16]
    assert others and regions["mixed-long"]["offset_s"] >= 0.015 > max(others), regions
    planned = [cal.model.predict_s(shape) >= truth.predict_s(shape) for shape in deep]
    assert sum(planned) >= 0.8 * len(deep)
    assert cal.refit() and cal.num_outliers == 0  # nothing thrown away
    probe = deep[0]
    assert cal.fitted is not None
    assert cal.fitted.predict_s(probe) == pytest.approx(truth.predict_s(probe), rel=0.05)


def test_stalls_hold_no_allowance_up_at_the_planning_quantile() -> None:
    """Steps another process stalled (over STALL_FACTOR x usual) change neither the plan nor
    the fit: at the 99th percentile a few of them would otherwise set the allowance for a
    whole window and starve every prefill behind the decodes."""
    rng = random.Random(13)
    shapes = [s for s in _shapes(rng, 3000) if TRUE_MODEL.predict_s(s) >= 0.02]

    def calibrated(stall: float) -> Calibrator:
        cal = Calibrator(prior=TRUE_MODEL, min_samples=32, refit_every=10_000, skip_first=0)
        for shape in shapes[:200]:
            cal.add(shape, TRUE_MODEL.predict_s(shape) * rng.uniform(0.98, 1.02))
        assert cal.refit()
        for i, shape in enumerate(shapes[200:600]):
            slow = stall if i % 25 == 0 else 1.0  # 4 % of the steps
            cal.add(shape, TRUE_MODEL.predict_s(shape) * slow * rng.uniform(0.98, 1.02))
        return cal

    assert calibrated(1.0).slowdown_quantile == 0.99  # the SLO rule's 1 % of late tokens
    probe = BatchShape(num_decodes=4, decode_kv_tokens=400).plus_prefill(300, context_tokens=0)
    quiet = calibrated(1.0).model.predict_s(probe)
    assert calibrated(4.0).model.predict_s(probe) <= 1.05 * quiet  # stalls (> STALL_FACTOR x): no allowance
    assert calibrated(1.6).model.predict_s(probe) >= 1.3 * quiet  # a tail a smaller plan avoids: planned for
