"""Latency models: the fitted model recovers known costs and reports its error honestly."""

from __future__ import annotations

import random

import pytest

from accelgen.core.errors import ConfigError
from accelgen.core.latency import (
    BatchShape,
    FittedLatencyModel,
    ProfileLatencyModel,
    QuantileLatencyModel,
    max_prefill_tokens_within,
    region_of,
)

# intercept, per token, per decode, per pair, per KV token, per context pair, per prefill KV token, per chunk
TRUE = (0.004, 2e-5, 1e-5, 3e-9, 1e-7, 2e-9, 4e-7, 5e-4)


def sample_shapes(n: int, seed: int) -> list[BatchShape]:
    rng = random.Random(seed)
    shapes = []
    for _ in range(n):
        s = BatchShape()
        for _ in range(rng.randint(0, 64)):
            s = s.plus_decode(context_tokens=rng.randint(10, 3000))
        for _ in range(rng.choice((0, 0, 1, 1, 2))):
            s = s.plus_prefill(rng.randint(1, 2048), context_tokens=rng.choice((0, rng.randint(1, 4000))))
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
    old = {"coefficients": dict(list(raw["coefficients"].items())[:5])}  # a file from before the context terms
    assert FittedLatencyModel.from_dict(old).coefficients == (*TRUE[:5], 0.0, 0.0, 0.0)
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


def test_a_chunk_deep_into_a_prompt_pays_for_the_context_it_reads() -> None:
    """A fixed cost per cached KV token read: past some context not even one token fits."""
    model = FittedLatencyModel(coefficients=(0.002, 1e-4, 0.0, 0.0, 0.0, 0.0, 2e-5, 0.0))
    fresh = max_prefill_tokens_within(model, 0.05, base=BatchShape(), context_tokens=0, cap_tokens=8192)
    deep = max_prefill_tokens_within(model, 0.05, base=BatchShape(), context_tokens=2000, cap_tokens=8192)
    assert fresh == 480 and deep == 80  # (0.05 - 0.002 - 2000 x 2e-5) / 1e-4
    assert max_prefill_tokens_within(model, 0.05, base=BatchShape(), context_tokens=2400, cap_tokens=8192) == 0


@pytest.mark.parametrize(
    ("shape", "region"),
    [
        (BatchShape(num_decodes=4, decode_kv_tokens=400), "decode-short"),
        (BatchShape(num_decodes=4, decode_kv_tokens=8000), "decode-long"),
        (BatchShape().plus_prefill(500, context_tokens=0), "prefill-short"),
        (BatchShape().plus_prefill(250, context_tokens=5000), "prefill-long"),
        (BatchShape(num_decodes=2, decode_kv_tokens=200).plus_prefill(250, context_tokens=5000), "mixed-long"),
        (BatchShape(num_decodes=2, decode_kv_tokens=200).plus_prefill(250, context_tokens=0), "mixed-short"),
    ],
)
def test_regions_tell_what_a_step_runs_and_how_deep(shape: BatchShape, region: str) -> None:
    assert region_of(shape, long_context_tokens=1024) == region


def test_quantile_model_scales_offsets_one_region_and_inverts_exactly() -> None:
    base = FittedLatencyModel(coefficients=TRUE)
    model = QuantileLatencyModel(
        base, scale=1.2, offsets_s={"mixed-long": 0.03}, default_offset_s=0.002, long_context_tokens=1024
    )
    deep = BatchShape(num_decodes=3, decode_kv_tokens=300).plus_prefill(200, context_tokens=4000)
    short = BatchShape(num_decodes=3, decode_kv_tokens=300).plus_prefill(200, context_tokens=0)
    assert model.predict_s(deep) == pytest.approx(1.2 * base.predict_s(deep) + 0.03)
    assert model.predict_s(short) == pytest.approx(1.2 * base.predict_s(short) + 0.002)
    head = BatchShape(num_decodes=3, decode_kv_tokens=300)
    for context in (0, 500, 4000):
        n = max_prefill_tokens_within(model, 0.08, base=head, context_tokens=context, cap_tokens=8192)
        assert model.predict_s(head.plus_prefill(n, context_tokens=context)) <= 0.08
        assert model.predict_s(head.plus_prefill(n + 1, context_tokens=context)) > 0.08
    assert BatchShape.from_list(deep.to_list()) == deep
