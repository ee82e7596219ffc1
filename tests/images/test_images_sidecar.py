"""The sidecar image serves the simulated engine as the pool's pod runs it, for the openai client."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import openai
import pytest

from accelgen.process import free_port
from accelgen_operator.resources import pod_template
from tests.support.images import Container, config_volume, pod_mounts, pool_spec, scratch_dir

pytestmark = [pytest.mark.images, pytest.mark.slow]


def sim_args(args: list[str], port: int) -> list[str]:
    """The pod's sidecar arguments with the simulated engine in place of the engine container.

    --engine-url and --engine-stats name the engine container's port and its stats file
    (on a volume the sidecar mounts read-only); the simulated engine writes its own.
    """
    out: list[str] = []
    skip = False
    for arg in args:
        if skip:
            skip = False
        elif arg in ("--engine-url", "--engine-stats", "--host", "--port"):
            skip = True
        else:
            out.append(arg)
    return [*out, "--engine", "sim", "--host", "127.0.0.1", "--port", str(port)]


def test_sidecar_image_serves_the_sim_engine(container: Callable[[str], Container], pod_dir: Path) -> None:
    spec = pool_spec()
    pod = pod_template("images-sim", spec)["spec"]
    (sidecar,) = [c for c in pod["containers"] if c["name"] == "sidecar"]
    sources = {
        "config": config_volume(pod_dir, "images-sim", spec),
        "tmp": scratch_dir(pod_dir, "tmp"),
        "run": scratch_dir(pod_dir, "run"),
    }
    port = free_port()
    c = container("sidecar")
    assert c.config()["Entrypoint"] == sidecar["command"]
    proc = c.start(
        sim_args(sidecar["args"], port),
        mounts=pod_mounts(sidecar, sources),
        env={e["name"]: e["value"] for e in sidecar["env"]},
        log_file=pod_dir / "sidecar.log",
    )
    proc.wait_ready(f"http://127.0.0.1:{port}/readyz", timeout_s=120)
    assert _uid(proc.pid) == 65532

    client = openai.OpenAI(base_url=f"http://127.0.0.1:{port}/v1", api_key="unused", max_retries=0, timeout=60)
    out = client.completions.create(model="accelgen-sim", prompt="Hello there", max_tokens=7)
    assert out.choices[0].text and out.choices[0].finish_reason == "length"
    assert out.usage is not None and out.usage.completion_tokens == 7
    chunks = list(
        client.chat.completions.create(
            model="accelgen-sim",
            messages=[{"role": "user", "content": "Hi"}],
            max_tokens=4,
            stream=True,
            extra_headers={"x-accelgen-tier": "interactive"},
        )
    )
    assert "".join(ch.choices[0].delta.content or "" for ch in chunks if ch.choices)
    proc.stop()
    assert "Traceback" not in (pod_dir / "sidecar.log").read_text()


def _uid(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("Uid:"):
            return int(line.split()[1])
    raise AssertionError(f"no Uid line for pid {pid}")


def test_sidecar_image_runs_the_endpoint_picker(container: Callable[[str], Container]) -> None:
    """The operator runs `accelgen picker` from the sidecar image: the gateway extra is in it."""
    result = container("sidecar").run(["accelgen", "picker", "--help"])
    assert result.returncode == 0, result.stderr
    assert "--pods-dns" in result.stdout
