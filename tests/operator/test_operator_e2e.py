"""End to end: the real kopf runtime against kmock's in-memory Kubernetes API.

Each test starts the operator (``cluster`` fixture), applies InferencePools over HTTP as
kubectl would, and watches what the operator does to the API. Fake sidecars are real
aiohttp servers on 127.0.0.1.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

import pytest
import yaml

from accelgen.core.tiers import parse_tiers
from accelgen_operator.emulator import emulated_api
from accelgen_operator.handlers import OperatorConfig
from accelgen_operator.resources import CONFIG_HASH_ANNOTATION
from accelgen_operator.runner import running_operator
from tests.support.operator_cluster import FAST, NS, Cluster, condition, make_pod, make_pool, make_spec, pod_stats

pytestmark = pytest.mark.asyncio

CHILDREN = (
    ("v1/configmaps", "llama-config"),
    ("apps/v1/deployments", "llama"),
    ("v1/services", "llama"),
    ("policy/v1/poddisruptionbudgets", "llama"),
)


def _deployment(cluster: Cluster) -> dict[str, Any] | None:
    return cluster.obj("apps/v1/deployments", "llama")


def _container(deployment: dict[str, Any], name: str) -> dict[str, Any]:
    return next(c for c in deployment["spec"]["template"]["spec"]["containers"] if c["name"] == name)


async def _reconciled(cluster: Cluster, generation: int | None = None) -> dict[str, Any]:
    def check() -> Any:
        pool = cluster.pool()
        status = (pool or {}).get("status") or {}
        ok = (status.get("lastReconcile") or {}).get("reason") == "Reconciled"
        gen = generation or (pool or {})["metadata"]["generation"]
        return pool if ok and status.get("observedGeneration") == gen else None

    return dict(await cluster.wait_for(check, what="the pool reconciled"))


async def test_apply_pool_creates_children_with_owner_references(cluster: Cluster) -> None:
    await cluster.create(
        f"/api/v1/namespaces/{NS}/secrets",
        {
            "metadata": {"name": "tenants", "namespace": NS},
            "data": {"keys.yaml": "dGVuYW50czogW10K"},
        },
    )
    created = await cluster.create_pool(make_pool(auth={"secretName": "tenants"}))
    pool = await _reconciled(cluster)
    uid = created["metadata"]["uid"]
    for resource, name in CHILDREN:
        child = cluster.obj(resource, name)
        assert child is not None, f"{resource}/{name} missing"
        (ref,) = child["metadata"]["ownerReferences"]
        assert (ref["uid"], ref["kind"], ref["name"], ref["controller"]) == (
            uid,
            "InferencePool",
            "llama",
            True,
        )
    deployment = _deployment(cluster)
    assert deployment is not None
    engine = _container(deployment, "engine")
    assert "accelgen.vllm.AccelGenScheduler" in engine["args"]
    assert engine["resources"]["limits"]["nvidia.com/gpu"] == 1
    assert "--keys" in _container(deployment, "sidecar")["args"]
    config = cluster.obj("v1/configmaps", "llama-config")
    assert config is not None
    assert parse_tiers(yaml.safe_load(config["data"]["tiers.yaml"])).default == "standard"
    assert "accelgen.dev/finalizer" in pool["metadata"]["finalizers"]
    assert condition(pool, "Degraded")["status"] == "False"  # type: ignore[index]
    await cluster.wait_for(lambda: condition(cluster.pool(), "SLOAttained"), what="status from the timer")
    await cluster.wait_for(lambda: cluster.events("Reconciled"), what="an Event saying what was applied")


async def test_spec_change_rolls_the_deployment_but_tier_change_reloads_in_place(
    cluster: Cluster,
) -> None:
    await cluster.create_pool(make_pool())
    await _reconciled(cluster)
    before = _deployment(cluster)
    assert before is not None
    pod_hash = before["spec"]["template"]["metadata"]["annotations"][CONFIG_HASH_ANNOTATION]

    await cluster.patch(
        cluster.pool_path("llama")[len(cluster.url) :],
        {"spec": {"engine": {"args": ["--enforce-eager"]}, "replicas": 2}},
    )
    await _reconciled(cluster, generation=2)
    after = _deployment(cluster)
    assert after is not None
    assert after["spec"]["replicas"] == 2
    assert _container(after, "engine")["args"][-1] == "--enforce-eager"
    new_hash = after["spec"]["template"]["metadata"]["annotations"][CONFIG_HASH_ANNOTATION]
    assert new_hash != pod_hash

    # A tier target alone: the ConfigMap changes, the Deployment is not written at all.
    mark = len(cluster.emu.log)
    tiers = make_spec()["tiers"]
    tiers[0]["ttftMs"] = 300
    await cluster.patch(cluster.pool_path("llama")[len(cluster.url) :], {"spec": {"tiers": tiers}})
    await _reconciled(cluster, generation=3)
    config = cluster.obj("v1/configmaps", "llama-config")
    assert config is not None and "ttft_ms: 300" in config["data"]["tiers.yaml"]
    writes = cluster.emu.writes(mark)
    assert any("/configmaps/llama-config" in p for _, p in writes)
    assert not any("/deployments/" in p for _, p in writes), writes


async def test_stats_drive_status_tiers_and_slo_attained(cluster: Cluster, sidecars: Any) -> None:
    await cluster.create_pool(make_pool(replicas=4))
    await _reconciled(cluster)
    a, b, broken, hung = await sidecars(), await sidecars(), await sidecars(), await sidecars()
    hung.hang = True
    a.answer = pod_stats({"interactive": (90, 90), "standard": (10, 10)})
    b.answer = pod_stats({"interactive": (10, 5), "batch": (4, 4)})
    broken.answer = b"<html>not json</html>"
    pods = [
        make_pod("llama", "llama-a", port=a.port),
        make_pod("llama", "llama-b", port=b.port),
        make_pod("llama", "llama-broken", port=broken.port),
        make_pod("llama", "llama-down", port=1),  # nothing listens there
        make_pod("llama", "llama-hung", port=hung.port),  # answers never
        make_pod("llama", "llama-starting", port=a.port, ready=False),
        make_pod("other", "other-pool", port=a.port),
    ]
    for pod in pods:
        await cluster.create(f"/api/v1/namespaces/{NS}/pods", pod)

    def tiers() -> Any:
        status = (cluster.pool() or {}).get("status") or {}
        return status if status.get("podsReporting") == 2 else None

    status = await cluster.wait_for(tiers, what="two pods reporting")
    rows = {r["name"]: r for r in status["tiers"]}
    assert rows["interactive"]["completed"] == 100 and rows["interactive"]["attainment"] == 0.95
    assert rows["batch"]["sloMet"] == 4
    # Broken JSON, a closed port and a pod past the timeout: skipped and counted.
    assert status["podsUnreachable"] == 3
    assert status["tightestTier"] == "interactive" and status["tightestAttainment"] == 0.95
    assert condition(cluster.pool(), "SLOAttained")["status"] == "True"  # type: ignore[index]

    b.answer = pod_stats({"interactive": (10, 0)})
    cond = await cluster.wait_for(
        lambda: (c := condition(cluster.pool(), "SLOAttained")) and c["status"] == "False" and c,
        what="SLOAttained False",
    )
    assert cond["reason"] == "BelowTarget" and "interactive 90.0% < 95%" in cond["message"]
    assert a.hits > 1, "the timer keeps reading"


def _fast_scaling(*, min_replicas: int, max_replicas: int) -> dict[str, Any]:
    """An autoscaling block that may step every window: one period, no cooldown, 10 requests judged."""
    return {
        "minReplicas": min_replicas,
        "maxReplicas": max_replicas,
        "tier": "interactive",
        "evaluationPeriods": 1,
        "cooldownSeconds": 0,
        "minCompleted": 10,
    }


async def test_low_attainment_scales_up_within_bounds(cluster: Cluster, sidecars: Any) -> None:
    await cluster.create_pool(make_pool(autoscaling=_fast_scaling(min_replicas=1, max_replicas=3)))
    await _reconciled(cluster)
    sidecar = await sidecars()
    sidecar.answer = pod_stats({"interactive": (100, 50)})
    await cluster.create(f"/api/v1/namespaces/{NS}/pods", make_pod("llama", "llama-0", port=sidecar.port))

    await cluster.wait_for(lambda: (_deployment(cluster) or {})["spec"]["replicas"] == 3, what="3 replicas")
    for _ in range(5):  # more windows below target: never beyond maxReplicas
        await asyncio.sleep(FAST.stats_interval_s)
        assert (cluster.pool() or {})["spec"]["replicas"] == 3
    assert (_deployment(cluster) or {})["spec"]["replicas"] == 3
    events = cluster.events("ScaledUp")
    assert len(events) == 2 and "interactive attainment 50.0%" in events[0]["message"]
    assert "lastScaleReason" in (cluster.pool() or {})["status"]["autoscaling"]


async def test_idle_pool_well_above_target_scales_down_to_min(cluster: Cluster, sidecars: Any) -> None:
    await cluster.create_pool(make_pool(replicas=4, autoscaling=_fast_scaling(min_replicas=2, max_replicas=4)))
    await _reconciled(cluster)
    sidecar = await sidecars()
    sidecar.answer = pod_stats({"interactive": (100, 100)}, waiting=0, kv=0.1)
    await cluster.create(f"/api/v1/namespaces/{NS}/pods", make_pod("llama", "llama-0", port=sidecar.port))
    await cluster.wait_for(lambda: (_deployment(cluster) or {})["spec"]["replicas"] == 2, what="down to 2")
    for _ in range(4):
        await asyncio.sleep(FAST.stats_interval_s)
        assert (cluster.pool() or {})["spec"]["replicas"] == 2, "never below minReplicas"
    assert len(cluster.events("ScaledDown")) == 2


async def test_missing_secret_is_degraded_then_recovers(cluster: Cluster) -> None:
    await cluster.create_pool(make_pool(auth={"secretName": "absent"}))
    cond = await cluster.wait_for(
        lambda: (c := condition(cluster.pool(), "Degraded")) and c["status"] == "True" and c,
        what="Degraded",
    )
    assert cond["reason"] == "SecretNotFound" and "'absent'" in cond["message"]
    await cluster.wait_for(lambda: cluster.events("SecretNotFound"), what="a Warning Event with the reason")
    assert _deployment(cluster) is None, "nothing is rolled out without the keys"

    await cluster.create(
        f"/api/v1/namespaces/{NS}/secrets",
        {"metadata": {"name": "absent", "namespace": NS}, "data": {"keys.yaml": "e30K"}},
    )
    await cluster.wait_for(lambda: _deployment(cluster), timeout_s=15, what="retry after the Secret appears")
    await cluster.wait_for(
        lambda: (c := condition(cluster.pool(), "Degraded")) and c["status"] == "False",
        what="Degraded False",
    )


async def test_spec_the_schema_missed_is_degraded_not_a_crash(cluster: Cluster) -> None:
    # The emulator runs no CRD validation, as a cluster without CEL support would not.
    await cluster.create_pool(make_pool(tiers=[{"name": "chat", "ttftMs": 500}]))
    cond = await cluster.wait_for(
        lambda: (c := condition(cluster.pool(), "Degraded")) and c["status"] == "True" and c,
        what="Degraded InvalidSpec",
    )
    assert cond["reason"] == "InvalidSpec" and "spec.tiers[0]" in cond["message"]
    assert _deployment(cluster) is None
    await cluster.patch(
        cluster.pool_path("llama")[len(cluster.url) :],
        {"spec": {"tiers": [{"name": "chat", "ttftMs": 500, "tbtMs": 50}], "defaultTier": "chat"}},
    )
    await cluster.wait_for(lambda: _deployment(cluster), what="the fixed spec rolled out")
    await _reconciled(cluster)


async def test_delete_clears_finalizer_and_collects_children(cluster: Cluster) -> None:
    await cluster.create_pool(make_pool())
    await _reconciled(cluster)
    async with cluster.http.delete(cluster.pool_path("llama")) as resp:
        assert resp.status == 200
    await cluster.wait_for(lambda: cluster.pool() is None, what="the pool gone (finalizer cleared)")
    for resource, name in CHILDREN:
        assert cluster.obj(resource, name) is None, f"{resource}/{name} left behind"


async def test_a_deployment_deleted_by_hand_comes_back(cluster: Cluster) -> None:
    await cluster.create_pool(make_pool())
    await _reconciled(cluster)
    async with cluster.http.delete(f"{cluster.url}/apis/apps/v1/namespaces/{NS}/deployments/llama") as resp:
        assert resp.status == 200
    assert _deployment(cluster) is None
    restored = await cluster.wait_for(lambda: _deployment(cluster), what="the Deployment re-created")
    assert _container(restored, "engine")["args"][:2] == ["--model", "meta-llama/Llama-3.1-8B-Instruct"]


async def test_optional_children_when_their_crds_exist(cluster: Cluster) -> None:
    gateway = {"enabled": True, "endpointPicker": {"name": "llama-epp"}}
    await cluster.create_pool(make_pool(gateway=gateway))
    await _reconciled(cluster)
    monitor = cluster.obj("monitoring.coreos.com/v1/servicemonitors", "llama")
    gateway_pool = cluster.obj("inference.networking.k8s.io/v1/inferencepools", "llama")
    assert monitor is not None and gateway_pool is not None
    assert gateway_pool["spec"]["endpointPickerRef"]["name"] == "llama-epp"


class _Quiet:
    """Whether the API has seen no write for ``period_s``, timed by the test's polls (the
    emulator's log has no times)."""

    def __init__(self, emu: Any, period_s: float) -> None:
        self.emu, self.period_s = emu, period_s
        self.since_s, self.num_writes = time.monotonic(), len(emu.writes())

    def __call__(self) -> bool:
        now_s, num_writes = time.monotonic(), len(self.emu.writes())
        if num_writes != self.num_writes:
            self.since_s, self.num_writes = now_s, num_writes
        return now_s - self.since_s >= self.period_s


