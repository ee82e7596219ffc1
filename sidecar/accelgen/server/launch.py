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
    model: LatencyModel, config: SimEngineConfig, *, tiers: TierSet, socket_path: Path, stats_path: Path | None = None
) -> web.AppRunner:
    """The sim engine of this process, on the Unix socket ``socket_path``: its runner.

    A socket (in a directory only this user may enter) and no TCP port: only the
    sidecar reaches the engine, which checks no key. ``tiers``: the sidecar's, which the
    engine's policy plans for. ``stats_path``: where the sim engine writes its in-engine
    stats file, if anywhere.
    """
    app = build_sim_app(model, config, tiers=tiers, stats_path=stats_path)
    runner = web.AppRunner(app, handler_cancellation=True, access_log=None)
    await runner.setup()
    await web.UnixSite(runner, str(socket_path)).start()
    socket_path.chmod(0o600)
    return runner
