"""End to end: ``spec.gateway`` and an optional ``spec.sidecar``, the real kopf runtime
against kmock's in-memory Kubernetes API (the emulator garbage-collects by owner reference).

A pool asking for AccelGen's endpoint picker gets the picker's Deployment, its Service,
a headless Service over the pool's pods and the gateway API's InferencePool pointing at
the picker; an external picker gets the InferencePool only; a cluster without the
gateway CRD gets everything else and a Degraded condition saying why.
"""

from __future__ import annotations

import copy
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import pytest
import pytest_asyncio

from accelgen_operator import KIND
from accelgen_operator.emulator import OPTIONAL_RESOURCES, emulated_api
from accelgen_operator.handlers import OperatorConfig
from accelgen_operator.runner import running_operator
from tests.support.crd_schema import validate_pool
from tests.support.operator_cluster import FAST, NS, Cluster, condition, make_pool

pytestmark = pytest.mark.asyncio

GATEWAY_POOLS = "inference.networking.k8s.io/v1/inferencepools"
DEFAULT_SIDECAR = "registry.example/accelgen-sidecar:9.9"
PICKER = {"type": "accelgen", "refreshSeconds": 0.5}
PICKER_CHILDREN = (
    ("apps/v1/deployments", "llama-epp"),
    ("v1/services", "llama-epp"),
    ("v1/services", "llama-pods"),
    (GATEWAY_POOLS, "llama"),
)


def _config(url: str) -> OperatorConfig:
    return OperatorConfig(
        api_url=url,
        stats_interval_s=FAST.stats_interval_s,
        stats_timeout_s=FAST.stats_timeout_s,
        retry_base_s=FAST.retry_base_s,
        retry_max_s=FAST.retry_max_s,
        default_engine_image="registry.example/accelgen-engine:9.9",
        default_sidecar_image=DEFAULT_SIDECAR,
    )


async def _running(optional: list[str]) -> AsyncIterator[Cluster]:
    async with (
        emulated_api(optional=optional) as (emu, url),
        running_operator(_config(url)),
        aiohttp.ClientSession() as http,
    ):
        yield Cluster(emu=emu, url=url, http=http)


@pytest_asyncio.fixture
async def cluster() -> AsyncIterator[Cluster]:
    """The operator (with default images) on an API serving the gateway CRD."""
    async for c in _running(list(OPTIONAL_RESOURCES)):
        yield c


@pytest_asyncio.fixture
async def bare_cluster() -> AsyncIterator[Cluster]:
    """The same on an API that serves no gateway InferencePool CRD."""
    async for c in _running(["monitoring.coreos.com/v1/servicemonitors"]):
        yield c


def minimal_pool(**overrides: Any) -> dict[str, Any]:
    """Model, engine, tiers: no ``sidecar`` section, no images."""
    pool = make_pool(**overrides)
    del pool["spec"]["sidecar"]
    del pool["spec"]["engine"]["image"]
    return pool


def _pod_spec(deployment: dict[str, Any]) -> dict[str, Any]:
    return dict(deployment["spec"]["template"]["spec"])


def _container(deployment: dict[str, Any], name: str) -> dict[str, Any]:
    return next(c for c in _pod_spec(deployment)["containers"] if c["name"] == name)


def _selects(selector: dict[str, str], labels: dict[str, str]) -> bool:
    return all(labels.get(k) == v for k, v in selector.items())


def _owned_by(obj: dict[str, Any], pool: dict[str, Any]) -> bool:
    refs = obj["metadata"].get("ownerReferences") or []
    return any(r.get("uid") == pool["metadata"]["uid"] and r.get("kind") == KIND for r in refs)


async def _all_made(cluster: Cluster, children: tuple[tuple[str, str], ...]) -> list[dict[str, Any]]:
    def check() -> list[dict[str, Any]] | None:
        found = [cluster.obj(resource, name) for resource, name in children]
        made = [o for o in found if o is not None]
        return made if len(made) == len(found) else None

    made: list[dict[str, Any]] = await cluster.wait_for(check, what="the gateway's children")
    return made


async def test_a_minimal_pool_is_accepted_and_gets_every_default(cluster: Cluster) -> None:
    pool = minimal_pool()
    assert validate_pool(copy.deepcopy(pool)) == []  # the CRD no longer requires spec.sidecar
    await cluster.create_pool(pool)
    deployment = await cluster.wait_for(lambda: cluster.obj("apps/v1/deployments", "llama"), what="the Deployment")
    sidecar = _container(deployment, "sidecar")
    assert sidecar["image"] == DEFAULT_SIDECAR
    assert sidecar["resources"] == {"requests": {"cpu": "500m", "memory": "512Mi"}, "limits": {"memory": "1Gi"}}
    assert "imagePullPolicy" not in sidecar
    assert sidecar["args"][:3] == ["serve", "--engine-url", "http://127.0.0.1:8001"]
    assert _container(deployment, "engine")["image"] == "registry.example/accelgen-engine:9.9"
    reconciled = await cluster.wait_for(
        lambda: (condition(cluster.pool(), "Degraded") or {}).get("reason") == "Reconciled", what="reconciled"
    )
    assert reconciled