def _read_back(emu: Any, since: int) -> bool:
    """Whether every child of the pool was read (GET) since log entry ``since``."""
    paths = [p for m, p in emu.log[since:] if m == "GET"]
    return all(any(p.endswith(f"/{resource.rsplit('/', 1)[-1]}/{name}") for p in paths) for resource, name in CHILDREN)


async def test_restart_changes_nothing_that_is_right() -> None:
    async with emulated_api() as (emu, url):
        cfg = OperatorConfig(api_url=url, stats_interval_s=0.3, stats_timeout_s=0.5)
        import aiohttp

        async with running_operator(cfg), aiohttp.ClientSession() as http:
            cluster = Cluster(emu=emu, url=url, http=http)
            await cluster.create_pool(make_pool())
            await _reconciled(cluster)
            await cluster.wait_for(lambda: condition(cluster.pool(), "SLOAttained"), what="observed")
            # Idle: it settles into three stats intervals without a write (however long
            # this machine takes to get there), which an operator that keeps writing never does.
            quiet_s = 3 * cfg.stats_interval_s
            await cluster.wait_for(_Quiet(emu, quiet_s), timeout_s=30, what="an idle operator")
            # Neither the ServiceMonitor nor the gateway CRD is served here: no such child.
            assert not any("servicemonitors" in p or "networking" in p for _, p in emu.writes())
        restart_from = len(emu.log)
        async with running_operator(cfg):
            # The new operator reads every child back; then three stats intervals for any
            # write it would make.
            await cluster.wait_for(lambda: _read_back(emu, restart_from), timeout_s=30, what="the new operator looking")
            await asyncio.sleep(quiet_s)
        assert emu.writes(restart_from) == []


