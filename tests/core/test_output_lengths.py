"""Output-length prediction: online quantiles per tier and prompt bucket, and AccelGen using them."""

from __future__ import annotations

import random

import numpy as np
import pytest

from accelgen.core.config import PolicyConfig, parse_policy_config
from accelgen.core.errors import ConfigError
from accelgen.core.output_lengths import OutputLengths, TierMean, prediction_error
from accelgen.core.policies.accelgen import AccelGenPolicy
from tests.support.factories import make_limits, make_planner, make_request, make_tiers, run_until_done


def test_converges_to_the_quantile_of_a_known_distribution() -> None:
    rng = np.random.default_rng(5)
    samples = rng.exponential(200.0, size=3000).astype(int) + 1
    for q in (0.5, 0.9):
        lengths = OutputLengths(quantile=q, window=2000)
        for s in samples:
            lengths.observe("chat", 100, int(s))
        # exponential(mean 200) + 1: the q quantile is 1 − 200·ln(1 − q)
        truth = 1 - 200.0 * np.log(1 - q)
        assert lengths.predict("chat", 100, max_tokens=4096) == pytest.approx(truth, rel=0.1)


def test_prompt_buckets_are_learned_apart() -> None:
    lengths = OutputLengths()
    for _ in range(50):
        lengths.observe("docs", 200, 20)  # short prompts, short answers
        lengths.observe("docs", 6000, 700)  # long documents, long summaries
    assert lengths.bucket(200) != lengths.bucket(6000)
    assert lengths.predict("docs", 150, max_tokens=2048) == 20
    assert lengths.predict("docs", 5000, max_tokens=2048) == 700
    # A bucket never seen: the tier's window (both kinds), its median one of the two.
    assert lengths.predict("docs", 20000, max_tokens=2048) in (20, 700)
    # Tiers are apart as well.
    assert lengths.predict("other", 200, max_tokens=2048) == 2048


def test_a_request_past_the_typical_length_is_predicted_longer() -> None:
    lengths = OutputLengths(window=1000)
    for n in range(1, 1001):
        lengths.observe("chat", 100, n)  # uniform 1..1000
    assert lengths.predict("chat", 100, max_tokens=4096) == 500
    later = lengths.predict("chat", 100, produced=800, max_tokens=4096)
    assert 880 <= later <= 920  # the median of 801..1000
    # Longer than anything seen: the mean (500) is behind it too, so max_tokens.
    assert lengths.predict("chat", 100, produced=1000, max_tokens=4096) == 4096


def test_falls_back_to_the_tier_then_the_mean_then_max_tokens() -> None:
    lengths = OutputLengths(min_samples=8)
    assert lengths.predict("chat", 100, max_tokens=300) == 300
    for n in (10, 20, 30):  # too few for any window
        lengths.observe("chat", 100, n)
    assert lengths.tier_mean("chat") == 20
    assert lengths.predict("chat", 100, max_tokens=300) == 20
    assert lengths.predict("chat", 100, produced=25, max_tokens=300) == 300  # the mean is behind it
    for _ in range(8):
        lengths.observe("chat", 3000, 400)  # the tier's window fills, bucket 100's does not
    assert lengths.predict("chat", 100, max_tokens=300) == 300  # the tier's median 400, capped
    assert lengths.predict("chat", 100, max_tokens=1000) == 400


def test_the_window_follows_a_shift() -> None:
    lengths = OutputLengths(window=64)
    for _ in range(100):
        lengths.observe("chat", 100, 10)
    for _ in range(64):
        lengths.observe("chat", 100, 500)
    assert lengths.predict("chat", 100, max_tokens=2048) == 500


def test_bad_settings_are_refused() -> None:
    with pytest.raises(ValueError, match="quantile"):
        OutputLengths(quantile=0.0)
    with pytest.raises(ValueError, match="positive"):
        OutputLengths(window=0)


