"""The aiohttp application: routes, the error middleware and the background tasks.

Every error leaves as the OpenAI error JSON shape, whatever raised it (our checks,
aiohttp's 404/405/413, or a bug: a 500 that is logged with its traceback). A 405
carries ``Allow``. What each route requires when keys are configured: the generation
routes and ``/v1/models`` a key; ``/stats`` a key unless ``open_stats``; ``/healthz``,
``/readyz``, ``/metrics``, ``/pool/state`` and ``/openapi.json`` none (probes, scrapers
and the gateway's endpoint picker inside the pod's network; none of them tells a secret).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from importlib import resources

from aiohttp import web
from prometheus_client import generate_latest

from accelgen.server.errors import ApiError, error_body
from accelgen.server.intake import MAX_BODY_BYTES
from accelgen.server.listen import count_protocol_error, request_finished, request_started
from accelgen.server.pod_state import pod_state, with_pod_counts
from accelgen.server.proxy import StreamFailed, generate
from accelgen.server.reload import TierReloader
from accelgen.server.state import Sidecar
from accelgen.wire import EngineView, SidecarStats

log = logging.getLogger("accelgen.server")
SIDECAR = web.AppKey("sidecar", Sidecar)
_Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


@web.middleware
async def _errors(request: web.Request, handler: _Handler) -> web.StreamResponse:
    request_started(request)  # the head is in: the header timeout no longer applies
    try:
        return await _answer(request, handler)
    finally:
        request_finished(request)


async def _answer(request: web.Request, handler: _Handler) -> web.StreamResponse:
    try:
        return await handler(request)
    except ApiError as err:
        response = web.json_response(err.body(), status=err.status, headers=err.headers())
        if err.status == 408:  # a client too slow to send its body: answer, then hang up
            count_protocol_error(request, "body_timeout")
            response.force_close()
            await response.prepare(request)
            await response.write_eof()
            request.protocol.force_close()
        return response
    except StreamFailed as failed:
        return failed.response
    except web.HTTPException as exc:
        if exc.status < 400:
            raise
        message = exc.reason if exc.status != 404 else f"no route {request.method} {request.path}"
        headers = {"Allow": exc.headers["Allow"]} if "Allow" in exc.headers else None
        return web.json_response(error_body(exc.status, message), status=exc.status, headers=headers)
    except (asyncio.CancelledError, ConnectionResetError):
        raise
    except Exception:
        log.exception("unexpected error on %s %s", request.method, request.path)
        return web.json_response(error_body(500, "internal error in the sidecar"), status=500)


def _openapi() -> dict[str, object]:
    text = resources.files("accelgen.server").joinpath("openapi.json").read_text("utf-8")
    doc: dict[str, object] = json.loads(text)
    return doc


def build_app(sidecar: Sidecar, *, tiers_path: str | None = None) -> web.Application:
    """The sidecar's web application; its background tasks start and stop with it."""
    app = web.Application(middlewares=[_errors], client_max_size=MAX_BODY_BYTES)
    app[SIDECAR] = sidecar
    openapi = _openapi()

    async def completions(request: web.Request) -> web.StreamResponse:
        return await generate(request, sidecar, chat=False)

    async def chat(request: web.Request) -> web.StreamResponse:
        return await generate(request, sidecar, chat=True)

    async def openapi_doc(_: web.Request) -> web.Response:
        return web.json_response(openapi)

    app.router.add_post("/v1/completions", completions)
    app.router.add_post("/v1/chat/completions", chat)
    app.router.add_get("/v1/models", _models)
    app.router.add_get("/healthz", _healthz)
    app.router.add_get("/readyz", _readyz)
    app.router.add_get("/metrics", _metrics)
    app.router.add_get("/stats", _stats)
    app.router.add_get("/pool/state", _pool_state)
    app.router.add_get("/openapi.json", openapi_doc)
    app.cleanup_ctx.append(_background(sidecar, tiers_path))
    return app


async def _models(request: web.Request) -> web.Response:
    """``GET /v1/models``: the engine's answer, for a client with a valid key."""
    sidecar = request.app[SIDECAR]
    sidecar.authenticate(request.headers.get("Authorization"))
    try:
        return web.json_response(await sidecar.engine.get_json("/v1/models"))
    except Exception as err:  # any engine failure is the same answer to the client
        raise ApiError(
            503,
            f"engine unavailable: {type(err).__name__}",
            code="engine_unavailable",
            retry_after_s=1.0,
        ) from None


