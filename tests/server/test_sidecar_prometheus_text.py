"""The one reader of Prometheus text: the engine's page, the benchmarks' and the tests' views."""

from __future__ import annotations

from accelgen.server.engine_state import metric_samples, parse_engine_metrics

PAGE = """# HELP vllm:num_requests_running Requests running.
# TYPE vllm:num_requests_running gauge
vllm:num_requests_running{model_name="a"} 3.0
vllm:num_requests_running{model_name="b",engine="0"} 2
vllm:num_requests_waiting{model_name="a"} 1.0 1700000000000
vllm:kv_cache_usage_perc{model_name="a"} 0.25
vllm:gpu_cache_usage_perc{model_name="b"} 0.5
vllm:kv_cache_usage_perc{model_name="c"} not-a-number
vllm:num_preemptions_total{model_name="a"} 4.0
vllm:num_preemptions_created{model_name="a"} 1.7e9
other_series 9
"""


def test_samples_of_the_named_series_only_with_their_labels() -> None:
    samples = metric_samples(PAGE, ("vllm:num_requests_running", "vllm:num_preemptions_total"))
    assert [(s.name, s.labels, s.value) for s in samples] == [
        ("vllm:num_requests_running", {"model_name": "a"}, 3.0),
        ("vllm:num_requests_running", {"model_name": "b", "engine": "0"}, 2.0),
        ("vllm:num_preemptions_total", {"model_name": "a"}, 4.0),
    ]
    assert metric_samples(PAGE, ("vllm:kv_cache_usage_perc",))[0].value == 0.25  # the bad line skipped
    assert metric_samples("", ("x",)) == [] and metric_samples("x{", ("x",)) == []


def test_engine_page_sums_requests_and_keeps_the_fullest_kv() -> None:
    running, waiting, kv, text = parse_engine_metrics(PAGE)
    assert (running, waiting, kv) == (5, 1, 0.5)
    assert "other_series" not in text and text.count("vllm:") == 10 and text.endswith("\n")
    assert parse_engine_metrics("other 1\n") == (0, 0, 0.0, "")