async def test_liveness_endpoint_reports_the_api_client() -> None:
    import socket

    import aiohttp

    with socket.socket() as sock:  # a free loopback port for kopf's liveness server
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    async with emulated_api() as (_, url):
        cfg = OperatorConfig(api_url=url, stats_interval_s=0.3, stats_timeout_s=0.5)
        liveness = f"http://127.0.0.1:{port}/healthz"
        async with (
            running_operator(cfg, liveness_endpoint=liveness),
            aiohttp.ClientSession() as http,
        ):
            body: dict[str, Any] = {}
            for _ in range(100):  # kopf starts its probe server shortly after it is ready
                try:
                    async with http.get(liveness) as resp:
                        assert resp.status == 200
                        body = await resp.json()
                        break
                except aiohttp.ClientConnectionError:
                    await asyncio.sleep(0.05)
    assert "apiCalls" in body and isinstance(body["apiCalls"], dict)


def _pool_without_images() -> dict[str, Any]:
    pool = make_pool()
    pool["spec"]["engine"].pop("image")
    pool["spec"]["sidecar"].pop("image")
    return pool


async def test_a_pool_without_images_and_no_default_is_degraded_until_it_names_them(cluster: Cluster) -> None:
    # The cluster fixture's operator has no default images.
    await cluster.create_pool(_pool_without_images())
    cond = await cluster.wait_for(
        lambda: (c := condition(cluster.pool(), "Degraded")) and c["status"] == "True" and c,
        what="Degraded InvalidSpec",
    )
    assert cond["reason"] == "InvalidSpec", cond
    for needle in (
        "spec.engine.image",
        "--default-engine-image",
        "spec.sidecar.image",
        "ACCELGEN_DEFAULT_SIDECAR_IMAGE",
    ):
        assert needle in cond["message"], cond["message"]
    await cluster.wait_for(lambda: cluster.events("InvalidSpec"), what="a Warning Event InvalidSpec")
    assert _deployment(cluster) is None
    await cluster.patch(
        cluster.pool_path("llama")[len(cluster.url) :],
        {"spec": {"engine": {"image": "engine:7"}, "sidecar": {"image": "sidecar:7"}}},
    )
    await _reconciled(cluster)
    deployment = _deployment(cluster)
    assert deployment is not None
    assert (_container(deployment, "engine")["image"], _container(deployment, "sidecar")["image"]) == (
        "engine:7",
        "sidecar:7",
    )
    assert condition(cluster.pool(), "Degraded")["status"] == "False"  # type: ignore[index]


