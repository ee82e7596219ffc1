"""Pure: the gateway's child names stay DNS labels for every pool name a Service allows."""

from __future__ import annotations

import re
from typing import Any

from accelgen_operator.gateway import (
    DNS_LABEL_MAX,
    build_pods_service,
    gateway_children,
    picker_name,
    pods_service_name,
    stale_gateway_children,
)

DNS_LABEL = re.compile(r"^[a-z]([-a-z0-9]*[a-z0-9])?$")
SPEC = {"gateway": {"endpointPicker": {"type": "accelgen"}}}


def _children(name: str, spec: dict[str, Any]) -> list[dict[str, Any]]:
    return gateway_children(
        name,
        "ns",
        spec,
        selector={"accelgen.dev/pool": name},
        labels={},
        pod_port=8000,
        image="sidecar:1",
        managed_by="accelgen-operator",
        config_map=f"{name}-config",
        has_gateway_crd=True,
    )


def test_short_names_are_unchanged() -> None:
    assert (picker_name("llama"), pods_service_name("llama")) == ("llama-epp", "llama-pods")
    assert pods_service_name("a" * 58) == "a" * 58 + "-pods"  # exactly 63


def test_long_pool_names_give_dns_labels_that_differ() -> None:
    for length in (59, 60, 63):
        a, b = "a" * (length - 1) + "x", "a" * (length - 1) + "y"
        for make in (picker_name, pods_service_name):
            assert len(make(a)) <= DNS_LABEL_MAX and DNS_LABEL.match(make(a)), make(a)
            assert make(a) != make(b), "two long pools share a child's name"
    long = "p" + "-q" * 31  # 63 characters, a hyphen where it is cut
    for child in _children(long, SPEC):
        meta = child["metadata"]
        assert isinstance(meta, dict)
        if child["kind"] != "InferencePool":  # the gateway pool keeps the pool's own name
            assert len(meta["name"]) <= DNS_LABEL_MAX and DNS_LABEL.match(meta["name"]), meta["name"]
        assert all(len(v) <= DNS_LABEL_MAX for v in meta["labels"].values())


def test_the_picker_finds_the_pods_service_it_is_given() -> None:
    long = "m" * 63
    (picker, _, pods, _) = _children(long, SPEC)
    args = picker["spec"]["template"]["spec"]["containers"][0]["args"]
    dns = args[args.index("--pods-dns") + 1]
    assert dns.split(".")[0] == pods["metadata"]["name"] == pods_service_name(long)
    pods_svc = build_pods_service(long, "ns", selector={}, pod_port=8000, managed_by="x")
    assert pods_svc["metadata"]["name"] == pods_service_name(long)


def test_stale_children_are_what_the_spec_no_longer_asks_for() -> None:
    everything = [ref[2] for ref in stale_gateway_children("llama", [])]
    assert everything == ["llama-epp", "llama-epp", "llama-pods", "llama"]
    assert stale_gateway_children("llama", _children("llama", SPEC)) == []
    external = {"gateway": {"endpointPicker": {"type": "external", "service": "theirs"}}}
    stale = stale_gateway_children("llama", _children("llama", external))
    assert [(plural, name) for _, plural, name in stale] == [
        ("deployments", "llama-epp"),
        ("services", "llama-epp"),
        ("services", "llama-pods"),
    ]
