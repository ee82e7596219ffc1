"""The vLLM engines ``accelgen bench vllm`` starts, and what it reads back from them.

One :class:`~accelgen.launch.VllmServerConfig` per compared configuration:

* ``vllm-fcfs``      stock vLLM, untouched (``--scheduling-policy fcfs``);
* ``vllm-priority``  stock vLLM with ``--scheduling-policy priority``;
* any other name     AccelGen's scheduler class running that core policy (``vllm-stock``:
                     vLLM's own scheduling, timed and counted) with the work dir's
                     ``tiers.yaml`` and ``scheduler.yaml`` (:func:`write_engine_files`).

Every engine has the workload's capacity (KV blocks, block size, batch limits) and seed;
its files in the work dir are named ``{tag}-*`` (server log, stats file, step log).
"""

from __future__ import annotations

import json
import urllib.request
from pathlib import Path
from typing import Any

import yaml

from accelgen.launch import VllmServerConfig
from accelgen.server.engine_state import metric_samples
from accelgen.sim.workload import Workload
from accelgen.wire import read_engine_stats

#: The configurations that run vLLM's own scheduler, without AccelGen's class: their
#: ``--scheduling-policy``.
STOCK_CONFIGS = {"vllm-fcfs": "fcfs", "vllm-priority": "priority"}


def server_config(
    name: str, workload: Workload, model_dir: Path, workdir: Path, calibration: Path | None, *, tag: str
) -> VllmServerConfig:
    """The server of configuration ``name``; an AccelGen one starts from ``calibration``."""
    e = workload.engine
    common: dict[str, Any] = {
        "model_dir": model_dir,
        "max_num_batched_tokens": e.max_num_batched_tokens,
        "max_num_seqs": e.max_num_seqs,
        "num_gpu_blocks": e.num_kv_blocks,
        "kv_cache_memory_bytes": 1 << 30,
        "extra_args": ("--block-size", str(e.block_size_tokens), "--seed", str(workload.seed)),
        "log_file": workdir / f"{tag}-server.log",
    }
    if name in STOCK_CONFIGS:
        return VllmServerConfig(scheduler_cls=None, policy=None, scheduling_policy=STOCK_CONFIGS[name], **common)
    return VllmServerConfig(
        policy=name,
        tiers_file=workdir / "tiers.yaml",
        scheduler_config=workdir / "scheduler.yaml",
        stats_file=workdir / f"{tag}-stats.json",
        step_log=workdir / f"{tag}-steps.jsonl",
        calibration_file=calibration,
        **common,
    )


def write_engine_files(raw: dict[str, Any], workload: Workload, workdir: Path) -> None:
    """The AccelGen engines' tier and scheduler files: the workload's (sized) values."""
    (workdir / "tiers.yaml").write_text(yaml.safe_dump(workload.tiers.to_config()), encoding="utf-8")
    scheduler = dict(raw.get("scheduler") or {})
    # The times sizing may have scaled (the rest stays as written).
    scheduler.update(gamma_s=workload.scheduler.gamma_s, safety_margin_s=workload.scheduler.safety_margin_s)
    scheduler["policy"] = "accelgen"
    (workdir / "scheduler.yaml").write_text(yaml.safe_dump(scheduler), encoding="utf-8")


def model_and_vocab(model: Path | None, workdir: Path) -> tuple[Path, int]:
    """The model directory (``model``, else a tiny model built in ``workdir``) and the vocabulary used."""
    if model is None:
        from accelgen.vllm.tiny_model import build_tiny_model

        model = Path(build_tiny_model(workdir / "tiny-model"))
    vocab = min(int(json.loads((model / "config.json").read_text())["vocab_size"]), 32000)
    return model, vocab


def preemptions_from_metrics(base_url: str) -> int | None:
    """vLLM's own preemption counter from a running engine's Prometheus endpoint."""
    try:
        with urllib.request.urlopen(base_url + "/metrics", timeout=10) as r:
            text = r.read().decode()
    except OSError:
        return None
    samples = metric_samples(text, ("vllm:num_preemptions_total", "vllm:num_preemptions"))
    return int(sum(s.value for s in samples)) if samples else None


def engine_stats(stats_file: Path | None) -> dict[str, Any]:
    """An AccelGen engine's stats file as JSON; ``{}`` when there is none or it cannot be read."""
    if stats_file is None or not stats_file.exists():
        return {}
    try:
        return read_engine_stats(stats_file).to_json()
    except (OSError, ValueError):
        return {}