async def test_a_pool_without_images_runs_the_operators_defaults_with_the_stats_channel() -> None:
    async with emulated_api() as (emu, url):
        cfg = OperatorConfig(
            api_url=url,
            stats_interval_s=FAST.stats_interval_s,
            stats_timeout_s=FAST.stats_timeout_s,
            default_engine_image="registry.example/engine:3",
            default_sidecar_image="registry.example/sidecar:3",
        )
        import aiohttp

        async with running_operator(cfg), aiohttp.ClientSession() as http:
            cluster = Cluster(emu=emu, url=url, http=http)
            await cluster.create_pool(_pool_without_images())
            pool = await _reconciled(cluster)
            assert condition(pool, "Degraded")["status"] == "False"  # type: ignore[index]
            assert "image" not in pool["spec"]["engine"]  # the default is not written into the pool
            deployment = _deployment(cluster)
            assert deployment is not None
            engine, sidecar = _container(deployment, "engine"), _container(deployment, "sidecar")
            assert engine["image"] == "registry.example/engine:3"
            assert sidecar["image"] == "registry.example/sidecar:3"
            # The in-engine stats file reaches the sidecar over the shared emptyDir.
            env = {e["name"]: e.get("value") for e in engine["env"]}
            assert env["ACCELGEN_STATS_FILE"] == "/var/run/accelgen/engine-stats.json"
            at = sidecar["args"].index("--engine-stats")
            assert sidecar["args"][at + 1] == "/var/run/accelgen/engine-stats.json"
            volumes = {v["name"]: v for v in deployment["spec"]["template"]["spec"]["volumes"]}
            assert "emptyDir" in volumes["run"]
            for container in (engine, sidecar):
                assert any(
                    m["name"] == "run" and m["mountPath"] == "/var/run/accelgen" for m in container["volumeMounts"]
                )


