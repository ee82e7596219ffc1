"""Property tests of the planner's invariants over random workloads (hypothesis)."""

from __future__ import annotations

import math

from hypothesis import given
from hypothesis import strategies as st

from accelgen.core.latency import REGIONS, BatchShape
from accelgen.core.policies import policy_names
from accelgen.core.policies.accelgen import AccelGenPolicy
from accelgen.core.policy import Policy
from accelgen.core.request import Request
from tests.support.factories import PlanCheck, make_limits, make_planner, make_request, make_tiers, run_until_done

TIERS = make_tiers()

request_specs = st.lists(
    st.tuples(
        st.sampled_from(["tight", "loose", "batch"]),
        st.integers(min_value=1, max_value=3000),  # prompt tokens
        st.floats(min_value=0.0, max_value=3.0, allow_nan=False),  # arrival
        st.integers(min_value=1, max_value=30),  # true output tokens
    ),
    min_size=1,
    max_size=30,
)


def build(specs: list[tuple[str, int, float, int]]) -> tuple[list[Request], dict[str, int]]:
    reqs = [
        make_request(f"r{i}", tier=TIERS.get(t), prompt=p, arrival_s=a, max_tokens=64)
        for i, (t, p, a, _) in enumerate(specs)
    ]
    return reqs, {f"r{i}": o for i, (_, _, _, o) in enumerate(specs)}


def run(policy: Policy, reqs: list[Request], outs: dict[str, int], check: PlanCheck) -> None:
    """The real loop with ``check`` after every plan; it fails if a request starves (never finishes)."""
    run_until_done(policy, reqs, output_tokens=outs, check=check, max_iterations=50_000)


@given(specs=request_specs, name=st.sampled_from(policy_names()), blocks=st.integers(200, 2000))
def test_never_over_budget_or_kv_and_everyone_finishes(specs, name, blocks) -> None:  # type: ignore[no-untyped-def]
    reqs, outs = build(specs)
    policy = make_planner(name, limits=make_limits(blocks=blocks, max_batched=2048))

    def check(policy, plan, now, before):  # type: ignore[no-untyped-def]
        assert 0 <= policy.free_blocks <= policy.limits.num_kv_blocks
        assert sum(r.num_blocks for r in policy.running) + policy.free_blocks == policy.limits.num_kv_blocks
        if name.startswith("accelgen") or name == "oracle":
            assert plan.num_tokens <= plan.budget_tokens <= policy.limits.max_num_batched_tokens
        else:  # fixed budgets; orca may run one oversized prompt alone
            assert plan.num_tokens <= policy.limits.max_num_batched_tokens or len(plan.chunks) == 1

    run(policy, reqs, outs, check)


@given(specs=request_specs)
def test_no_iteration_outlasts_a_running_deadline_when_a_shorter_plan_exists(specs) -> None:  # type: ignore[no-untyped-def]
    """The dynamic-chunking invariant, against the deadlines as they were at plan time.

    Deadlines closer than the cheapest possible iteration are lost and exempt; a plan
    that is a single decode is the shortest plan and always allowed.
    """
    reqs, outs = build(specs)
    policy = make_planner("accelgen", limits=make_limits(blocks=4000, max_batched=4096))
    assert isinstance(policy, AccelGenPolicy)
    margin = policy.config.safety_margin_s
    floor = policy.model.predict_s(BatchShape(num_decodes=1))

    def check(policy, plan, now, before):  # type: ignore[no-untyped-def]
        deadlines = [
            last + r.tier.tbt_slo_s - now
            for r, last in before.items()
            if last is not None and r.tier.tbt_slo_s is not None
        ]
        live = [d for d in deadlines if d > floor + margin]
        if not live or plan.is_empty or len(plan.chunks) == 1:
            return
        assert plan.predicted_s <= min(live) - margin + 1e-9, (plan.predicted_s, min(live))

    run(policy, reqs, outs, check)


@given(
    intercept=st.floats(0.001, 0.05),
    per_token=st.floats(1e-6, 1e-3),
    limit=st.floats(0.0, 1.0),
    decodes=st.integers(0, 200),
)
def test_inverted_budget_is_the_largest_that_fits(intercept, per_token, limit, decodes) -> None:  # type: ignore[no-untyped-def]
    from accelgen.core.latency import FittedLatencyModel, max_prefill_tokens_within

    model = FittedLatencyModel(coefficients=(intercept, per_token, 0.0, 0.0, 0.0))
    base = BatchShape(num_decodes=decodes)
    n = max_prefill_tokens_within(model, limit, base=base, context_tokens=0, cap_tokens=8192)
    if n > 0:
        assert model.predict_s(base.plus_prefill(n, context_tokens=0)) <= limit
    if n < 8192 and model.predict_s(base) <= limit:
        assert model.predict_s(base.plus_prefill(n + 1, context_tokens=0)) > limit
    assert math.isfinite(n)


@given(
    coefficients=st.tuples(
        st.floats(0.0, 0.05),
        st.floats(0.0, 1e-3),
        st.floats(0.0, 1e-3),
        st.floats(0.0, 1e-7),
        st.floats(0.0, 1e-6),
        st.floats(0.0, 1e-7),
        st.floats(0.0, 1e-5),
        st.floats(0.0, 1e-2),
    ),
    offsets=st.dictionaries(st.sampled_from(REGIONS), st.floats(0.0, 0.2), max_size=6),
    scale=st.floats(1.0, 3.0),
    limit=st.floats(0.0, 2.0),
    base_prefill=st.integers(0, 4096),
    base_context=st.integers(0, 8192),
    decodes=st.integers(0, 256),
    context=st.integers(0, 16384),
    cap=st.integers(0, 8192),
)
def test_closed_form_inversion_equals_bisection(  # type: ignore[no-untyped-def]
    coefficients, offsets, scale, limit, base_prefill, base_context, decodes, context, cap
) -> None:
    """The fitted (and quantile) model's solved budget is what bisection on its predictions finds."""
    from accelgen.core.latency import FittedLatencyModel, QuantileLatencyModel, max_prefill_tokens_within

    plain = FittedLatencyModel(coefficients=coefficients)
    fitted = QuantileLatencyModel(plain, scale=scale, offsets_s=offsets, default_offset_s=0.001) if offsets else plain

    class Opaque:  # the same predictions behind the bare protocol: inverted by bisection
        name = "opaque"

        def predict_s(self, shape: BatchShape) -> float:
            return fitted.predict_s(shape)

    base = BatchShape(num_decodes=decodes, decode_kv_tokens=decodes * 100).plus_prefill(
        base_prefill, context_tokens=base_context
    )
    solved = max_prefill_tokens_within(fitted, limit, base=base, context_tokens=context, cap_tokens=cap)
    searched = max_prefill_tokens_within(Opaque(), limit, base=base, context_tokens=context, cap_tokens=cap)
    assert solved == searched
