"""Starting the in-process sim engine the sidecar fronts with ``--engine sim``.

vLLM itself, the other engine ``accelgen serve`` can start, is a child process built by
:func:`accelgen.launch.embedded_config` and run by :class:`accelgen.launch.VllmServer`.
"""

from __future__ import annotations

from pathlib import Path

from aiohttp import web

from accelgen.core.latency import LatencyModel
from accelgen.core.tiers import TierSet
from accelgen.sim.http import build_sim_app
from accelgen.sim.realtime import SimEngineConfig


async def start_sim(
    model: LatencyModel, config: SimEngineConfig, *, tiers: TierSet, stats_path: Path | None = None
) -> tuple[str, web.AppRunner]:
    """The sim engine on an ephemeral loopback port of this process: (url, runner).

    ``tiers``: the sidecar's, which the engine's policy plans for. ``stats_path``: where
    the sim engine writes its in-engine stats file, if anywhere.
    """
    app = build_sim_app(model, config, tiers=tiers, stats_path=stats_path)
    runner = web.AppRunner(app, handler_cancellation=True, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = runner.addresses[0][1]
    return f"http://127.0.0.1:{port}", runner
