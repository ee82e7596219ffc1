"""kmock's in-memory Kubernetes API, with the bits of a real API server the operator relies on.

``KubernetesEmulator`` (the emulator kopf's own tests use) stores objects and serves
list/watch/get/create/patch/delete. A real API server also stamps ``uid``,
``resourceVersion``, ``generation`` and ``creationTimestamp``, names objects from
``generateName`` (kopf's Events), answers a failed JSON-patch ``test`` with 422, and its
garbage collector removes objects whose owner is gone; kopf needs the first four, the
"delete removes everything" check the last. This subclass adds exactly those (kmock's
advice: inherit for special fields).
Label selectors are not evaluated by the emulator; the operator's client filters too.

Used by the tests and by ``accelgen-operator bench``; never by the operator itself.
"""

from __future__ import annotations

import contextlib
import datetime
import itertools
import uuid
from collections.abc import AsyncIterator, Iterable, Mapping
from typing import Any

import aiohttp.web
import attrs
import kmock
from kmock._internal import enums, rendering

from accelgen_operator import GROUP, KIND, PLURAL, VERSION

# Resources the operator and kopf touch; discovery serves them.
RESOURCES: dict[str, kmock.ResourceInfo] = {
    f"{GROUP}/{VERSION}/{PLURAL}": kmock.ResourceInfo(
        kind=KIND,
        singular="inferencepool",
        namespaced=True,
        shortnames={"agpool"},
        categories={"accelgen"},
        subresources={"status", "scale"},
        verbs={"get", "list", "watch", "create", "patch", "update", "delete"},
    ),
    "apiextensions.k8s.io/v1/customresourcedefinitions": kmock.ResourceInfo(
        kind="CustomResourceDefinition", namespaced=False, verbs={"get", "list", "watch"}
    ),
    "v1/namespaces": kmock.ResourceInfo(kind="Namespace", namespaced=False, verbs={"get", "list", "watch"}),
    "v1/configmaps": kmock.ResourceInfo(kind="ConfigMap", namespaced=True),
    "v1/services": kmock.ResourceInfo(kind="Service", namespaced=True),
    "v1/secrets": kmock.ResourceInfo(kind="Secret", namespaced=True),
    "v1/pods": kmock.ResourceInfo(kind="Pod", namespaced=True),
    "v1/events": kmock.ResourceInfo(kind="Event", namespaced=True),
    "apps/v1/deployments": kmock.ResourceInfo(kind="Deployment", namespaced=True, subresources={"status"}),
    "policy/v1/poddisruptionbudgets": kmock.ResourceInfo(kind="PodDisruptionBudget", namespaced=True),
}
OPTIONAL_RESOURCES: dict[str, kmock.ResourceInfo] = {
    "monitoring.coreos.com/v1/servicemonitors": kmock.ResourceInfo(kind="ServiceMonitor", namespaced=True),
    "inference.networking.k8s.io/v1/inferencepools": kmock.ResourceInfo(kind="InferencePool", namespaced=True),
}
WRITE_METHODS = frozenset({"POST", "PUT", "PATCH", "DELETE"})


def _may_delete(request: rendering.Request) -> bool:
    """A DELETE, or a patch touching finalizers (which may release a deleted object)."""
    if request.action == enums.action.DELETE:
        return True
    if request.action != enums.action.UPDATE:
        return False
    data = request.data
    if isinstance(data, dict):
        return "finalizers" in (data.get("metadata") or {})
    return isinstance(data, list) and any(
        str(op.get("path", "")).startswith("/metadata/finalizers") for op in data if isinstance(op, dict)
    )


def _now() -> str:
    return datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


