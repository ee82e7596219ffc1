"""The in-engine scheduler's statistics: the stats file's writer plus a JSON-lines step log.

vLLM sends its own ``SchedulerStats`` to the front-end as a fixed dataclass and drops
anything else, so AccelGen's numbers leave the EngineCore process through files:

* ``ACCELGEN_STATS_FILE`` — the stats file (:class:`accelgen.wire.EngineStatsFile`),
  rewritten atomically at most every ``interval_s`` and at shutdown; read with
  :func:`accelgen.wire.read_engine_stats`.
* ``ACCELGEN_STEP_LOG`` — optional, one JSON object per engine step (budget, planned and
  scheduled tokens, predicted and measured seconds, planner seconds, preemptions with
  tiers, running requests per tier). For tests and offline analysis; costs one write
  per step.

Pure Python (no vLLM).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import IO, Any

from accelgen.wire import EngineStatsRecorder


class EngineStats(EngineStatsRecorder):
    """The scheduler's :class:`~accelgen.wire.EngineStatsRecorder`, with its step log.

    Args:
        policy: Name of the policy in use.
        path: Stats file, or None to keep the numbers in memory only.
        step_log: JSON-lines file for per-step records, or None.
        interval_s: Least time between two stats-file writes.
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
        super().__init__(policy=policy, path=path, interval_s=interval_s, window=window)
        self._log: IO[str] | None = None
        if step_log is not None:
            step_log.parent.mkdir(parents=True, exist_ok=True)
            self._log = step_log.open("a", encoding="utf-8", buffering=1)  # line-buffered

    def record_step(self, record: dict[str, Any]) -> None:
        """Append one step's record to the step log (if any)."""
        if self._log is not None:
            self._log.write(json.dumps(record, separators=(",", ":")) + "\n")

    def close(self) -> None:
        super().close()
        if self._log is not None:
            self._log.close()
            self._log = None


def read_step_log(path: Path) -> list[dict[str, Any]]:
    """All step records of a step log, in order."""
    with path.open(encoding="utf-8") as f:
        return [json.loads(line) for line in f if line.strip()]
