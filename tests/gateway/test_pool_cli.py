"""``accelgen serve --replicas N`` and ``accelgen picker`` as a user runs them: real processes.

The pool answers the official ``openai`` client on its one port and adds its replicas'
``/stats`` up per tier; the picker, started by its command line (exactly the one the
operator runs), serves ext_proc and gRPC health over a real sidecar. Bad input is one
line and exit 2. No Envoy binary can run here: a gRPC client on Envoy's generated
protos plays its part.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import urllib.request
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import grpc
import openai
import pytest
from envoy.service.ext_proc.v3 import external_processor_pb2_grpc as ext_proc_grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from accelgen.process import ChildProcess, free_port, wait_ready
from tests.support.gateway import destination, request_messages
from tests.support.serve_process import ServeProcess
from tests.support.sidecar import metric_value

pytestmark = pytest.mark.slow
ACCELGEN = [sys.executable, "-m", "accelgen.cli"]


def _get_json(url: str) -> dict[str, object]:
    with urllib.request.urlopen(url, timeout=10) as resp:
        doc: dict[str, object] = json.load(resp)
        return doc


@pytest.fixture(scope="module")
def pool(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    log = tmp_path_factory.mktemp("pool") / "pool.log"
    port = free_port()
    cmd = [*ACCELGEN, "serve", "--replicas", "4", "--host", "127.0.0.1", "--port", str(port), "--log-level", "WARNING"]
    with ChildProcess(cmd, name="accelgen serve --replicas 4", log_file=log, stop_grace_s=20.0) as child:
        child.wait_ready(f"http://127.0.0.1:{port}/readyz", timeout_s=120)
        yield f"http://127.0.0.1:{port}"


def test_pool_answers_the_openai_client_and_adds_up_its_replicas(pool: str) -> None:
    client = openai.OpenAI(base_url=pool + "/v1", api_key="unused", max_retries=0, timeout=60)
    num_requests = 12

    def one(i: int) -> int:
        tier = ("interactive", "standard")[i % 2]
        done = client.completions.create(
            model="model", prompt=f"hello {i}", max_tokens=8, extra_headers={"x-accelgen-tier": tier}
        )
        assert done.choices[0].text and done.usage is not None
        return done.usage.completion_tokens

    # At once: they overlap on the replicas, so the router has load to spread.
    with ThreadPoolExecutor(max_workers=num_requests) as pool_of_clients:
        assert list(pool_of_clients.map(one, range(num_requests))) == [8] * num_requests
    chunks = list(client.chat.completions.create(model="model", messages=[{"role": "user", "content": "hi"}],
                                                  max_tokens=6, stream=True))  # fmt: skip
    assert sum(len(c.choices[0].delta.content or "") > 0 for c in chunks if c.choices) == 6

    stats = _get_json(pool + "/stats")
    replicas = stats["replicas"]
    assert isinstance(replicas, list) and len(replicas) == 4 and all(r["stats"] for r in replicas)
    tiers = {t["name"]: t for t in stats["tiers"]}  # type: ignore[attr-defined]
    for name in ("interactive", "standard"):
        per_replica = [next(t for t in r["stats"]["tiers"] if t["name"] == name) for r in replicas]
        assert tiers[name]["slo_met"] == sum(t["slo_met"] for t in per_replica) >= 1
        assert tiers[name]["goodput_rps"] == pytest.approx(sum(t["goodput_rps"] for t in per_replica))
        assert tiers[name]["completed"] >= num_requests // 2
    # The router spread them: more than one replica served requests.
    assert sum(1 for r in replicas if any(t["completed"] for t in r["stats"]["tiers"])) >= 2
    routed = stats["routing"]["outcomes"]["routed"]  # type: ignore[index]
    assert routed == num_requests + 1

    with urllib.request.urlopen(pool + "/metrics", timeout=10) as resp:
        metrics = resp.read().decode()
    assert metric_value(metrics, "accelgen_pool_goodput_rps", tier="interactive") == pytest.approx(
        tiers["interactive"]["goodput_rps"], rel=0.5
    )
    assert metric_value(metrics, "accelgen_pool_replicas", state="ready") == 4.0
    # Each replica's own /stats and /metrics stay on its own port.
    first = replicas[0]["address"]
    assert "accelgen_requests_total" in urllib.request.urlopen(f"http://{first}/metrics", timeout=10).read().decode()


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["serve", "--replicas", "0"], "argument --replicas: must be >= 1, got 0"),
        (["serve", "--replicas", "2", "--routing", "fastest"], "argument --routing: unknown routing policy 'fastest'"),
        (["serve", "--replicas", "2", "--engine-url", "http://127.0.0.1:9"], "one running engine cannot be several"),
        # As many vLLM-cpu replicas as cores: each needs two.
        (["serve", "--replicas", str(max(2, os.cpu_count() or 1)), "--engine", "vllm"], "cores per replica"),
        (["picker", "--pods", "a:1", "--routing", "fastest"], "argument --routing: unknown routing policy 'fastest'"),
        (["picker"], "one of the arguments --pods --pods-dns is required"),
        (["picker", "--pods", "no-port"], "argument --pods: not a host:port address: 'no-port'"),
        (["picker", "--pods-dns", "svc"], "argument --pods-dns: not a host:port address: 'svc'"),
        (["picker", "--pods", "a:1", "--listen", "0.0.0.0"], "argument --listen: not a host:port address"),
        (
            ["picker", "--pods", "127.0.0.1:9", "--startup-timeout-s", "0.5"],
            "accelgen: error: no pod answered within 0.5 s (--pods 127.0.0.1:9)",
        ),
    ],
)
def test_bad_input_is_one_line_and_exit_2(args: list[str], message: str) -> None:
    done = subprocess.run([*ACCELGEN, *args], capture_output=True, text=True, timeout=60)
    assert done.returncode == 2, done.stderr
    errors = [line for line in done.stderr.splitlines() if "error:" in line]
    assert len(errors) == 1 and message in errors[0], done.stderr
    assert "Traceback" not in done.stderr


def test_picker_command_serves_ext_proc_and_health(tmp_path: Path) -> None:
    sidecar = ServeProcess(tmp_path)
    port, health_port = free_port(), free_port()
    pod = sidecar.url.removeprefix("http://")
    # Exactly the operator's command line, with loopback addresses.
    cmd = [*ACCELGEN, "picker", "--listen", f"127.0.0.1:{port}", "--health-port", str(health_port)]
    cmd += ["--routing", "accelgen", "--pods", pod, "--refresh-s", "0.1"]
    try:
        with ChildProcess(cmd, name="accelgen picker", log_file=tmp_path / "picker.log") as picker:
            health = health_pb2_grpc.HealthStub(grpc.insecure_channel(f"127.0.0.1:{health_port}"))

            def serving() -> bool:
                try:
                    answer = health.Check(health_pb2.HealthCheckRequest(service="readiness"), timeout=2)
                except grpc.RpcError:
                    return False
                return bool(answer.status == health_pb2.HealthCheckResponse.SERVING)

            wait_ready(serving, timeout_s=60, child=picker)
            stub = ext_proc_grpc.ExternalProcessorStub(grpc.insecure_channel(f"127.0.0.1:{port}"))
            responses = list(stub.Process(request_messages({":method": "POST"}), timeout=30))
            assert destination(responses) == (pod, pod)
    finally:
        sidecar.stop()
