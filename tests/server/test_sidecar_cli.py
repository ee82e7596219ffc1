"""``accelgen serve`` as a user runs it: bad files, the printed curl line, tier reloads."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import threading
from pathlib import Path

import httpx
import yaml

from accelgen.launch import serve_command
from accelgen.process import free_port
from tests.support.serve_process import ServeProcess
from tests.support.sidecar import TIERS_CONFIG, wait_for


def _serve(*flags: str) -> subprocess.CompletedProcess[str]:
    """``accelgen serve --engine sim FLAGS`` run to its end (it fails before serving)."""
    return subprocess.run(
        serve_command(*flags, port=free_port(), log_level=None),
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_bad_tiers_file_is_exit_2_with_one_clear_line(tmp_path: Path) -> None:
    bad = tmp_path / "tiers.yaml"
    bad.write_text("tiers:\n  - {name: a, ttft_ms: -1, tbt_ms: 10}\ndefault_tier: a\n")
    result = _serve("--tiers", str(bad))
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("accelgen: error:")
    assert str(bad) in lines[0] and "ttft_ms" in lines[0]
    missing = _serve("--keys", str(tmp_path / "nope.yaml"))
    assert missing.returncode == 2 and "file not found" in missing.stderr


def test_printed_curl_line_works_as_printed(tmp_path: Path) -> None:
    server = ServeProcess(tmp_path)
    try:
        lines = server.output.splitlines()
        curl = next(line.strip() for line in lines if "curl http" in line)
        assert curl.startswith("curl http://127.0.0.1:"), lines
        out = subprocess.run(curl, shell=True, capture_output=True, text=True, timeout=30)
        body = json.loads(out.stdout)
        assert body["object"] == "text_completion" and body["usage"]["completion_tokens"] == 16
    finally:
        server.stop()


def _tier_status(url: str, tier: str) -> int:
    resp = httpx.post(
        url + "/v1/completions",
        json={"prompt": "x", "max_tokens": 2},
        headers={"x-accelgen-tier": tier},
        timeout=30,
    )
    return resp.status_code


def test_tiers_reload_on_sighup_and_on_change_without_dropping_requests(tmp_path: Path) -> None:
    server = ServeProcess(tmp_path, "--sim-time-scale", "5")
    tiers = tmp_path / "tiers.yaml"  # the file ServeProcess wrote and passed
    try:
        assert _tier_status(server.url, "gold") == 400
        # A long request in flight across every reload below.
        result: dict[str, int] = {}

        def long_request() -> None:
            with httpx.stream(
                "POST",
                server.url + "/v1/completions",
                timeout=60,
                json={"prompt": "x", "max_tokens": 60, "stream": True},
            ) as resp:
                result["status"] = resp.status_code
                result["events"] = sum(1 for line in resp.iter_lines() if line.startswith("data:"))

        worker = threading.Thread(target=long_request)
        worker.start()
        config = {
            **TIERS_CONFIG,
            "tiers": [*TIERS_CONFIG["tiers"], {"name": "gold", "ttft_ms": 300, "tbt_ms": 50}],
        }
        tiers.write_text(yaml.safe_dump(config))
        os.kill(server.proc.pid, signal.SIGHUP)
        assert wait_for(lambda: _tier_status(server.url, "gold") == 200, 5)
        # A broken file is refused and the sidecar keeps its tiers.
        tiers.write_text("tiers: [")
        os.kill(server.proc.pid, signal.SIGHUP)
        assert wait_for(lambda: "tier reload failed" in server.output, 5)  # read and refused
        assert _tier_status(server.url, "gold") == 200
        # A change of the file alone is picked up too (ConfigMap updates send no signal).
        config["tiers"] = [t for t in config["tiers"] if t["name"] != "gold"]
        tiers.write_text(yaml.safe_dump(config))
        assert wait_for(lambda: _tier_status(server.url, "gold") == 400, 5)
        worker.join(60)
        assert result == {"status": 200, "events": 61}  # 60 tokens and [DONE]
        metrics = httpx.get(server.url + "/metrics").text
        assert 'accelgen_tier_target_seconds{target="tbt",tier="gold"}' not in metrics
    finally:
        server.stop()
    assert "tier reload failed" in server.output
