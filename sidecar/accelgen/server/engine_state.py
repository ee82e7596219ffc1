"""What the sidecar last saw of its engine, parsed from the engine's Prometheus ``/metrics``.

vLLM exports ``vllm:num_requests_running``, ``vllm:num_requests_waiting`` and
``vllm:kv_cache_usage_perc`` (a fraction in [0, 1] despite the name; older versions
call it ``vllm:gpu_cache_usage_perc``), one series per model; they are summed.
AccelGen's in-engine scheduler also writes a stats file (its side channel, see
:mod:`accelgen.vllm.stats`; the sim engine writes the same file): its preemption count
says when KV is short, its ``budget_tokens`` (last, and median/min/max over the
engine's recent steps) is exported as a gauge.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from typing import Any

_RUNNING = "vllm:num_requests_running"
_WAITING = "vllm:num_requests_waiting"
_KV = ("vllm:kv_cache_usage_perc", "vllm:gpu_cache_usage_perc")
_READ = (_RUNNING, _WAITING, *_KV)


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
    budget_tokens: dict[str, float] = field(default_factory=dict)  # from the side channel
    error: str = "engine not checked yet"


def read_engine_stats(path: str) -> dict[str, Any] | None:
    """The in-engine scheduler's stats snapshot (``accelgen.vllm.stats``), or None.

    The file is rewritten atomically by the engine; None if it is missing, unreadable
    or not a JSON object.
    """
    try:
        with open(path, encoding="utf-8") as handle:
            snapshot = json.load(handle)
    except (OSError, ValueError):
        return None
    return snapshot if isinstance(snapshot, dict) else None


def preemptions_of(snapshot: dict[str, Any]) -> int | None:
    """Total preemptions in a snapshot (summed over tiers); None if malformed."""
    try:
        by_tier = snapshot.get("preemptions_by_tier") or {}
        return int(sum(int(v) for v in by_tier.values()))
    except (ValueError, TypeError, AttributeError):
        return None


def budget_of(snapshot: dict[str, Any]) -> dict[str, float]:
    """The snapshot's ``budget_tokens`` stats that are finite numbers (none before a step)."""
    raw = snapshot.get("budget_tokens")
    if not isinstance(raw, dict):
        return {}
    return {
        str(stat): float(value)
        for stat, value in raw.items()
        if isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)
    }


def read_preemptions(path: str) -> int | None:
    """Total preemptions in the stats file at ``path``; None if missing or unreadable."""
    snapshot = read_engine_stats(path)
    return None if snapshot is None else preemptions_of(snapshot)


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
        if line.startswith("vllm:"):
            kept.append(line)
            # Only the three series admission reads are parsed (the page has hundreds).
            if not line.startswith(_READ):
                continue
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
        elif line.startswith(("# HELP vllm:", "# TYPE vllm:")):
            kept.append(line)
    text_out = "\n".join(kept) + "\n" if kept else ""
    return int(running), int(waiting), kv, text_out
