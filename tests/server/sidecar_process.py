"""``accelgen serve`` as a separate process on loopback (for load tests: own GIL, real CLI)."""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

import httpx
import yaml
from sidecar_harness import TIERS_CONFIG

from accelgen.server.launch import free_port


class ServeProcess:
    """``accelgen serve --engine sim`` with the test tiers; ``stop()`` ends it."""

    def __init__(self, tmp: Path, *flags: str) -> None:
        tiers = tmp / "tiers.yaml"
        tiers.write_text(yaml.safe_dump(TIERS_CONFIG))
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "accelgen.cli",
                "serve",
                "--engine",
                "sim",
                "--host",
                "127.0.0.1",
                "--port",
                str(self.port),
                "--tiers",
                str(tiers),
                "--log-level",
                "WARNING",
                *flags,
            ],
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            try:
                if httpx.get(self.url + "/readyz", timeout=1).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            if self.proc.poll() is not None:
                break
            time.sleep(0.1)
        self.stop()
        raise RuntimeError(f"accelgen serve did not become ready: {self.output}")

    output: str = ""

    def rss_bytes(self) -> int:
        for line in Path(f"/proc/{self.proc.pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
        return 0

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
        try:
            out, _ = self.proc.communicate(timeout=15)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            out, _ = self.proc.communicate()
        self.output = out or ""
