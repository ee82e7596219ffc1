"""Starting the engine the sidecar fronts: the in-process sim engine, or vLLM itself.

The embedded vLLM is a subprocess of ``python -m vllm.entrypoints.openai.api_server``
(the ``vllm`` console script is broken in the CPU wheel) with AccelGen's scheduler, on
loopback, with random weights (``--load-format dummy``) of the tiny model unless
``--model`` names a directory. It is stopped when the sidecar stops.
"""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import socket
import subprocess
import sys
from pathlib import Path

import aiohttp
from aiohttp import web

from accelgen.core.latency import LatencyModel
from accelgen.server.sim_engine import SimEngineConfig
from accelgen.server.sim_server import build_sim_app
from accelgen.vllm.launch import ENGINE_PROCESS_GROUP

log = logging.getLogger("accelgen.server")
TINY_MODEL_DIR = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "accelgen" / "tiny-model"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


async def start_sim(
    model: LatencyModel, config: SimEngineConfig, *, stats_path: Path | None = None
) -> tuple[str, web.AppRunner]:
    """The sim engine on an ephemeral loopback port of this process: (url, runner).

    ``stats_path``: where the sim engine writes its in-engine stats file, if anywhere.
    """
    app = build_sim_app(model, config, stats_path=stats_path)
    runner = web.AppRunner(app, handler_cancellation=True, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = runner.addresses[0][1]
    return f"http://127.0.0.1:{port}", runner


async def wait_http_ok(url: str, *, timeout_s: float, process: subprocess.Popen[bytes] | None = None) -> None:
    """Return once ``GET url`` answers 200; RuntimeError if ``process`` exits or time runs out."""
    deadline = asyncio.get_running_loop().time() + timeout_s
    async with aiohttp.ClientSession() as session:
        while asyncio.get_running_loop().time() < deadline:
            if process is not None and process.poll() is not None:
                raise RuntimeError(f"the process behind {url} exited ({process.returncode})")
            try:
                async with session.get(url) as resp:
                    if resp.status == 200:
                        return
            except aiohttp.ClientError:
                pass
            await asyncio.sleep(0.25)
    raise RuntimeError(f"{url} did not answer 200 within {timeout_s:.0f}s")


def ensure_tiny_model(directory: Path = TINY_MODEL_DIR) -> Path:
    """Create the tiny model once (``accelgen model tiny DIR``); reuse it afterwards."""
    if not (directory / "config.json").exists():
        log.info("creating the tiny model in %s", directory)
        subprocess.run([sys.executable, "-m", "accelgen.cli", "model", "tiny", str(directory)], check=True)
    return directory


# For the tiny model on CPU: a fixed KV size skips the CPU worker's check that most of
# the machine's memory is free (it fails on a shared machine); eager mode starts faster.
TINY_MODEL_ARGS = [
    "--served-model-name",
    "tiny",
    "--max-model-len",
    "4096",
    "--kv-cache-memory-bytes",
    str(256 << 20),
    "--enforce-eager",
]


class VllmProcess:
    """vLLM's OpenAI server with AccelGen's scheduler, as a child process."""

    def __init__(
        self,
        model_dir: Path,
        *,
        port: int,
        tiers_path: str | None,
        extra_args: list[str],
        env: dict[str, str] | None = None,
        log_path: Path | None = None,
    ) -> None:
        self.url = f"http://127.0.0.1:{port}"
        cmd = [
            sys.executable,
            "-m",
            "vllm.entrypoints.openai.api_server",
            "--model",
            str(model_dir),
            "--load-format",
            "dummy",
            "--scheduler-cls",
            "accelgen.vllm.AccelGenScheduler",
            "--port",
            str(port),
            "--host",
            "127.0.0.1",
            "--disable-uvicorn-access-log",  # it would log every poll of /metrics
            *extra_args,
        ]
        child_env = {**os.environ, **(env or {})}
        if tiers_path:
            child_env["ACCELGEN_TIERS"] = str(Path(tiers_path).resolve())
        log.info("starting vLLM: %s", " ".join(cmd))
        out = log_path.open("w") if log_path else None
        # Own process group, so stopping it also stops vLLM's engine-core child; not its
        # own session (see accelgen.vllm.launch.ENGINE_PROCESS_GROUP).
        self.proc = subprocess.Popen(
            cmd,
            env=child_env,
            **ENGINE_PROCESS_GROUP,
            stdout=out,
            stderr=subprocess.STDOUT if out else None,
        )

    async def wait_ready(self, timeout_s: float = 300.0) -> None:
        """Return when ``/health`` answers 200; RuntimeError if vLLM exits or times out."""
        await wait_http_ok(self.url + "/health", timeout_s=timeout_s, process=self.proc)

    def stop(self) -> None:
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait()
