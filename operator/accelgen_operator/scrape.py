"""Read ``GET /stats`` from each ready pod's sidecar; a pod that fails is counted, not fatal.

An answer is parsed as :class:`accelgen.wire.SidecarStats`, its one reader.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import aiohttp

from accelgen_operator.status import PodStats, StatsError, parse_pod_stats

_MAX_BODY_BYTES = 1 << 20
_CONCURRENCY = 32


def is_pod_ready(pod: Mapping[str, Any]) -> bool:
    """Running, not terminating, with an IP and the Ready condition true."""
    meta, status = pod.get("metadata") or {}, pod.get("status") or {}
    if meta.get("deletionTimestamp") or not status.get("podIP") or status.get("phase") != "Running":
        return False
    return any(c.get("type") == "Ready" and c.get("status") == "True" for c in status.get("conditions") or [])


def stats_url(pod: Mapping[str, Any]) -> str | None:
    """``http://<podIP>:<sidecar http port>/stats``; the port comes from the pod spec."""
    ip = (pod.get("status") or {}).get("podIP")
    for container in (pod.get("spec") or {}).get("containers") or []:
        if container.get("name") != "sidecar":
            continue
        for port in container.get("ports") or []:
            if port.get("name") == "http" and isinstance(port.get("containerPort"), int):
                host = f"[{ip}]" if ":" in str(ip) else ip
                return f"http://{host}:{port['containerPort']}/stats"
    return None


@dataclass(frozen=True, slots=True)
class ScrapeResult:
    stats: tuple[PodStats, ...]
    failures: dict[str, str]  # pod name → why


async def _fetch(session: aiohttp.ClientSession, url: str) -> PodStats:
    async with session.get(url) as resp:
        if resp.status != 200:
            raise StatsError(f"HTTP {resp.status}")
        body = await resp.content.read(_MAX_BODY_BYTES + 1)
        if len(body) > _MAX_BODY_BYTES:
            raise StatsError("answer larger than 1 MiB")
        try:
            raw = json.loads(body)
        except ValueError as err:
            raise StatsError(f"not JSON: {err}") from None
        return parse_pod_stats(raw)


async def scrape(
    session: aiohttp.ClientSession, pods: Sequence[Mapping[str, Any]], *, timeout_s: float
) -> ScrapeResult:
    """Fetch every ready pod's /stats concurrently, each within ``timeout_s``."""
    limit = asyncio.Semaphore(_CONCURRENCY)
    stats: list[PodStats] = []
    failures: dict[str, str] = {}

    async def one(pod: Mapping[str, Any]) -> None:
        name = str((pod.get("metadata") or {}).get("name"))
        url = stats_url(pod)
        if url is None:
            failures[name] = "no sidecar port named http"
            return
        async with limit:
            try:
                stats.append(await asyncio.wait_for(_fetch(session, url), timeout_s))
            except TimeoutError:
                failures[name] = f"no answer within {timeout_s:g} s"
            except (aiohttp.ClientError, OSError, StatsError) as err:
                failures[name] = str(err) or type(err).__name__

    await asyncio.gather(*(one(p) for p in pods if is_pod_ready(p)))
    return ScrapeResult(stats=tuple(stats), failures=failures)
