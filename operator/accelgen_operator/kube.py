"""The operator's Kubernetes API client: ``kubernetes_asyncio`` on plain dicts.

kopf is not an API client; children are read and written here. We use
``kubernetes-asyncio`` (the asyncio twin of the official ``kubernetes`` client) rather
than ``kubernetes`` itself: the official client blocks, and a blocking call inside a
kopf handler stalls kopf's event loop (its watches, timers and other pools) for as long
as the API server takes to answer. Its generic ``call_api`` gives us one code path for
built-in kinds and CRDs, with the client's own auth, TLS and kubeconfig handling.

Every call is counted by verb, for the benchmark and for "no write when nothing changed".
"""

from __future__ import annotations

import collections
import time
from collections.abc import Mapping
from typing import Any

import aiohttp
from kubernetes_asyncio import client, config
from kubernetes_asyncio.client.exceptions import ApiException

FIELD_MANAGER = "accelgen-operator"
MERGE_PATCH = "application/merge-patch+json"
_DISCOVERY_TTL_S = 300.0


class KubeError(Exception):
    """An API call failed; ``status`` is the HTTP status (0 when no answer came)."""

    def __init__(self, message: str, *, status: int = 0, reason: str = "") -> None:
        super().__init__(message)
        self.status = status
        self.reason = reason


def resource_path(api_version: str, plural: str, namespace: str | None, name: str | None = None) -> str:
    """The REST path of a collection or an object (``v1`` is the core group)."""
    base = "/api/v1" if api_version == "v1" else f"/apis/{api_version}"
    path = f"{base}/namespaces/{namespace}/{plural}" if namespace else f"{base}/{plural}"
    return f"{path}/{name}" if name else path


def _reason(err: ApiException) -> str:
    import json

    try:
        return str(json.loads(err.body or "{}").get("message", err.reason))
    except (ValueError, AttributeError):
        return str(err.reason)


class KubeClient:
    """A thin async client on dicts; every method raises :class:`KubeError` on failure."""

    def __init__(self, api: client.ApiClient) -> None:
        self._api = api
        self.calls: collections.Counter[str] = collections.Counter()
        self._discovery: dict[str, tuple[float, frozenset[str]]] = {}

    @classmethod
    async def connect(cls, *, url: str | None = None) -> KubeClient:
        """A client for ``url`` (tests, the benchmark) or else in-cluster/kubeconfig credentials."""
        if url:
            cfg = client.Configuration(host=url.rstrip("/"))
            cfg.verify_ssl = False
            return cls(client.ApiClient(cfg))
        cfg = client.Configuration()
        try:
            config.load_incluster_config(client_configuration=cfg)  # type: ignore[no-untyped-call]
        except config.ConfigException:
            await config.load_kube_config(client_configuration=cfg)
        return cls(client.ApiClient(cfg))

    async def close(self) -> None:
        await self._api.close()

    @property
    def writes(self) -> int:
        """Calls that changed something (create, patch, delete)."""
        return self.calls["create"] + self.calls["patch"] + self.calls["delete"]

    async def _call(
        self,
        verb: str,
        method: str,
        path: str,
        *,
        query: list[tuple[str, str]] | None = None,
        body: Any = None,
        content_type: str = "application/json",
    ) -> Any:
        self.calls[verb] += 1
        try:
            return await self._api.call_api(
                path,
                method,
                query_params=query or [],
                header_params={"Accept": "application/json", "Content-Type": content_type},
                body=body,
                response_types_map={200: "object", 201: "object", 202: "object"},
                auth_settings=["BearerToken"],
                _return_http_data_only=True,
                _request_timeout=30,
            )
        except ApiException as err:
            raise KubeError(
                f"{method} {path}: {err.status} {_reason(err)}",
                status=err.status or 0,
                reason=_reason(err),
            ) from None
        except (OSError, TimeoutError, aiohttp.ClientError) as err:
            raise KubeError(f"{method} {path}: {err!r}") from None
        except (RuntimeError, AssertionError) as err:
            # aiohttp, when the session is closed under an in-flight call (operator shutdown).
            raise KubeError(f"{method} {path}: client closed ({err!r})") from None

    async def get(self, api_version: str, plural: str, namespace: str, name: str) -> dict[str, Any] | None:
        """The object, or None when it does not exist."""
        try:
            obj = await self._call("get", "GET", resource_path(api_version, plural, namespace, name))
        except KubeError as err:
            if err.status == 404:
                return None
            raise
        return dict(obj or {})

    async def list(
        self,
        api_version: str,
        plural: str,
        namespace: str,
        *,
        labels: Mapping[str, str] | None = None,
    ) -> list[dict[str, Any]]:
        """Objects in a namespace whose labels include ``labels`` (also checked here)."""
        selector = ",".join(f"{k}={v}" for k, v in (labels or {}).items())
        query = [("labelSelector", selector)] if selector else []
        result = await self._call("list", "GET", resource_path(api_version, plural, namespace), query=query)
        items = (result or {}).get("items") or []
        wanted = dict(labels or {})
        return [
            item for item in items
            if isinstance(item, dict)
            and wanted.items() <= ((item.get("metadata") or {}).get("labels") or {}).items()
        ]  # fmt: skip

    async def create(self, api_version: str, plural: str, namespace: str, body: Mapping[str, Any]) -> dict[str, Any]:
        path = resource_path(api_version, plural, namespace)
        return dict(await self._call("create", "POST", path, query=[("fieldManager", FIELD_MANAGER)], body=body) or {})

    async def patch(
        self, api_version: str, plural: str, namespace: str, name: str, body: Mapping[str, Any]
    ) -> dict[str, Any]:
        """A JSON merge patch (RFC 7386): dicts merge, lists and scalars replace, null removes."""
        path = resource_path(api_version, plural, namespace, name)
        query = [("fieldManager", FIELD_MANAGER)]
        return dict(await self._call("patch", "PATCH", path, query=query, body=body, content_type=MERGE_PATCH) or {})

    async def delete(self, api_version: str, plural: str, namespace: str, name: str) -> bool:
        """Delete the object (its dependents in the background); False when it did not exist."""
        try:
            await self._call("delete", "DELETE", resource_path(api_version, plural, namespace, name))
        except KubeError as err:
            if err.status == 404:
                return False
            raise
        return True

    async def has_resource(self, api_version: str, plural: str) -> bool:
        """Whether the API serves ``plural`` in ``api_version`` (cached for a few minutes)."""
        now = time.monotonic()
        cached = self._discovery.get(api_version)
        if cached is None or now - cached[0] > _DISCOVERY_TTL_S:
            base = "/api/v1" if api_version == "v1" else f"/apis/{api_version}"
            try:
                found = await self._call("discovery", "GET", base)
                names = frozenset(str(r.get("name")) for r in (found or {}).get("resources", []))
            except KubeError as err:
                if err.status not in (404, 503):
                    raise
                names = frozenset()
            cached = self._discovery[api_version] = (now, names)
        return plural in cached[1]
