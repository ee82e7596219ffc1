"""What the sidecar last saw of its engine, parsed from the engine's Prometheus ``/metrics``.

vLLM exports ``vllm:num_requests_running``, ``vllm:num_requests_waiting`` and
``vllm:kv_cache_usage_perc`` (a fraction in [0, 1] despite the name; older versions
call it ``vllm:gpu_cache_usage_perc``), one series per model; they are summed.
AccelGen's in-engine scheduler also writes a stats file (its side channel, see
:mod:`accelgen.vllm.stats`); its preemption count says when KV is short.
"""

from __future__ import annotations

import json
from dataclasses import dataclass

_RUNNING = "vllm:num_requests_running"
_WAITING = "vllm:num_requests_waiting"
_KV = ("vllm:kv_cache_usage_perc", "vllm:gpu_cache_usage_perc")


@dataclass(slots=True)
class EngineState:
    """The latest engine snapshot (``updated_s`` on the sidecar's monotonic clock)."""

    ready: bool = False
    running: int = 0
    waiting: int = 0
    waiting_before: int = 0  # the poll before: a queue that persists, not a passing one
    kv_usage: float = 0.0
    updated_s: float = -1e9
    vllm_text: str = ""  # the engine's vllm:* families, re-exported on our /metrics
    preemptions: int = 0  # cumulative, from AccelGen's in-engine side channel
    preempting: bool = False  # the count grew since the previous poll: KV is short
    error: str = "engine not checked yet"


def read_preemptions(path: str) -> int | None:
    """Total preemptions in the in-engine scheduler's stats snapshot (``accelgen.vllm.stats``).

    The file is rewritten atomically by the engine; None if it is missing or unreadable.
    """
    try:
        with open(path, encoding="utf-8") as handle:
            snapshot = json.load(handle)
        by_tier = snapshot.get("preemptions_by_tier") or {}
        return int(sum(int(v) for v in by_tier.values()))
    except (OSError, ValueError, TypeError, AttributeError):
        return None


def _sample(line: str) -> tuple[str, float] | None:
    """``name{labels} value [timestamp]`` → (name, value); None for anything else."""
    if not line or line[0] == "#":
        return None
    brace = line.find("{")
    space = line.find(" ")
    if brace != -1 and (space == -1 or brace < space):
        name, rest = line[:brace], line[line.rfind("}") + 1 :]
    else:
        name, rest = line[:space], line[space:]
    parts = rest.split()
    if not parts:
        return None
    try:
        return name, float(parts[0])
    except ValueError:
        return None


def parse_engine_metrics(text: str) -> tuple[int, int, float, str]:
    """(running, waiting, kv_usage, vllm_families_text) from an engine's metrics page."""
    running = waiting = 0.0
    kv = 0.0
    kept: list[str] = []
    for line in text.splitlines():
        if line.startswith(("# HELP vllm:", "# TYPE vllm:", "vllm:")):
            kept.append(line)
        sample = _sample(line)
        if sample is None:
            continue
        name, value = sample
        if name == _RUNNING:
            running += value
        elif name == _WAITING:
            waiting += value
        elif name in _KV:
            kv = max(kv, value)
    text_out = "\n".join(kept) + "\n" if kept else ""
    return int(running), int(waiting), kv, text_out