async def test_the_accelgen_picker_its_services_and_the_gateway_pool(cluster: Cluster) -> None:
    await cluster.create_pool(minimal_pool(gateway={"endpointPicker": PICKER}))
    picker, picker_svc, pods_svc, gateway_pool = await _all_made(cluster, PICKER_CHILDREN)
    pool = cluster.pool()
    assert pool is not None
    for obj in (picker, picker_svc, pods_svc, gateway_pool):
        assert _owned_by(obj, pool), f"{obj['kind']} {obj['metadata']['name']} has no owner reference to the pool"

    container = _container(picker, "picker")
    assert container["image"] == DEFAULT_SIDECAR  # the sidecar image holds the accelgen package
    assert container["command"] == ["accelgen"]
    assert container["args"] == [
        "picker",
        "--listen", "0.0.0.0:9002",
        "--health-port", "9003",
        "--routing", "accelgen",
        "--pods-dns", f"llama-pods.{NS}.svc:8000",
        "--refresh-s", "0.5",
    ]  # fmt: skip
    assert container["readinessProbe"]["grpc"] == {"port": 9003}
    # The picker places by the pool's tiers: the pool's ConfigMap, mounted where ACCELGEN_TIERS says.
    env = {e["name"]: e["value"] for e in container["env"]}
    (config,) = [v for v in _pod_spec(picker)["volumes"] if v["name"] == "config"]
    assert config["configMap"]["name"] == "llama-config" and env["ACCELGEN_TIERS"] == "/etc/accelgen/tiers.yaml"
    assert {"name": "config", "mountPath": "/etc/accelgen", "readOnly": True} in container["volumeMounts"]
    assert _pod_spec(picker)["automountServiceAccountToken"] is False

    pool_pods = (await cluster.wait_for(lambda: cluster.obj("apps/v1/deployments", "llama"), what="pool"))["spec"]
    pool_labels = pool_pods["template"]["metadata"]["labels"]
    picker_labels = picker["spec"]["template"]["metadata"]["labels"]
    # The picker's Service reaches the picker only; the pods' Services and the gateway
    # pool reach the pool's pods only, never a picker.
    assert _selects(picker_svc["spec"]["selector"], picker_labels)
    assert not _selects(picker_svc["spec"]["selector"], pool_labels)
    assert {(p["name"], p["port"]) for p in picker_svc["spec"]["ports"]} == {("grpc", 9002), ("grpc-health", 9003)}
    assert pods_svc["spec"]["clusterIP"] == "None"
    assert _selects(pods_svc["spec"]["selector"], pool_labels)
    assert not _selects(pods_svc["spec"]["selector"], picker_labels)
    selector = gateway_pool["spec"]["selector"]["matchLabels"]
    assert _selects(selector, pool_labels) and not _selects(selector, picker_labels)
    assert gateway_pool["spec"]["targetPorts"] == [{"number": 8000}]
    ref = gateway_pool["spec"]["endpointPickerRef"]
    assert (ref["name"], ref["port"], ref["failureMode"]) == ("llama-epp", {"number": 9002}, "FailClose")


async def test_deleting_the_pool_removes_the_picker_and_the_gateway_pool(cluster: Cluster) -> None:
    await cluster.create_pool(minimal_pool(gateway={"endpointPicker": PICKER}))
    await _all_made(cluster, PICKER_CHILDREN)
    async with cluster.http.delete(cluster.pool_path("llama")) as resp:
        assert resp.status == 200
    await cluster.wait_for(lambda: cluster.pool() is None, what="the pool gone")
    for resource, name in PICKER_CHILDREN:
        assert cluster.obj(resource, name) is None, f"{resource}/{name} left behind"


async def test_an_external_picker_gets_the_gateway_pool_only(cluster: Cluster) -> None:
    picker = {"type": "external", "service": "their-epp", "port": 9102, "failureMode": "FailOpen"}
    await cluster.create_pool(minimal_pool(gateway={"endpointPicker": picker}))
    (gateway_pool,) = await _all_made(cluster, ((GATEWAY_POOLS, "llama"),))
    ref = gateway_pool["spec"]["endpointPickerRef"]
    assert (ref["name"], ref["port"], ref["failureMode"]) == ("their-epp", {"number": 9102}, "FailOpen")
    await cluster.wait_for(
        lambda: (condition(cluster.pool(), "Degraded") or {}).get("reason") == "Reconciled", what="reconciled"
    )
    assert cluster.obj("apps/v1/deployments", "llama-epp") is None
    assert cluster.obj("v1/services", "llama-pods") is None


