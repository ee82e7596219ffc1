"""Latency models: the fitted model recovers known costs and reports its error honestly."""

from __future__ import annotations

import random

import pytest

from accelgen.core.errors import ConfigError
from accelgen.core.latency import BatchShape, FittedLatencyModel, ProfileLatencyModel, max_prefill_tokens_within

TRUE = (0.004, 2e-5, 1e-5, 3e-9, 1e-7)  # intercept, per token, per decode, per pair, per KV token


def sample_shapes(n: int, seed: int) -> list[BatchShape]:
    rng = random.Random(seed)
    shapes = []
    for _ in range(n):
        s = BatchShape()
        for _ in range(rng.randint(0, 64)):
            s = s.plus_decode(context_tokens=rng.randint(10, 3000))
        if rng.random() < 0.6:
            s = s.plus_prefill(rng.randint(1, 2048), context_tokens=rng.randint(0, 4000))
        if s.num_tokens:
            shapes.append(s)
    return shapes


def test_fit_recovers_coefficients_without_noise() -> None:
    truth = FittedLatencyModel(coefficients=TRUE)
    samples = [(s, truth.predict_s(s)) for s in sample_shapes(300, seed=1)]
    fitted = FittedLatencyModel.fit(samples)
    assert fitted.coefficients == pytest.approx(TRUE, rel=1e-6, abs=1e-12)
    assert fitted.fit_error < 1e-9 and fitted.num_samples == len(samples)


def test_fit_error_reflects_noise() -> None:
    truth = FittedLatencyModel(coefficients=TRUE)
    rng = random.Random(2)
    samples = [(s, truth.predict_s(s) * rng.uniform(0.9, 1.1)) for s in sample_shapes(400, seed=2)]
    fitted = FittedLatencyModel.fit(samples)
    assert 0.02 < fitted.fit_error < 0.08  # ±10 % uniform noise: mean |error| ≈ 5 %
    assert fitted.p90_error >= fitted.fit_error


def test_fit_keeps_coefficients_non_negative_and_skips_constant_columns() -> None:
    # Decode-only samples: no prefill column varies, so its coefficient stays 0.
    samples = [(BatchShape(num_decodes=k, decode_kv_tokens=k * 100), 0.01 + 0.001 * k) for k in range(1, 50)]
    fitted = FittedLatencyModel.fit(samples)
    assert all(c >= 0 for c in fitted.coefficients)
    assert fitted.coefficients[3] == 0.0
    assert fitted.predict_s(BatchShape(num_decodes=10, decode_kv_tokens=1000)) == pytest.approx(0.02, rel=1e-6)


def test_round_trip_and_bad_files() -> None:
    model = FittedLatencyModel(coefficients=TRUE, num_samples=5, fit_error=0.1, p90_error=0.2)
    assert FittedLatencyModel.from_dict(model.to_dict()) == model
    raw = model.to_dict()
    raw["coefficients"]["per_token_s"] = -1
    with pytest.raises(ConfigError, match="non-negative") as info:
        FittedLatencyModel.from_dict(raw)
    assert info.value.field == "coefficients.per_token_s"
    with pytest.raises(ValueError, match="two samples"):
        FittedLatencyModel.fit([(BatchShape(num_decodes=1), 0.01)])


def test_profile_interpolates_and_extrapolates() -> None:
    model = ProfileLatencyModel(
        name="toy",
        mlp_points=((1, 0.001), (100, 0.002), (200, 0.004)),
        prefill_pair_s=0.0,
        decode_kv_token_s=0.0,
        overhead_s=0.0,
    )
    assert model.mlp_s(150) == pytest.approx(0.003)
    assert model.mlp_s(300) == pytest.approx(0.006)  # upper-half slope 2e-5 per token
    assert model.mlp_s(0) == pytest.approx(0.001)


def test_inversion_accounts_for_attention_context() -> None:
    model = FittedLatencyModel(coefficients=(0.01, 1e-4, 0.0, 1e-8, 0.0))
    near = max_prefill_tokens_within(model, 0.1, base=BatchShape(), context_tokens=0, cap_tokens=10_000)
    far = max_prefill_tokens_within(model, 0.1, base=BatchShape(), context_tokens=50_000, cap_tokens=10_000)
    assert far < near
    assert model.predict_s(BatchShape().plus_prefill(far, context_tokens=50_000)) <= 0.1
    assert model.predict_s(BatchShape().plus_prefill(far + 1, context_tokens=50_000)) > 0.1


def test_scaled_fitted_model_predicts_proportionally_longer() -> None:
    model = FittedLatencyModel(coefficients=(0.004, 2.0e-4, 1.0e-5, 1.0e-8, 2.0e-7), name="fit")
    slower = model.scaled(1.5)
    shape = BatchShape(num_decodes=8, decode_kv_tokens=4000).plus_prefill(300, context_tokens=100)
    assert slower.predict_s(shape) == pytest.approx(1.5 * model.predict_s(shape))
    assert slower.name == "fit"

    # The budget shrinks accordingly: the same limit admits a smaller chunk.
    def budget(m: FittedLatencyModel) -> int:
        return max_prefill_tokens_within(m, 0.1, base=BatchShape(num_decodes=8), context_tokens=0, cap_tokens=8192)

    assert 0 < budget(slower) < budget(model)