async def test_an_operator_restarted_with_defaults_fixes_a_pool_it_refused() -> None:
    # The chart upgrade case: the operator comes back with default images and resumes the pool.
    async with emulated_api() as (emu, url):
        fast = {"stats_interval_s": FAST.stats_interval_s, "stats_timeout_s": FAST.stats_timeout_s}
        import aiohttp

        async with aiohttp.ClientSession() as http:
            cluster = Cluster(emu=emu, url=url, http=http)
            async with running_operator(OperatorConfig(api_url=url, **fast)):
                await cluster.create_pool(_pool_without_images())
                await cluster.wait_for(
                    lambda: (c := condition(cluster.pool(), "Degraded")) and c["reason"] == "InvalidSpec",
                    what="Degraded InvalidSpec",
                )
            assert _deployment(cluster) is None
            cfg = OperatorConfig(api_url=url, default_engine_image="e:5", default_sidecar_image="s:5", **fast)
            async with running_operator(cfg):
                deployment = await cluster.wait_for(lambda: _deployment(cluster), what="the Deployment")
                await cluster.wait_for(
                    lambda: (c := condition(cluster.pool(), "Degraded")) and c["status"] == "False",
                    what="Degraded False",
                )
            assert _container(deployment, "engine")["image"] == "e:5"
            assert _container(deployment, "sidecar")["image"] == "s:5"