@attrs.define(kw_only=True)
class ApiServerEmulator(kmock.KubernetesEmulator):
    """The emulator plus uid/resourceVersion/generation stamping and owner-reference GC."""

    _versions: Iterable[int] = attrs.field(factory=lambda: itertools.count(1), init=False)
    _last_version: int = attrs.field(default=0, init=False)
    log: list[tuple[str, str]] = attrs.field(factory=list, init=False)  # (method, path)

    def _next_version(self) -> str:
        self._last_version = next(iter(self._versions))
        return str(self._last_version)

    async def _serve_list(self, request: rendering.Request) -> rendering.Payload:
        # A list carries the version a watch can start from (kmock answers "...").
        result = await super()._serve_list(request)
        if isinstance(result, dict):
            result["metadata"] = {"resourceVersion": str(self._last_version)}
        return result

    async def _serve_watch(self, request: rendering.Request) -> AsyncIterator[rendering.Payload]:
        # A watch from version N delivers only what changed after N, as the API server does;
        # kmock replays everything, and kopf takes a replayed stale version for news.
        raw_since = request.params.get("resourceVersion", "")
        since = int(raw_since) if raw_since.isdigit() else 0
        async for item in super()._serve_watch(request):
            if since and isinstance(item, dict) and item.get("type") != "DELETED":
                version = str(((item.get("object") or {}).get("metadata") or {}).get("resourceVersion"))
                if version.isdigit() and int(version) <= since:
                    continue
            yield item

    def _current(self, request: rendering.Request) -> Mapping[str, Any] | None:
        if request.resource is None or request.name is None:
            return None
        key = (request.resource, request.namespace, request.name)
        if key in self.objects and not self.objects[key].deleted:
            return dict(self.objects[key])
        return None

    def _stamp(self, request: rendering.Request) -> None:
        data = request.data
        if request.action == enums.action.CREATE and isinstance(data, dict):
            meta = data.setdefault("metadata", {})
            if not meta.get("name") and meta.get("generateName"):
                meta["name"] = f"{meta['generateName']}{uuid.uuid4().hex[:5]}"
            meta.update(
                uid=str(uuid.uuid4()),
                resourceVersion=self._next_version(),
                generation=1,
                creationTimestamp=_now(),
            )
        elif request.action == enums.action.UPDATE and request.name is not None:
            current = self._current(request)
            generation = int(((current or {}).get("metadata") or {}).get("generation") or 1)
            version = self._next_version()
            if isinstance(data, dict):
                meta = data.setdefault("metadata", {})
                meta["resourceVersion"] = version
                if "spec" in data and request.subresource is None and data["spec"] != (current or {}).get("spec"):
                    meta["generation"] = generation + 1
            elif isinstance(data, list):
                self._check_tests(current or {}, data)
                data.append({"op": "add", "path": "/metadata/resourceVersion", "value": version})
                if request.subresource is None and any(str(op.get("path", "")).startswith("/spec") for op in data):
                    data.append({"op": "add", "path": "/metadata/generation", "value": generation + 1})

    @staticmethod
    def _check_tests(current: Mapping[str, Any], ops: list[Any]) -> None:
        """A JSON patch whose ``test`` fails is a 422, as from an API server (kopf needs it)."""
        for op in ops:
            if not isinstance(op, dict) or op.get("op") != "test":
                continue
            value: Any = current
            for part in str(op.get("path", "")).strip("/").split("/"):
                value = value.get(part) if isinstance(value, Mapping) else None
            if value != op.get("value"):
                raise kmock.KubernetesError(status=422, reason="Invalid", message=f"test failed at {op.get('path')}")

    async def _collect_orphans(self) -> None:
        """Delete objects whose every owner is gone (as the garbage collector does)."""
        while True:
            live = {str(o.get("metadata", {}).get("uid")) for o in self.objects.values() if not o.deleted}
            orphans = [
                (key, obj) for key, obj in self.objects.items()
                if not obj.deleted
                and (refs := obj.get("metadata", {}).get("ownerReferences"))
                and not any(r.get("uid") in live for r in refs)
            ]  # fmt: skip
            if not orphans:
                return
            for (resource, _, _), obj in orphans:
                raw = obj.raw
                obj.delete()
                await self._buses[resource].put({"type": "DELETED", "object": raw})

    async def _handle(self, request: rendering.Request) -> aiohttp.web.StreamResponse:
        method = str(request.method.value if request.method else "")
        self.log.append((method, str(request.url.path)))
        # NOTE: kmock keeps every request for assertions and matches each new one by scanning
        # that history, which is quadratic; our own ``log`` serves the assertions, so kmock
        # keeps only the request in hand (100 pools take many minutes otherwise).
        del self._requests[:-1]
        if request.resource is not None:
            self._stamp(request)
        response = await super()._handle(request)
        if _may_delete(request):
            await self._collect_orphans()
        return response

    def writes(self, since: int = 0) -> list[tuple[str, str]]:
        """Logged requests (from index ``since``) that change state."""
        return [(m, p) for m, p in self.log[since:] if m in WRITE_METHODS]


@contextlib.asynccontextmanager
async def emulated_api(*, optional: Iterable[str] = ()) -> AsyncIterator[tuple[ApiServerEmulator, str]]:
    """An emulated API on 127.0.0.1 (a free port); yields the emulator and its base URL.

    ``optional`` names extra resources to serve, e.g. ``monitoring.coreos.com/v1/servicemonitors``.
    """
    emulator = ApiServerEmulator()
    async with emulator, kmock.Server(emulator, host="127.0.0.1") as server:
        for name, info in RESOURCES.items():
            emulator.resources[name] = info
        for name in optional:
            emulator.resources[name] = OPTIONAL_RESOURCES[name]
        yield emulator, str(server.url).rstrip("/")
