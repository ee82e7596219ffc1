"""``accelgen serve`` as a separate process on loopback (real CLI, its own GIL)."""

from __future__ import annotations

import os
from pathlib import Path

import yaml

from accelgen.launch import serve_command
from accelgen.process import ChildProcess, free_port
from tests.support.sidecar import TIERS_CONFIG


class ServeProcess:
    """``accelgen serve`` (default ``--engine sim``) with the test tiers; ``stop()`` ends it.

    Its output (and an embedded vLLM's) goes to ``tmp/serve.log``, never to a pipe that
    could fill up and stall it. Starting raises :class:`accelgen.process.StartError`, with
    that log's tail, when it exits or is not ready in time.
    """

    def __init__(
        self,
        tmp: Path,
        *flags: str,
        engine: tuple[str, ...] = ("--engine", "sim"),
        env: dict[str, str] | None = None,
        start_timeout_s: float = 30.0,
    ) -> None:
        tiers = tmp / "tiers.yaml"
        tiers.write_text(yaml.safe_dump(TIERS_CONFIG))
        self.log_path = tmp / "serve.log"
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.proc = ChildProcess(
            serve_command(*flags, port=self.port, engine=engine, tiers_file=tiers),
            name="accelgen serve",
            env={**os.environ, **(env or {})},
            log_file=self.log_path,
            stop_grace_s=30.0,
        )
        self.proc.wait_ready(self.url + "/readyz", timeout_s=start_timeout_s)

    @property
    def output(self) -> str:
        return self.log_path.read_text(errors="replace")

    def rss_bytes(self) -> int:
        for line in Path(f"/proc/{self.proc.pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
        return 0

    def stop(self) -> None:
        self.proc.stop()
