"""Pod addresses, the /pool/state document and the vLLM metrics fallback (pure: no network)."""

from __future__ import annotations

import asyncio
import dataclasses
import json

import pytest

from accelgen.core.routing import PodState, RouteRequest
from accelgen.core.tier_headers import TierHeaderError
from accelgen.gateway.intake import is_sheddable, route_request
from accelgen.gateway.pods import (
    PodSource,
    PodWatcher,
    format_address,
    parse_address,
    parse_pod_list,
    pod_from_metrics,
    pod_from_state,
)
from tests.support.sidecar import TIERS


@pytest.mark.parametrize(
    ("text", "expected"),
    [("10.0.0.5:8000", ("10.0.0.5", 8000)), ("[2600:4040::1]:80", ("2600:4040::1", 80)), (" pod:1 ", ("pod", 1))],
)
def test_addresses(text: str, expected: tuple[str, int]) -> None:
    assert parse_address(text) == expected
    assert parse_address(format_address(*expected)) == expected


@pytest.mark.parametrize("text", ["", "host", "host:", ":80", "host:0", "host:65536", "host:http", "::1:80", "[zz]:80"])
def test_bad_addresses(text: str) -> None:
    with pytest.raises(ValueError):
        parse_address(text)


def test_pod_list_normalizes_and_dedups() -> None:
    assert parse_pod_list("a:1, b:2,a:1,") == ("a:1", "b:2")
    with pytest.raises(ValueError, match="no pod address"):
        parse_pod_list(" , ")


def test_state_document_reads_every_reported_field_and_ignores_unknown_ones() -> None:
    doc = {
        "ready": True,
        "waiting": 3,
        "running": 5,
        "kv_usage": 0.4,
        "headroom": {"interactive": 1200.0, "batch": -5},
        "queued_prefill_tokens": 4096,
        "queued_tokens_by_tier": {"batch": 4096},
        "min_slack_s": 0.02,
        "tightest_tbt_s": 0.1,
        "decode_step_s": 0.03,
        "prefill_s_per_token": 1e-4,
        "long_prompts": 1,
        "max_num_seqs": 64,
        "kv_free_tokens": None,
        "from_the_future": [1, 2],
    }
    pod = pod_from_state("p", "10.0.0.1:8000", doc)
    assert (pod.ready, pod.waiting, pod.running, pod.kv_usage) == (True, 3, 5, 0.4)
    assert pod.headroom == {"interactive": 1200.0, "batch": -5.0}
    assert (pod.queued_prefill_tokens, pod.long_prompts, pod.max_num_seqs, pod.kv_free_tokens) == (4096, 1, 64, None)
    assert (pod.decode_step_s, pod.prefill_s_per_token) == (0.03, 1e-4)
    assert pod_from_state("p", "a:1", {}).ready  # nothing reported: PodState's defaults


@pytest.mark.parametrize(
    "doc",
    [
        [],
        {"ready": "yes"},
        {"waiting": -1},
        {"running": 1.5},
        {"kv_usage": "x"},
        {"headroom": []},
        {"headroom": {"a": None}},
    ],
)
def test_state_document_with_a_bad_field_is_refused(doc: object) -> None:
    with pytest.raises(ValueError):
        pod_from_state("p", "a:1", doc)


def test_metrics_fallback_sums_series_and_keeps_the_highest_kv_use() -> None:
    text = (
        "# TYPE vllm:num_requests_waiting gauge\n"
        'vllm:num_requests_waiting{model_name="a"} 2.0\n'
        'vllm:num_requests_waiting{model_name="b"} 1.0\n'
        'vllm:num_requests_running{model_name="a"} 7.0\n'
        'vllm:kv_cache_usage_perc{model_name="a"} 0.25\n'
        'vllm:gpu_cache_usage_perc{model_name="b"} 0.5\n'
        "accelgen_other 9\n"
    )
    pod = pod_from_metrics("p", "a:1", text)
    assert (pod.waiting, pod.running, pod.kv_usage, pod.ready) == (3, 7, 0.5, True)
    assert pod.headroom == {}  # a plain vLLM reports no headroom


