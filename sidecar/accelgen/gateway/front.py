"""The pool's one user-facing port on a machine without a gateway: Envoy's part, played locally.

In a cluster the gateway (Envoy) asks the endpoint picker where each request goes and
carries it there; here this aiohttp proxy does both, asking the same :class:`Placer`
(the same router, the same pod state) in-process::

    client ─► front ─► Placer.place(RouteRequest) ─► 200: stream to/from that sidecar
                                                    └► 429 / 503: the JSON error itself

Routes: the OpenAI generation routes and ``/v1/models`` (forwarded, streaming, headers
as sent but hop-by-hop ones); ``GET /stats``: the pool's window per tier, every
replica's ``/stats`` added up (:func:`accelgen.core.summary.merge`: counts summed, p99s
the worst replica's), in the sidecar's own ``/stats`` format, with each replica's
document under ``replicas``; ``GET /metrics``: the pool's per-tier goodput, attainment
and throughput and the router's outcomes and decision time; ``/healthz``, ``/readyz``.
"""

from __future__ import annotations

import asyncio
import statistics
import time
from collections.abc import Sequence
from typing import Any

import aiohttp
from aiohttp import web
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

from accelgen.core.summary import TierSummary, merge
from accelgen.core.tier_headers import TierHeaderError
from accelgen.core.tiers import TierSet
from accelgen.gateway.intake import error_json, route_request
from accelgen.gateway.placement import ROUTED, Placement, Placer
from accelgen.wire import EngineView, SidecarStats, WireError

MAX_BODY_BYTES = 4 << 20  # the sidecar's own limit; it answers what is larger
_HOP_BY_HOP = frozenset(
    {"connection", "keep-alive", "proxy-authenticate", "proxy-authorization", "te", "trailer", "trailers"}
    | {"transfer-encoding", "upgrade", "host", "content-length"}
)
PLACER: web.AppKey[Placer] = web.AppKey("placer", Placer)
TIERS: web.AppKey[TierSet] = web.AppKey("tiers", TierSet)
CLIENT: web.AppKey[aiohttp.ClientSession] = web.AppKey("client", aiohttp.ClientSession)
POOL: web.AppKey[str] = web.AppKey("pool", str)


def _error(status: int, message: str, *, code: str, retry_after_s: float | None = None) -> web.Response:
    headers = {"Retry-After": str(max(1, round(retry_after_s)))} if retry_after_s is not None else {}
    return web.Response(
        status=status, body=error_json(status, message, code=code), content_type="application/json", headers=headers
    )


def _refusal(placement: Placement) -> web.Response:
    code = "shed" if placement.status == 429 else "no_ready_endpoint"
    return _error(placement.status, placement.reason, code=code, retry_after_s=placement.retry_after_s)


async def _generate(request: web.Request) -> web.StreamResponse:
    """A generation request: place it, then carry it to the chosen sidecar and its answer back."""
    placer = request.app[PLACER]
    body = await request.read()
    headers = {k.lower(): v for k, v in request.headers.items()}
    try:
        route = route_request(headers, body, request.app[TIERS], now=placer.clock())
    except TierHeaderError as err:
        return _error(400, err.message, code=err.code)
    placement = await placer.place(route)
    if placement.status != ROUTED or placement.address is None:
        return _refusal(placement)
    return await _forward(request, placement.address, body)


async def _forward(request: web.Request, address: str, body: bytes) -> web.StreamResponse:
    """``request`` sent on to ``address``; its answer streamed back as it comes."""
    client = request.app[CLIENT]
    headers = {k: v for k, v in request.headers.items() if k.lower() not in _HOP_BY_HOP}
    url = f"http://{address}{request.rel_url}"
    response: web.StreamResponse | None = None
    try:
        async with client.request(request.method, url, headers=headers, data=body or None) as upstream:
            response = web.StreamResponse(status=upstream.status)
            for key, value in upstream.headers.items():
                if key.lower() not in _HOP_BY_HOP:
                    response.headers.add(key, value)
            await response.prepare(request)
            async for chunk in upstream.content.iter_any():
                await response.write(chunk)
            await response.write_eof()
            return response
    except (aiohttp.ClientError, TimeoutError) as err:
        if response is not None and response.prepared:
            raise  # cut mid-answer: the client sees the stream end early, as from the replica itself
        return _error(502, f"replica {address} failed: {type(err).__name__}", code="replica_error")


async def _models(request: web.Request) -> web.StreamResponse:
    ready = [p for p in request.app[PLACER].watcher.pods if p.ready]
    if not ready:
        return _error(503, "no ready replica", code="no_ready_endpoint", retry_after_s=1.0)
    return await _forward(request, ready[0].address, b"")


async def _replica_stats(client: aiohttp.ClientSession, address: str) -> tuple[str, SidecarStats | None, str]:
    try:
        async with client.get(f"http://{address}/stats", timeout=aiohttp.ClientTimeout(total=2.0)) as resp:
            if resp.status != 200:
                return address, None, f"HTTP {resp.status}"
            return address, SidecarStats.from_json(await resp.json(content_type=None)), ""
    except (aiohttp.ClientError, TimeoutError, ValueError, WireError) as err:
        return address, None, str(err) or type(err).__name__


