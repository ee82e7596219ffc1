"""The side channel for in-engine statistics: a JSON snapshot file and a JSON-lines step log.

vLLM sends its own ``SchedulerStats`` to the front-end as a fixed dataclass and drops
anything else, so AccelGen's numbers leave the EngineCore process through files:

* ``ACCELGEN_STATS_FILE`` — a JSON snapshot, rewritten atomically (temp file + rename)
  at most every ``interval_s`` and at shutdown. Readers (the sidecar, ``accelgen bench
  vllm``, tests) just read it; they never see half a file. Keys: see
  :meth:`EngineStats.snapshot`.
* ``ACCELGEN_STEP_LOG`` — optional, one JSON object per engine step (budget, planned and
  scheduled tokens, predicted and measured seconds, planner seconds, preemptions with
  tiers, running requests per tier). For tests and offline analysis; costs one write
  per step.

Pure Python (no vLLM).
"""

from __future__ import annotations

import json
import os
import statistics
import tempfile
import time
from collections import Counter, deque
from pathlib import Path
from typing import IO, Any


def _quantile(values: list[float], q: float) -> float | None:
    if not values:
        return None
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


class EngineStats:
    """Counters and recent per-step timings of one engine's scheduler.

    Args:
        policy: Name of the policy in use.
        path: Snapshot file, or None to keep the numbers in memory only.
        step_log: JSON-lines file for per-step records, or None.
        interval_s: Least time between two snapshot writes.
        window: Steps kept for the medians and quantiles.
    """

    def __init__(
        self,
        *,
        policy: str,
        path: Path | None = None,
        step_log: Path | None = None,
        interval_s: float = 0.5,
        window: int = 4096,
    ) -> None:
        self.policy = policy
        self.path = path
        self.interval_s = interval_s
        self.started_s = time.time()
        self.num_steps = 0
        self.num_empty_plans = 0
        self.num_inexact_steps = 0
        self.num_fallback_steps = 0
        self.num_unexecuted_admissions = 0
        self.preemptions_by_tier: Counter[str] = Counter()
        # The subset vLLM made on its own (its KV view differed from the plan's).
        self.engine_preemptions_by_tier: Counter[str] = Counter()
        self.requests_by_tier: Counter[str] = Counter()
        self.slo_problems: Counter[str] = Counter()
        self.last_budget_tokens = 0
        self.schedule_s: deque[float] = deque(maxlen=window)
        self.planner_s: deque[float] = deque(maxlen=window)
        self.budget_tokens: deque[int] = deque(maxlen=window)
        self.step_errors: deque[float] = deque(maxlen=window)
        self.last_predicted_s: float | None = None
        self.last_measured_s: float | None = None
        self.calibration: dict[str, Any] = {}
        self._last_write_s = 0.0
        self._log: IO[str] | None = None
        if step_log is not None:
            step_log.parent.mkdir(parents=True, exist_ok=True)
            self._log = step_log.open("a", encoding="utf-8", buffering=1)  # line-buffered

    def record_step(self, record: dict[str, Any]) -> None:
        """Append one step's record to the step log (if any)."""
        if self._log is not None:
            self._log.write(json.dumps(record, separators=(",", ":")) + "\n")

    def record_timing(self, *, predicted_s: float, measured_s: float) -> None:
        self.last_predicted_s = predicted_s
        self.last_measured_s = measured_s
        if measured_s > 0:
            self.step_errors.append(abs(predicted_s - measured_s) / measured_s)

    def snapshot(self) -> dict[str, Any]:
        """Everything the side channel publishes, as plain JSON types."""
        planner = list(self.planner_s)
        schedule = list(self.schedule_s)
        budgets = list(self.budget_tokens)
        errors = list(self.step_errors)
        return {
            "policy": self.policy,
            "pid": os.getpid(),
            "started_at_s": self.started_s,
            "updated_at_s": time.time(),
            "num_steps": self.num_steps,
            "num_empty_plans": self.num_empty_plans,
            "num_inexact_steps": self.num_inexact_steps,
            "num_fallback_steps": self.num_fallback_steps,
            "num_unexecuted_admissions": self.num_unexecuted_admissions,
            "budget_tokens": {
                "last": self.last_budget_tokens,
                "min": min(budgets) if budgets else None,
                "max": max(budgets) if budgets else None,
                "median": statistics.median(budgets) if budgets else None,
            },
            "step_time_s": {
                "last_predicted": self.last_predicted_s,
                "last_measured": self.last_measured_s,
                "mean_error": statistics.fmean(errors) if errors else None,
            },
            "planner_s": {
                "median": statistics.median(planner) if planner else None,
                "p99": _quantile(planner, 0.99),
                "mean": statistics.fmean(planner) if planner else None,
            },
            "schedule_s": {
                "median": statistics.median(schedule) if schedule else None,
                "p99": _quantile(schedule, 0.99),
                "mean": statistics.fmean(schedule) if schedule else None,
                "num": len(schedule),
            },
            "preemptions_by_tier": dict(self.preemptions_by_tier),
            "engine_preemptions_by_tier": dict(self.engine_preemptions_by_tier),
            "requests_by_tier": dict(self.requests_by_tier),
            "slo_metadata_problems": dict(self.slo_problems),
            "calibration": self.calibration,
        }

    def maybe_write(self, *, force: bool = False) -> None:
        """Rewrite the snapshot file if ``interval_s`` has passed (or ``force``)."""
        now = time.monotonic()
        if self.path is None or (not force and now - self._last_write_s < self.interval_s):
            return
        self._last_write_s = now
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=self.path.parent, prefix=".stats-", suffix=".json")
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            json.dump(self.snapshot(), f, indent=1)
        # NOTE: mkstemp makes it 0600; the sidecar reading it may run as another user.
        os.chmod(tmp, 0o644)
        os.replace(tmp, self.path)

    def close(self) -> None:
        self.maybe_write(force=True)
        if self._log is not None:
            self._log.close()
            self._log = None


def read_stats(path: Path) -> dict[str, Any]:
    """Read a snapshot written by :class:`EngineStats` (for the sidecar, bench and tests)."""
    data: dict[str, Any] = json.loads(path.read_text(encoding="utf-8"))
    return data


def read_step_log(path: Path) -> list[dict[str, Any]]:
    """All step records of a step log, in order."""
    with path.open(encoding="utf-8") as f:
        return [json.loads(line) for line in f if line.strip()]
