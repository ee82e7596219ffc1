"""The capacity bound: optimistic (no schedule beats it), and tighter than full batches where TBT bites."""

from __future__ import annotations

import dataclasses
import math
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import yaml

from accelgen.core.errors import ConfigError
from accelgen.core.latency import BatchShape, FittedLatencyModel
from accelgen.core.tiers import parse_tiers
from accelgen.sim.bound import capacity_bound, decompose, token_lines
from accelgen.sim.profiles import ScaledLatencyModel, named_model
from accelgen.sim.runner import build_requests, resolve_engine, run_policy
from accelgen.sim.workload import SimRequest, Workload, parse_workload
from tests.support.factories import SMALL_WORKLOAD, make_limits

#: The small workload with TBT targets under two decode steps long.
TIGHT_TBT = SMALL_WORKLOAD.replace("tbt_ms: 100", "tbt_ms: 15").replace("tbt_ms: 250", "tbt_ms: 20")


def _workload(text: str, **changes: Any) -> Workload:
    return dataclasses.replace(parse_workload(yaml.safe_load(text)), **changes)


def _meets_targets(result: dict[str, Any], workload: Workload) -> bool:
    tiers = result["tiers"]
    return all(
        tiers[t.name]["attainment"] >= t.attainment_target for t in workload.tiers if tiers[t.name]["requests"] > 0
    )


@pytest.mark.parametrize(
    ("text", "duration_s", "meets_at_half"),
    [(SMALL_WORKLOAD, 40.0, True), (TIGHT_TBT, 20.0, False)],
    ids=["small", "tight-tbt"],
)
def test_no_policy_meets_the_targets_above_the_bound(
    data_dir: Path, text: str, duration_s: float, meets_at_half: bool
) -> None:
    """Every policy misses a tier's target at 1.1x the bound (and on the small workload AccelGen
    meets them all at half of it: the bound is not so high that nothing could pass)."""
    workload = _workload(text, duration_s=duration_s)
    model, limits = resolve_engine(workload, data_dir)
    bound = capacity_bound(workload, model, limits, requests=build_requests(workload, data_dir, limits))
    assert 0 < bound.rate_rps < math.inf
    runs = [(1.1, workload.policies, False)] + ([(0.5, ("accelgen",), True)] if meets_at_half else [])
    for factor, policies, meets in runs:
        at = workload.with_rate(factor * bound.rate_rps)
        requests = build_requests(at, data_dir, limits)
        for name in policies:
            result = run_policy(at, name, requests, model=model, limits=limits)
            assert _meets_targets(result, at) == meets, (name, factor, result["tiers"])


def test_tighter_than_full_batches_where_tbt_is_tight(data_dir: Path) -> None:
    loose_tbt = _workload(SMALL_WORKLOAD)
    tight_tbt = _workload(TIGHT_TBT)
    model, limits = resolve_engine(tight_tbt, data_dir)
    requests = build_requests(tight_tbt, data_dir, limits)
    tight = capacity_bound(tight_tbt, model, limits, requests=requests)
    loose = capacity_bound(loose_tbt, model, limits, requests=requests)
    assert tight.binding.startswith("tbt"), tight.binding  # the TBT caps the iterations
    assert tight.rate_rps < 0.95 * tight.loose_rate_rps
    assert tight.rate_rps < 0.95 * loose.rate_rps  # the same requests, looser TBT: a higher bound
    # The full-batch bound does not see TBT at all.
    assert tight.loose_rate_rps == pytest.approx(loose.loose_rate_rps)


def test_a_target_below_one_lets_the_costliest_go() -> None:
    model = FittedLatencyModel(coefficients=(0.01, 0.0001, 0.0, 0.0, 0.0))
    limits = make_limits(max_batched=4096)
    workload = _offline_workload()
    cheap = [SimRequest(f"c{i}", 0.0, 100, 1, "batch") for i in range(50)]
    costly = [SimRequest(f"x{i}", 0.0, 4000, 1, "batch") for i in range(50)]
    all_of_them = capacity_bound(workload, model, limits, requests=cheap + costly, attainment=1.0)
    half = capacity_bound(workload, model, limits, requests=cheap + costly, attainment=0.5)
    only_cheap = capacity_bound(workload, model, limits, requests=cheap, attainment=1.0)
    assert half.rate_rps == pytest.approx(2 * only_cheap.rate_rps)  # half the arrivals, each as cheap
    assert half.rate_rps > 10 * all_of_them.rate_rps


