"""The chart's ClusterRole is exactly what the operator uses: extracted from its code, and observed.

Two sources, both compared with the rendered rules as (apiGroup, resource, verb) triples:

* static: the operator's own API calls, read from its source (``kube.get/list/create/patch``
  with literal resources, and ``apply.ensure``'s verbs on every kind ``build_children``
  makes with all options on), plus kopf's needs as kopf documents them (its watches,
  finalizer and status patches, Events, discovery, peering). Chart rules == this set.
* observed: the real kopf operator run against the emulated API with a pool that uses
  every feature (tenant-keys Secret, ServiceMonitor and gateway CRDs present,
  autoscaling); every request it sent must be allowed by the chart's rules.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

import aiohttp

from accelgen_operator import API_VERSION, KIND
from accelgen_operator.emulator import OPTIONAL_RESOURCES, emulated_api
from accelgen_operator.handlers import OperatorConfig
from accelgen_operator.runner import running_operator
from tests.support.deploy import objects, one, render
from tests.support.operator_rbac import (
    KOPF_PEERING,
    Triple,
    code_triples,
    documented_triples,
    ensure_verbs,
    full_spec,
    literal_calls,
    rule_triples,
)


def chart_triples(values: dict[str, Any] | None = None) -> set[Triple]:
    return rule_triples(one(objects(render(values)), "ClusterRole")["rules"])


def test_extraction_finds_the_operators_calls() -> None:
    """The extraction is not vacuous: it sees the calls the operator is known to make."""
    literal = literal_calls()
    assert {("", "secrets", "get"), ("apps", "deployments", "get"), ("", "pods", "list")} <= literal
    assert ensure_verbs() == {"get", "create", "patch"}
    assert ("monitoring.coreos.com", "servicemonitors", "create") in code_triples()
    assert ("inference.networking.k8s.io", "inferencepools", "patch") in code_triples()


def test_chart_rules_equal_what_the_code_uses() -> None:
    chart = chart_triples()
    code = code_triples()
    assert chart - code == set(), "the chart grants more than the operator uses"
    assert code - chart == set(), "the operator needs more than the chart grants"
    # No wildcards, nothing destructive but deleting the kinds of the gateway's children
    # (the picker switched off: handlers._prune_gateway deletes only what the pool owns).
    assert not any("*" in t for t in chart)
    assert not {verb for _, _, verb in chart} & {"deletecollection", "update", "escalate", "bind"}
    deletable = {(g, r) for g, r, verb in chart if verb == "delete"}
    assert deletable == {("", "services"), ("apps", "deployments"), ("inference.networking.k8s.io", "inferencepools")}


def test_without_peering_the_peering_rules_go() -> None:
    off = {"operator": {"peering": {"enabled": False, "name": "default", "create": False, "priority": 0}}}
    assert chart_triples(off) == code_triples() - KOPF_PEERING


def _to_triple(method: str, path: str) -> Triple | None:
    """An API request as RBAC sees it; None for discovery (allowed to every user)."""
    parts = path.strip("/").split("/")
    if parts[0] == "api":
        group, rest = "", parts[2:]
    elif parts[0] == "apis" and len(parts) > 3:
        group, rest = parts[1], parts[3:]
    else:
        return None
    if not rest:
        return None
    if rest[0] == "namespaces" and len(rest) >= 3:
        rest = rest[2:]
    resource, name, sub = rest[0], rest[1] if len(rest) > 1 else None, rest[2] if len(rest) > 2 else None
    if sub:
        resource = f"{resource}/{sub}"
    verb = {"POST": "create", "PATCH": "patch", "PUT": "update", "DELETE": "delete"}.get(method)
    if verb is None:  # GET: one object, or a collection (list, or watch: the query is not logged)
        verb = "get" if name else "list"
    return group, resource, verb


async def _run_operator() -> list[tuple[str, str]]:
    """Run the operator on a full-featured pool; every request it sent (not ours)."""
    optional = list(OPTIONAL_RESOURCES)
    async with emulated_api(optional=optional) as (emu, url):
        cfg = OperatorConfig(api_url=url, stats_interval_s=0.3, stats_timeout_s=0.5, retry_base_s=0.2, retry_max_s=1.0)
        async with running_operator(cfg), aiohttp.ClientSession() as http:
            ours: list[tuple[str, str]] = []
            secret = {
                "apiVersion": "v1",
                "kind": "Secret",
                "metadata": {"name": "keys", "namespace": "serving"},
                "data": {"keys.yaml": "dGVuYW50czogW10K"},
            }
            pool = {"apiVersion": API_VERSION, "kind": KIND, "metadata": {"name": "p", "namespace": "serving"}}
            pool["spec"] = full_spec()
            for path, body in (
                ("/api/v1/namespaces/serving/secrets", secret),
                ("/apis/accelgen.dev/v1alpha1/namespaces/serving/inferencepools", pool),
            ):
                (await http.post(url + path, json=body)).raise_for_status()
                ours.append(("POST", path))
            deadline = time.monotonic() + 30
            wanted = {"servicemonitors", "inferencepools/status", "pods"}
            while time.monotonic() < deadline:
                seen = {(t or ("", "", ""))[1] for t in (_to_triple(m, p) for m, p in emu.log)}
                if wanted <= seen and any(p.endswith("/inference.networking.k8s.io/v1") for _, p in emu.log):
                    break
                await asyncio.sleep(0.1)
            # A spec change: every child is patched (the merge-patch path of apply.ensure).
            pool_path = "/apis/accelgen.dev/v1alpha1/namespaces/serving/inferencepools/p"
            patch = {"spec": {"model": "m2"}}
            headers = {"Content-Type": "application/merge-patch+json"}
            (await http.patch(url + pool_path, json=patch, headers=headers)).raise_for_status()
            ours.append(("PATCH", pool_path))
            deadline = time.monotonic() + 30
            while time.monotonic() < deadline and not any(m == "PATCH" and "/deployments/" in p for m, p in emu.log):
                await asyncio.sleep(0.1)
            await asyncio.sleep(1.0)  # a few stats intervals: the timer's reads and status writes
            log = list(emu.log)
    for request in ours:
        log.remove(request)
    return log


def test_every_request_the_operator_sends_is_allowed() -> None:
    log = asyncio.run(_run_operator())
    observed = {t for t in (_to_triple(m, p) for m, p in log) if t is not None}
    allowed = chart_triples()
    assert observed - allowed == set()
    # The run exercised the operator's own calls (not only kopf's).
    assert {
        ("", "secrets", "get"),
        ("", "pods", "list"),
        ("apps", "deployments", "create"),
        ("apps", "deployments", "patch"),
        ("monitoring.coreos.com", "servicemonitors", "create"),
        ("inference.networking.k8s.io", "inferencepools", "create"),
        ("accelgen.dev", "inferencepools/status", "patch"),
        ("", "events", "create"),
    } <= observed


def test_mapping_of_requests_to_rbac() -> None:
    assert _to_triple("GET", "/apis/apps/v1/namespaces/x/deployments/d") == ("apps", "deployments", "get")
    assert _to_triple("GET", "/api/v1/namespaces/x/pods") == ("", "pods", "list")
    assert _to_triple("PATCH", "/apis/accelgen.dev/v1alpha1/namespaces/x/inferencepools/p/status") == (
        "accelgen.dev",
        "inferencepools/status",
        "patch",
    )
    assert _to_triple("GET", "/api/v1/namespaces") == ("", "namespaces", "list")
    assert _to_triple("GET", "/apis/monitoring.coreos.com/v1") is None


def test_docs_permissions_grant_all_the_chart_does() -> None:
    """A user reading docs/operator.md is told of every rule the chart installs."""
    assert chart_triples() - documented_triples() == set()