async def pool_stats(client: aiohttp.ClientSession, addresses: Sequence[str], pool: str | None) -> dict[str, Any]:
    """Every replica's ``/stats`` and their sum, as the pool's ``/stats`` document."""
    found = await asyncio.gather(*(_replica_stats(client, a) for a in addresses))
    parts = [stats for _, stats, _ in found if stats is not None]
    names = list(dict.fromkeys(t.name for s in parts for t in s.tiers))
    tiers: list[TierSummary] = [merge(n, (t for s in parts for t in s.tiers if t.name == n)) for n in names]
    engine = EngineView(
        ready=any(s.engine.ready for s in parts),
        running=sum(s.engine.running for s in parts),
        waiting=sum(s.engine.waiting for s in parts),
        kv_usage=statistics.fmean(s.engine.kv_usage for s in parts) if parts else 0.0,
    )
    window_s = max((s.window_s for s in parts), default=60)
    doc = SidecarStats(pool=pool, window_s=window_s, tiers=tuple(tiers), engine=engine).to_json()
    doc["replicas"] = [
        {"address": a, "stats": s.to_json() if s else None, **({"error": e} if e else {})} for a, s, e in found
    ]
    return doc


async def _stats(request: web.Request) -> web.Response:
    placer = request.app[PLACER]
    doc = await pool_stats(request.app[CLIENT], [p.address for p in placer.watcher.pods], request.app[POOL] or None)
    doc["routing"] = {"policy": placer.router.name, "held": placer.num_held, **_outcomes(placer)}
    return web.json_response(doc)


def _outcomes(placer: Placer) -> dict[str, Any]:
    by_outcome: dict[str, int] = {}
    by_pod: dict[str, int] = {}
    for (outcome, pod), count in placer.outcomes.items():
        by_outcome[outcome] = by_outcome.get(outcome, 0) + count
        if pod:
            by_pod[pod] = by_pod.get(pod, 0) + count
    return {"outcomes": by_outcome, "routed_by_replica": by_pod}


class _PoolCollector:
    """The pool's figures at one scrape, as Prometheus families."""

    def __init__(self, placer: Placer, stats: dict[str, Any]) -> None:
        self.placer = placer
        self.stats = stats

    def collect(self) -> Any:
        per_tier = {
            "goodput_rps": "requests per second that met their SLO, summed over replicas",
            "attainment": "fraction of judged requests that met their SLO, over replicas",
            "throughput_rps": "completed requests per second, summed over replicas",
        }
        for key, text in per_tier.items():
            family = GaugeMetricFamily(f"accelgen_pool_{key}", f"The pool's last window: {text}", labels=["tier"])
            for tier in self.stats["tiers"]:
                family.add_metric([tier["name"]], float(tier[key]))
            yield family
        what = "Requests the pool's router answered, by outcome and replica"
        requests = CounterMetricFamily("accelgen_pool_requests", what, labels=["outcome", "pod"])
        for (outcome, pod), count in sorted(self.placer.outcomes.items()):
            requests.add_metric([outcome, pod], float(count))
        yield requests
        pods = self.placer.watcher.pods
        ready = GaugeMetricFamily("accelgen_pool_replicas", "Replicas of the pool by readiness", labels=["state"])
        ready.add_metric(["ready"], float(sum(p.ready for p in pods)))
        ready.add_metric(["not_ready"], float(sum(not p.ready for p in pods)))
        yield ready
        held = self.placer.num_held
        yield GaugeMetricFamily("accelgen_pool_held_requests", "Requests held at the router", value=held)
        decision = GaugeMetricFamily(
            "accelgen_pool_decision_seconds", "The router's time per decision, recent", labels=["stat"]
        )
        times = sorted(self.placer.decision_s)
        if times:
            decision.add_metric(["median"], times[len(times) // 2])
            decision.add_metric(["p99"], times[min(len(times) - 1, int(0.99 * len(times)))])
        yield decision


async def _metrics(request: web.Request) -> web.Response:
    placer = request.app[PLACER]
    stats = await pool_stats(request.app[CLIENT], [p.address for p in placer.watcher.pods], None)
    registry = CollectorRegistry(auto_describe=False)
    registry.register(_PoolCollector(placer, stats))
    return web.Response(body=generate_latest(registry), headers={"Content-Type": "text/plain; version=0.0.4"})


async def _healthz(_: web.Request) -> web.Response:
    return web.json_response({"status": "ok"})


async def _readyz(request: web.Request) -> web.Response:
    ready = sum(p.ready for p in request.app[PLACER].watcher.pods)
    if ready:
        return web.json_response({"ready": True, "ready_replicas": ready})
    return web.Response(
        status=503, body=error_json(503, "no ready replica", code="no_ready_endpoint"), content_type="application/json"
    )


def build_front(placer: Placer, tiers: TierSet, *, pool: str | None = None) -> web.Application:
    """The front's app over ``placer``'s pods; it refreshes them while it runs."""
    app = web.Application(client_max_size=MAX_BODY_BYTES + 1024)
    app[PLACER], app[TIERS], app[POOL] = placer, tiers, pool or ""
    app.router.add_post("/v1/completions", _generate)
    app.router.add_post("/v1/chat/completions", _generate)
    app.router.add_get("/v1/models", _models)
    app.router.add_get("/stats", _stats)
    app.router.add_get("/metrics", _metrics)
    app.router.add_get("/healthz", _healthz)
    app.router.add_get("/readyz", _readyz)
    app.cleanup_ctx.append(_lifetime)
    return app


async def _lifetime(app: web.Application) -> Any:
    connector = aiohttp.TCPConnector(limit=0)
    timeout = aiohttp.ClientTimeout(total=None, sock_connect=10.0)
    app[CLIENT] = aiohttp.ClientSession(connector=connector, timeout=timeout, auto_decompress=False)
    placer = app[PLACER]
    refresher = asyncio.create_task(placer.watcher.run())
    started = time.monotonic()
    while not placer.watcher.num_refreshes and time.monotonic() - started < 5.0:
        await asyncio.sleep(0.01)
    yield
    refresher.cancel()
    await asyncio.gather(refresher, return_exceptions=True)
    await placer.close()
    await app[CLIENT].close()