def test_placements_count_on_the_pod_until_the_next_refresh() -> None:
    watcher = PodWatcher(PodSource(addresses=("a:1",)))
    watcher._pods = (pod_from_state("a:1", "a:1", {"waiting": 1, "headroom": {"standard": 1000.0}}),)
    watcher.placed("a:1", RouteRequest("standard", 300))
    (pod,) = watcher.pods
    assert (pod.waiting, pod.headroom["standard"]) == (2, 700.0)


def test_route_request_reads_the_sidecar_headers_and_the_body() -> None:
    body = b'{"prompt": "' + b"abcd" * 100 + b'", "max_tokens": 7, "n": 2}'
    request = route_request({"x-llm-d-inference-objective": "interactive"}, body, TIERS, now=5.0)
    assert (request.tier, request.prompt_tokens, request.expected_output_tokens) == ("interactive", 100, 14)
    assert (request.ttft_slo_s, request.tbt_slo_s, request.arrival_s, request.sheddable) == (0.5, 0.1, 5.0, False)
    # Explicit targets: the loosest tier that honours them, with the targets themselves.
    request = route_request({"x-llm-d-slo-ttft-ms": "3000", "x-llm-d-slo-tpot-ms": "300"}, None, TIERS, now=0.0)
    assert (request.tier, request.ttft_slo_s, request.tbt_slo_s) == ("standard", 3.0, 0.3)
    # No body at hand: the size from content-length; no tier header: the default tier.
    request = route_request({"content-length": "4000"}, None, TIERS, now=0.0)
    assert (request.tier, request.prompt_tokens, request.sheddable) == ("standard", 1000, True)


def test_only_the_highest_priority_tier_is_not_sheddable() -> None:
    assert [is_sheddable(t, TIERS) for t in TIERS] == [False, True, True]


def test_dns_source_resolves_every_address_of_the_name() -> None:
    # A headless Service answers one address per pod; localhost stands in for it here.
    addresses = asyncio.run(PodSource.dns("localhost:8000").resolve())
    assert "127.0.0.1:8000" in addresses and all(a.endswith(":8000") for a in addresses)
    assert asyncio.run(PodSource.dns("no-such-pool.invalid:8000").resolve()) == ()


def test_a_tier_only_the_pods_know_is_placed_by_name_and_never_shed() -> None:
    request = route_request({"x-accelgen-tier": "gold"}, None, TIERS, now=0.0, pod_tiers={"gold"})
    assert (request.tier, request.ttft_slo_s, request.sheddable) == ("gold", None, False)
    with pytest.raises(TierHeaderError, match="unknown tier"):
        route_request({"x-llm-d-inference-objective": "gold"}, None, TIERS, now=0.0, pod_tiers={"silver"})
    with pytest.raises(TierHeaderError, match="plain decimal"):
        route_request({"x-llm-d-slo-ttft-ms": "soon"}, None, TIERS, now=0.0, pod_tiers={"gold"})


def test_every_field_of_pod_state_is_read_back() -> None:
    # A field added to PodState is read too (a type this reader cannot read fails here).
    pod = PodState(
        name="p", address="a:1", ready=False, waiting=1, running=2, kv_usage=0.5, headroom={"t": -3.5},
        queued_prefill_tokens=4, queued_tokens_by_tier={"t": 4}, min_slack_s=-0.01, tightest_tbt_s=0.1,
        decode_step_s=0.02, prefill_s_per_token=1e-4, running_by_tier={"t": 2}, long_prompts=1, max_num_seqs=8,
        kv_free_tokens=100,
    )  # fmt: skip
    doc = {k: v for k, v in dataclasses.asdict(pod).items() if k not in ("name", "address")}
    assert pod_from_state("p", "a:1", json.loads(json.dumps(doc))) == pod
    defaults = PodState(name="p", address="a:1")
    assert {f.name for f in dataclasses.fields(PodState)} - {"name", "address"} == set(doc)
    assert all(getattr(pod, k) != getattr(defaults, k) for k in doc)  # every field set off its default