def test_prediction_error_by_hand() -> None:
    err = prediction_error([("t", 1, 10), ("t", 1, 10)], TierMean(), max_tokens=100)
    # first predicted 100 (no history): off by 90, 9x; then the mean, 10: exact
    assert err.num_requests == 2
    assert err.mean_abs_error_tokens == 45
    assert err.mean_bias_tokens == 45
    assert err.p90_relative_error == 9
    assert prediction_error([], TierMean(), max_tokens=10).num_requests == 0


def test_learned_beats_the_mean_when_outputs_follow_prompts() -> None:
    rng = random.Random(1)
    rows = []
    for _ in range(2000):
        prompt = rng.choice((100, 3000))
        base = 30 if prompt == 100 else 600
        rows.append(("docs", prompt, max(1, int(rng.gauss(base, base / 5)))))
    mean = prediction_error(rows, TierMean(), max_tokens=2048)
    learned = prediction_error(rows, OutputLengths(), max_tokens=2048)
    assert learned.mean_abs_error_tokens < 0.5 * mean.mean_abs_error_tokens
    assert learned.p90_relative_error < mean.p90_relative_error


def _finish_some(policy: AccelGenPolicy, *, prompt: int, output: int, n: int, tier: str = "batch") -> None:
    tiers = make_tiers()
    reqs = [make_request(f"{prompt}-{i}", tier=tiers.get(tier), prompt=prompt, max_tokens=output) for i in range(n)]
    run_until_done(policy, reqs, output_tokens=output)


def test_accelgen_predicts_per_bucket_when_learned() -> None:
    learned = make_planner(config=PolicyConfig(output_lengths="learned"))
    mean = make_planner()
    assert isinstance(learned, AccelGenPolicy) and isinstance(mean, AccelGenPolicy)
    for policy in (learned, mean):
        _finish_some(policy, prompt=100, output=8, n=10)
        _finish_some(policy, prompt=3000, output=40, n=10)
        assert policy.free_blocks == policy.limits.num_kv_blocks
    tier = make_tiers().get("batch")
    short, long = (make_request("q", tier=tier, prompt=p, max_tokens=512) for p in (120, 2500))
    assert learned.expected_output_tokens(short) == 8
    assert learned.expected_output_tokens(long) == 40
    assert mean.expected_output_tokens(short) == mean.expected_output_tokens(long) == 24
    # The oracle's truth wins over either prediction.
    truth = make_request("t", tier=tier, prompt=120, max_tokens=512, expected_output=77)
    assert learned.expected_output_tokens(truth) == 77


def test_learned_lengths_under_kv_pressure_finish_everyone() -> None:
    """Reservation by learned lengths: a small cache, mixed lengths, every request finishes."""
    tiers = make_tiers()
    rng = random.Random(4)
    policy = make_planner(config=PolicyConfig(output_lengths="learned"), limits=make_limits(blocks=150))
    reqs = [
        make_request(
            f"r{i}", tier=tiers.get(rng.choice(["tight", "loose", "batch"])), prompt=rng.randint(10, 900), max_tokens=30
        )
        for i in range(60)
    ]
    for r in reqs:
        r.arrival_s = rng.uniform(0, 3)
    run_until_done(policy, reqs, output_tokens=30)
    assert all(r.finished for r in reqs)
    assert policy.free_blocks == 150


def test_the_config_names_the_choice() -> None:
    assert parse_policy_config({"output_lengths": "learned", "output_quantile": 0.7}) == PolicyConfig(
        output_lengths="learned", output_quantile=0.7
    )
    with pytest.raises(ConfigError, match="must be one of mean, learned") as err:
        parse_policy_config({"output_lengths": "median"})
    assert err.value.field == "output_lengths"
    with pytest.raises(ConfigError, match=r"in \(0, 1\]") as err:
        parse_policy_config({"output_quantile": 1.5})
    assert err.value.field == "output_quantile"
