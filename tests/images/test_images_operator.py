"""The operator image, run as the chart's Deployment runs it, reconciles a pool on the emulated API."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from pathlib import Path

import aiohttp
import pytest

from accelgen.process import free_port
from accelgen_operator import GROUP, PLURAL, VERSION
from accelgen_operator.emulator import emulated_api
from tests.support.deploy import objects, one, render
from tests.support.images import IMAGES, Container, pod_mounts, pool_spec, scratch_dir

pytestmark = [pytest.mark.images, pytest.mark.slow]

NAMESPACE = "images"


def _deployment_of(emu: object, name: str) -> dict[str, object] | None:
    for (resource, ns, obj_name), obj in emu.objects.items():  # type: ignore[attr-defined]
        if resource.plural == "deployments" and ns == NAMESPACE and obj_name == name and not obj.deleted:
            return dict(obj)
    return None


def _reconciled(emu: object, name: str) -> bool:
    pool = dict(emu.objects[f"{GROUP}/{VERSION}/{PLURAL}", NAMESPACE, name])  # type: ignore[attr-defined]
    status = pool.get("status") or {}
    return (status.get("lastReconcile") or {}).get("reason") == "Reconciled" and status.get(
        "observedGeneration"
    ) == pool["metadata"].get("generation")


@pytest.mark.asyncio
async def test_operator_image_reconciles_a_pool(container: Callable[[str], Container], pod_dir: Path) -> None:
    liveness_port = free_port()
    values = {
        "operator": {
            "peering": {"enabled": False},
            # Every namespace (the chart's default): watching a list makes kopf list the
            # Namespaces (GET /api/v1/namespaces), a path kmock's parser cannot take. The
            # pool's body names its namespace (an API server fills it in, kmock does not).
            "namespaces": [],
            "livenessPort": liveness_port,
            "statsIntervalSeconds": 1,
        }
    }
    deployment = one(objects(render(values)), "Deployment")
    pod = deployment["spec"]["template"]["spec"]
    (spec_container,) = pod["containers"]
    assert spec_container["image"] == IMAGES["operator"]
    c = container("operator")
    assert c.config()["Entrypoint"] == spec_container["command"]
    async with emulated_api() as (emu, url):
        proc = c.start(
            # Outside a cluster the API's address is a flag (in a pod: the service account).
            [*spec_container["args"], "--server", url],
            mounts=pod_mounts(spec_container, {"tmp": scratch_dir(pod_dir, "tmp")}),
            env={e["name"]: e["value"] for e in spec_container["env"]},
            log_file=pod_dir / "operator.log",
        )
        await proc.wait_ready_async(f"http://127.0.0.1:{liveness_port}/healthz", timeout_s=120)
        spec = pool_spec()
        del spec["engine"]["image"], spec["sidecar"]["image"]  # type: ignore[attr-defined]  # the chart's defaults
        body = {
            "apiVersion": f"{GROUP}/{VERSION}",
            "kind": "InferencePool",
            "metadata": {"name": "p", "namespace": NAMESPACE},
            "spec": spec,
        }
        async with aiohttp.ClientSession() as http:
            resp = await http.post(f"{url}/apis/{GROUP}/{VERSION}/namespaces/{NAMESPACE}/{PLURAL}", json=body)
            assert resp.status in (200, 201), await resp.text()
        deadline = time.monotonic() + 120  # a bound on a hang, not a speed target
        while not (_deployment_of(emu, "p") and _reconciled(emu, "p")):
            assert proc.poll() is None, proc.log_tail()
            assert time.monotonic() < deadline, proc.log_tail()
            await asyncio.sleep(0.2)
        child = _deployment_of(emu, "p")
        assert child is not None
        images = {ct["name"]: ct["image"] for ct in child["spec"]["template"]["spec"]["containers"]}  # type: ignore[index]
        assert images == {"engine": IMAGES["engine"], "sidecar": IMAGES["sidecar"]}
        proc.stop()
    log = (pod_dir / "operator.log").read_text()
    assert "Traceback" not in log, log[-3000:]