async def _healthz(_: web.Request) -> web.Response:
    """``GET /healthz``: the sidecar answers."""
    return web.json_response({"status": "ok"})


async def _readyz(request: web.Request) -> web.Response:
    """``GET /readyz``: 200 while the engine is ready, else 503 with why."""
    state = request.app[SIDECAR].engine.state
    if state.ready:
        return web.json_response({"ready": True})
    return web.json_response({**error_body(503, state.error or "engine not ready"), "ready": False}, status=503)


async def _metrics(request: web.Request) -> web.Response:
    """``GET /metrics``: the sidecar's metrics, then the engine's ``vllm:*`` page as last read,
    its waiting and running counts the pod's (:func:`with_pod_counts`)."""
    sidecar = request.app[SIDECAR]
    pod = sidecar.refresh_gauges()
    # vLLM's waiting/running series count the pod as the sidecar sees it (pod_state).
    vllm = with_pod_counts(sidecar.engine.state.vllm_text, waiting=int(pod["waiting"]), running=int(pod["running"]))
    body = generate_latest(sidecar.metrics.registry) + vllm.encode()
    return web.Response(body=body, headers={"Content-Type": "text/plain; version=0.0.4"})


async def _pool_state(request: web.Request) -> web.Response:
    """``GET /pool/state``: the pod for an endpoint picker (:func:`pod_state`), open as /metrics."""
    return web.json_response(pod_state(request.app[SIDECAR], time.monotonic()))


async def _stats(request: web.Request) -> web.Response:
    """``GET /stats``: this pod's window per tier and the engine as seen (:class:`SidecarStats`).

    Behind the key when keys are configured, unless the sidecar runs with ``open_stats``.
    """
    sidecar = request.app[SIDECAR]
    if not sidecar.config.open_stats:
        sidecar.authenticate(request.headers.get("Authorization"))
    state = sidecar.engine.state
    snapshot = SidecarStats(
        pool=sidecar.config.pool,
        window_s=sidecar.stats.window_s,
        tiers=tuple(sidecar.stats.snapshot([t.name for t in sidecar.tiers], time.monotonic())),
        engine=EngineView(ready=state.ready, running=state.running, waiting=state.waiting, kv_usage=state.kv_usage),
    )
    return web.json_response(snapshot.to_json())


def _background(sidecar: Sidecar, tiers_path: str | None) -> Callable[[web.Application], AsyncIterator[None]]:
    async def run(_: web.Application) -> AsyncIterator[None]:
        tasks = [
            asyncio.create_task(sidecar.engine.monitor(sidecar.config.poll_interval_s, sidecar.engine_updated)),
            asyncio.create_task(_tick(sidecar)),
            asyncio.create_task(_watch_loop_lag(sidecar)),
        ]
        if tiers_path is not None:
            reloader = TierReloader(tiers_path, sidecar.set_tiers)
            reloader.install_sighup(asyncio.get_running_loop())
            tasks.append(asyncio.create_task(reloader.watch()))
        yield
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        await sidecar.engine.close()

    return run


async def _tick(sidecar: Sidecar, interval_s: float = 0.02) -> None:
    """Shed queued requests whose deadline passed even when nothing else happens.

    Idle while nothing is queued (most of the time), so it costs nothing then.
    """
    admission = sidecar.admission
    while True:
        await admission.nonempty.wait()
        await asyncio.sleep(interval_s)
        admission.pump()
        if not admission.queued():
            admission.nonempty.clear()


async def _watch_loop_lag(sidecar: Sidecar, interval_s: float = 0.25, warn_s: float = 1.0) -> None:
    """Observe how late a periodic sleep wakes up (``accelgen_event_loop_lag_seconds``).

    A late wake-up delays every request in the sidecar by as much: a handler that
    blocks the loop, or a process starved of CPU (a busy-waiting CPU engine beside it
    on a small machine). A lag over ``warn_s`` is logged, since it is the cause of
    otherwise puzzling timeouts.
    """
    histogram = sidecar.metrics.loop_lag
    if sidecar.metrics.pool:
        histogram = histogram.labels(pool=sidecar.metrics.pool)
    loop = asyncio.get_running_loop()
    while True:
        due = loop.time() + interval_s
        await asyncio.sleep(interval_s)
        lag = max(0.0, loop.time() - due)
        histogram.observe(lag)
        if lag >= warn_s:
            log.warning("event loop ran %.2f s late: every request here was delayed as long", lag)
