"""Shared factories and helpers of the operator tests (the fixtures are in conftest.py).

``make_spec`` builds pool specs; ``cluster`` runs the real kopf operator against the
in-memory API (kmock's emulator, see ``accelgen_operator.emulator``) on 127.0.0.1;
``FakeSidecar`` is a real aiohttp server on 127.0.0.1 answering ``/stats``.
"""

from __future__ import annotations

import asyncio
import copy
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import aiohttp
import aiohttp.web
import kmock

from accelgen.core.summary import TierSummary
from accelgen.wire import EngineView, SidecarStats
from accelgen_operator import API_VERSION, GROUP, KIND, PLURAL, VERSION
from accelgen_operator.emulator import ApiServerEmulator
from accelgen_operator.handlers import OperatorConfig
from accelgen_operator.resources import selector_labels

NS = "serving"
FAST = OperatorConfig(stats_interval_s=0.3, stats_timeout_s=0.5, retry_base_s=0.2, retry_max_s=1.0)


def make_spec(**overrides: Any) -> dict[str, Any]:
    """A valid pool spec (three tiers, one GPU); keyword arguments replace top-level fields."""
    spec: dict[str, Any] = {
        "model": "meta-llama/Llama-3.1-8B-Instruct",
        "replicas": 1,
        "engine": {"image": "engine:1", "gpus": 1},
        "sidecar": {"image": "sidecar:1"},
        "tiers": [
            {
                "name": "interactive",
                "ttftMs": 500,
                "tbtMs": 100,
                "priority": 0,
                "attainmentTarget": 0.95,
            },
            {
                "name": "standard",
                "ttftMs": 2000,
                "tbtMs": 250,
                "priority": 1,
                "attainmentTarget": 0.9,
            },
            {"name": "batch", "deadlineSeconds": 3600, "priority": 2, "attainmentTarget": 0.99},
        ],
        "defaultTier": "standard",
    }
    spec.update(copy.deepcopy(overrides))
    return spec


def make_pool(name: str = "llama", **overrides: Any) -> dict[str, Any]:
    return {
        "apiVersion": API_VERSION,
        "kind": KIND,
        "metadata": {"name": name, "namespace": NS},
        "spec": make_spec(**overrides),
    }


def pod_stats(tiers: dict[str, tuple[int, int]], *, waiting: int = 0, kv: float = 0.1) -> dict[str, Any]:
    """A /stats answer from the sidecar's writer; ``tiers`` maps name → (completed, slo_met)."""
    summaries = tuple(
        TierSummary(
            name=n,
            window_s=60,
            num_requests=c,
            num_completed=c,
            num_slo_met=m,
            num_rejected=1,
            num_tokens=c * 100,
            num_good_tokens=m * 100,
            ttft_p99_s=0.2,
            tbt_p99_s=0.05,
        )
        for n, (c, m) in tiers.items()
    )
    engine = EngineView(ready=True, running=1, waiting=waiting, kv_usage=kv)
    return SidecarStats(pool="llama", window_s=60, tiers=summaries, engine=engine).to_json()


class FakeSidecar:
    """A real aiohttp server on 127.0.0.1 whose ``/stats`` answer the test sets."""

    def __init__(self) -> None:
        self.answer: Any = pod_stats({})
        self.status = 200
        self.hits = 0
        self.port = 0
        self.hang = False
        self._released = asyncio.Event()
        self._runner: aiohttp.web.AppRunner | None = None

    async def _stats(self, request: aiohttp.web.Request) -> aiohttp.web.StreamResponse:
        self.hits += 1
        if self.hang:
            await self._released.wait()  # an engine pod that never answers
        if isinstance(self.answer, bytes):
            return aiohttp.web.Response(body=self.answer, status=self.status)
        return aiohttp.web.json_response(self.answer, status=self.status)

    async def start(self) -> FakeSidecar:
        app = aiohttp.web.Application()
        app.router.add_get("/stats", self._stats)
        self._runner = aiohttp.web.AppRunner(app, access_log=None)
        await self._runner.setup()
        site = aiohttp.web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        self.port = self._runner.addresses[0][1]
        return self

    async def stop(self) -> None:
        self._released.set()
        if self._runner is not None:
            await self._runner.cleanup()


def make_pod(pool: str, name: str, *, port: int, ready: bool = True) -> dict[str, Any]:
    """A pod of ``pool`` as the kubelet would report it, its sidecar on 127.0.0.1:port."""
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": name, "namespace": NS, "labels": selector_labels(pool)},
        "spec": {
            "containers": [
                {"name": "engine", "image": "engine:1"},
                {
                    "name": "sidecar",
                    "image": "sidecar:1",
                    "ports": [{"name": "http", "containerPort": port}],
                },
            ]
        },
        "status": {
            "phase": "Running",
            "podIP": "127.0.0.1",
            "conditions": [{"type": "Ready", "status": "True" if ready else "False"}],
        },
    }


@dataclass
class Cluster:
    """The emulated API with the operator running against it, and a client for the test."""

    emu: ApiServerEmulator
    url: str
    http: aiohttp.ClientSession

    def pool_path(self, name: str = "", sub: str = "") -> str:
        path = f"{self.url}/apis/{GROUP}/{VERSION}/namespaces/{NS}/{PLURAL}"
        return path + (f"/{name}" if name else "") + (f"/{sub}" if sub else "")

    async def create(self, api_path: str, body: dict[str, Any]) -> dict[str, Any]:
        async with self.http.post(self.url + api_path, json=body) as resp:
            assert resp.status in (200, 201), await resp.text()
            return dict(await resp.json())

    async def create_pool(self, pool: dict[str, Any]) -> dict[str, Any]:
        async with self.http.post(self.pool_path(), json=pool) as resp:
            assert resp.status in (200, 201), await resp.text()
            return dict(await resp.json())

    async def patch(self, api_path: str, body: dict[str, Any]) -> None:
        headers = {"Content-Type": "application/merge-patch+json"}
        async with self.http.patch(self.url + api_path, json=body, headers=headers) as resp:
            assert resp.status == 200, await resp.text()

    def obj(self, resource: str, name: str) -> dict[str, Any] | None:
        """The stored object (``resource`` like ``apps/v1/deployments``), or None."""
        key = (kmock.resource(resource), NS, name)
        if key not in self.emu.objects or self.emu.objects[key].deleted:
            return None
        return copy.deepcopy(dict(self.emu.objects[key]))

    def pool(self, name: str = "llama") -> dict[str, Any] | None:
        return self.obj(f"{GROUP}/{VERSION}/{PLURAL}", name)

    def events(self, reason: str) -> list[dict[str, Any]]:
        return [
            dict(o)
            for (res, _, _), o in self.emu.objects.items()
            if res.plural == "events" and not o.deleted and dict(o).get("reason") == reason
        ]

    async def wait_for(self, check: Callable[[], Any], *, timeout_s: float = 10.0, what: str = "") -> Any:
        """Poll ``check`` until it returns something truthy; fail after ``timeout_s``."""
        deadline = time.monotonic() + timeout_s
        while True:
            try:
                result = check()
            except (KeyError, TypeError, IndexError):
                result = None
            if result:
                return result
            if time.monotonic() > deadline:
                raise AssertionError(f"timed out waiting for {what or check}")
            await asyncio.sleep(0.05)


def condition(pool: dict[str, Any] | None, kind: str) -> dict[str, Any] | None:
    for cond in ((pool or {}).get("status") or {}).get("conditions") or []:
        if cond.get("type") == kind:
            return dict(cond)
    return None