def test_never_below_a_schedule_that_exists_and_close_to_it() -> None:
    """Prefill-only requests on a linear engine: 40 prompts of 100 tokens per 4,096-token iteration
    is a schedule (0.41 s per 40 requests); the bound may not be below its rate."""
    model = FittedLatencyModel(coefficients=(0.01, 0.0001, 0.0, 0.0, 0.0))
    limits = make_limits(max_batched=4096)
    requests = [SimRequest(f"r{i}", 0.0, 100, 1, "batch") for i in range(100)]
    bound = capacity_bound(_offline_workload(), model, limits, requests=requests, attainment=1.0)
    schedule_rps = 40 / (0.01 + 0.0001 * 4000)
    assert schedule_rps <= bound.rate_rps <= 1.01 * schedule_rps


def test_unservable_requests_are_no_capacity_at_all() -> None:
    model = FittedLatencyModel(coefficients=(0.01, 0.0001, 0.0, 0.0, 0.0))
    tiers = parse_tiers({"default_tier": "chat", "tiers": [{"name": "chat", "ttft_ms": 1000, "tbt_ms": 5}]})
    workload = dataclasses.replace(_offline_workload(), tiers=tiers)
    requests = [SimRequest(f"r{i}", 0.0, 100, 50, "chat") for i in range(10)]  # a lone decode takes 10 ms
    bound = capacity_bound(workload, model, make_limits(), requests=requests)
    assert bound.rate_rps == 0.0 and bound.unservable == {"chat": 1.0}


def test_token_lines_lie_under_the_token_cost() -> None:
    costs = decompose(named_model("h100-llama-2-7b").model)
    lines = token_lines(costs, 8192)
    ns = np.arange(1, 8193)
    g = np.array([costs.token_s(int(n)) for n in ns])
    assert len(lines) > 2
    for alpha, beta in lines:
        assert alpha >= 0
        assert np.all(alpha + beta * ns <= g + 1e-12)
    # Some line touches g at a small and at a full batch (the hull, not just any line below).
    assert any(abs(a + b - g[0]) < 1e-12 for a, b in lines)
    assert any(abs(a + b * 8192 - g[-1]) < 1e-9 for a, b in lines)


def test_decompose_is_exact_for_the_models_it_knows() -> None:
    fitted = FittedLatencyModel(coefficients=(0.01, 0.0001, 0.002, 1e-8, 3e-7))
    scaled = ScaledLatencyModel(fitted, 2.0)
    shape = BatchShape(num_prefill_tokens=300, num_decodes=4, prefill_attention_pairs=45000.0, decode_kv_tokens=8000)
    for model in (fitted, scaled):
        c = decompose(model)
        split = c.token_s(304) + c.pair_s * 45000.0 + c.kv_token_s * 8000 + c.decode_s * 4
        assert split == pytest.approx(model.predict_s(shape))


def test_an_unknown_latency_model_is_refused() -> None:
    class Constant:
        name = "constant"

        def predict_s(self, shape: BatchShape) -> float:
            return 0.01

    with pytest.raises(ConfigError, match="no capacity bound for a Constant") as err:
        decompose(Constant())
    assert err.value.field == "engine.latency_model"


def _offline_workload() -> Workload:
    text = SMALL_WORKLOAD.replace("latency_noise: 0.05", "latency_noise: 0.0")
    tiers = parse_tiers({"default_tier": "batch", "tiers": [{"name": "batch", "deadline_s": 1e6}]})
    return dataclasses.replace(parse_workload(yaml.safe_load(text)), tiers=tiers)
