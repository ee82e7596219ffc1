"""``accelgen serve`` as a separate process on loopback (real CLI, its own GIL)."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import httpx
import yaml
from sidecar_harness import TIERS_CONFIG

from accelgen.server.launch import free_port


class ServeProcess:
    """``accelgen serve`` (default ``--engine sim``) with the test tiers; ``stop()`` ends it.

    Its output (and an embedded vLLM's) goes to ``tmp/serve.log``, never to a pipe that
    could fill up and stall it.
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
        cmd = [
            sys.executable,
            "-m",
            "accelgen.cli",
            "serve",
            *engine,
            "--host",
            "127.0.0.1",
            "--port",
            str(self.port),
            "--tiers",
            str(tiers),
            "--log-level",
            "WARNING",
            *flags,
        ]
        with self.log_path.open("w") as log:
            self.proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env={**os.environ, **(env or {})})
        deadline = time.monotonic() + start_timeout_s
        while time.monotonic() < deadline and self.proc.poll() is None:
            try:
                if httpx.get(self.url + "/readyz", timeout=1).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.2)
        self.stop()
        raise RuntimeError(f"accelgen serve did not become ready:\n{self.output[-4000:]}")

    @property
    def output(self) -> str:
        return self.log_path.read_text(errors="replace")

    def rss_bytes(self) -> int:
        for line in Path(f"/proc/{self.proc.pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
        return 0

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
        try:
            self.proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