async def test_a_missing_gateway_crd_is_degraded_and_the_rest_still_runs(bare_cluster: Cluster) -> None:
    cluster = bare_cluster
    await cluster.create_pool(minimal_pool(gateway={"endpointPicker": PICKER}))
    degraded = await cluster.wait_for(
        lambda: (c := condition(cluster.pool(), "Degraded")) and c["reason"] == "GatewayCRDNotFound" and c,
        what="Degraded: GatewayCRDNotFound",
    )
    assert degraded["status"] == "True"
    assert "inferencepools.inference.networking.k8s.io/v1" in degraded["message"]
    # Everything that needs no gateway CRD was applied; the picker is ready for the CRD.
    await _all_made(cluster, (*PICKER_CHILDREN[:3], ("apps/v1/deployments", "llama"), ("v1/services", "llama")))
    # kopf posts Events from a queue of its own: wait for it rather than race it.
    await cluster.wait_for(lambda: cluster.events("GatewayCRDNotFound"), what="a Warning Event saying why")
    # The operator lives on: its timer keeps observing the pool (and keeps it Degraded).
    await cluster.wait_for(lambda: "podsReporting" in (cluster.pool() or {}).get("status", {}), what="observed")
    assert (condition(cluster.pool(), "Degraded") or {}).get("reason") == "GatewayCRDNotFound"


async def test_gateway_enabled_false_publishes_nothing(cluster: Cluster) -> None:
    await cluster.create_pool(minimal_pool(gateway={"enabled": False, "endpointPicker": PICKER}))
    await cluster.wait_for(
        lambda: (condition(cluster.pool(), "Degraded") or {}).get("reason") == "Reconciled", what="reconciled"
    )
    for resource, name in PICKER_CHILDREN:
        assert cluster.obj(resource, name) is None, f"{resource}/{name} made though the gateway is disabled"


async def _set_picker(cluster: Cluster, picker: dict[str, Any] | None) -> None:
    path = cluster.pool_path("llama").removeprefix(cluster.url)
    await cluster.patch(path, {"spec": {"gateway": {"endpointPicker": picker}}})


async def test_switching_the_picker_off_deletes_what_it_made(cluster: Cluster) -> None:
    await cluster.create_pool(minimal_pool(gateway={"endpointPicker": PICKER}))
    await _all_made(cluster, PICKER_CHILDREN)
    await _set_picker(cluster, None)
    await cluster.wait_for(
        lambda: all(cluster.obj(resource, name) is None for resource, name in PICKER_CHILDREN),
        what="the picker, its Services and the gateway pool deleted",
    )
    assert cluster.obj("apps/v1/deployments", "llama") is not None, "the pool's own Deployment stays"
    assert cluster.obj("v1/services", "llama") is not None, "the pool's own Service stays"


async def test_switching_to_an_external_picker_deletes_ours_and_keeps_the_gateway_pool(cluster: Cluster) -> None:
    await cluster.create_pool(minimal_pool(gateway={"endpointPicker": PICKER}))
    await _all_made(cluster, PICKER_CHILDREN)
    external = {"type": "external", "service": "their-epp", "port": 9102}
    await _set_picker(cluster, external)
    await cluster.wait_for(
        lambda: all(cluster.obj(resource, name) is None for resource, name in PICKER_CHILDREN[:3]),
        what="our picker and its Services deleted",
    )
    await cluster.wait_for(
        lambda: (p := cluster.obj(GATEWAY_POOLS, "llama")) and p["spec"]["endpointPickerRef"]["name"] == "their-epp",
        what="the gateway pool pointing at their picker",
    )
    gateway_pool = cluster.obj(GATEWAY_POOLS, "llama")
    assert gateway_pool is not None and gateway_pool["spec"]["endpointPickerRef"]["port"] == {"number": 9102}


async def test_an_object_the_pool_does_not_own_is_never_deleted(cluster: Cluster) -> None:
    theirs = {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": {"name": "llama-epp", "namespace": NS},
        "spec": {"ports": [{"port": 9002}]},
    }
    await cluster.create(f"/api/v1/namespaces/{NS}/services", theirs)
    await cluster.create_pool(minimal_pool())
    await cluster.wait_for(
        lambda: (condition(cluster.pool(), "Degraded") or {}).get("reason") == "Reconciled", what="reconciled"
    )
    assert cluster.obj("v1/services", "llama-epp") is not None
