"""The engine image serves the tiny model with AccelGen's scheduler, as the pool's pod runs it."""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path

import openai
import pytest

from accelgen.process import free_port
from accelgen.wire import SCHEDULER_CLS, read_engine_stats
from accelgen_operator.resources import pod_template
from tests.support.images import Container, config_volume, pod_mounts, pool_spec, scratch_dir

pytestmark = [pytest.mark.images, pytest.mark.slow]

# What a CPU engine with the tiny model needs beyond the pod's arguments (the pool's
# spec.engine.args, appended last by the operator, so --port here wins over 8001).
CPU_ARGS = [
    "--served-model-name", "tiny",
    "--load-format", "dummy",
    "--max-model-len", "2048",
    "--max-num-seqs", "8",
    "--max-num-batched-tokens", "2048",
    "--kv-cache-memory-bytes", str(256 << 20),
    "--enforce-eager",
    "--dtype", "float32",  # see accelgen.launch.VllmServerConfig.dtype
]  # fmt: skip


@pytest.fixture(scope="module")
def models(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The model cache volume: the project's generated tiny model in ``tiny/``."""
    pytest.importorskip("tokenizers", reason="the tiny model's tokenizer needs `tokenizers`")
    from accelgen.vllm.tiny_model import build_tiny_model

    root = tmp_path_factory.mktemp("models")
    root.chmod(0o755)
    build_tiny_model(root / "tiny")
    for path in [root, *root.rglob("*")]:
        path.chmod(0o755 if path.is_dir() else 0o644)
    return root


def test_engine_image_serves_the_tiny_model(container: Callable[[str], Container], pod_dir: Path, models: Path) -> None:
    port = free_port()
    cache = {"claimName": "models", "mountPath": "/models", "readOnly": True}
    spec = pool_spec(
        model="/models/tiny",
        engine={"gpus": 0, "modelCache": cache, "args": [*CPU_ARGS, "--port", str(port)]},
    )
    pod = pod_template("images-engine", spec)["spec"]
    (engine,) = [c for c in pod["containers"] if c["name"] == "engine"]
    assert engine["args"][engine["args"].index("--scheduler-cls") + 1] == SCHEDULER_CLS
    run_dir = scratch_dir(pod_dir, "run")
    sources = {
        "config": config_volume(pod_dir, "images-engine", spec),
        "dshm": None,
        "run": run_dir,
        "model-cache": models,
    }
    proc = container("engine").start(
        engine["args"],
        entrypoint=engine["command"],
        mounts=pod_mounts(engine, sources),
        env={e["name"]: e["value"] for e in engine["env"]},
        # As the pod says: the engine's root is writable there (vLLM writes caches under ~).
        read_only_root=bool(engine["securityContext"].get("readOnlyRootFilesystem")),
        log_file=pod_dir / "engine.log",
    )
    # Generous: a bound on a hang (vLLM's start on a busy 2-core machine takes minutes).
    proc.wait_ready(f"http://127.0.0.1:{port}/health", timeout_s=600)

    client = openai.OpenAI(base_url=f"http://127.0.0.1:{port}/v1", api_key="unused", max_retries=0, timeout=300)
    out = client.completions.create(
        model="tiny", prompt="Hello there", max_tokens=6, temperature=0.0, extra_body={"ignore_eos": True}
    )
    assert out.usage is not None and out.usage.completion_tokens == 6
    assert out.choices[0].finish_reason == "length"
    # AccelGen's scheduler ran the request: its stats file, on the pod's shared volume.
    stats_path = run_dir / "engine-stats.json"
    deadline = time.monotonic() + 60
    while True:
        stats = read_engine_stats(stats_path) if stats_path.exists() else None
        if stats is not None and sum(stats.requests_by_tier.values()) >= 1:
            break
        assert time.monotonic() < deadline, f"no engine stats in {stats_path}: {proc.log_tail()}"
        time.sleep(0.5)
    assert stats.policy == "accelgen" and stats.num_steps >= 6
    proc.stop()
