"""A simulated engine loop: continuous batching whose iterations last as the latency model says.

Each iteration admits waiting requests (priority, then arrival — vLLM's priority
policy) while sequences and KV blocks last, gives every running request that finished
its prompt one decode token and spends the rest of the token budget on prompt chunks,
then sleeps for the model's predicted time of that batch shape and emits the tokens.
A request reserves KV for prompt + max_tokens on admission (no preemption).

Like AccelGen's scheduler inside vLLM, it can write the in-engine stats file
(:class:`accelgen.vllm.stats.EngineStats`, policy ``sim``): its budget per step is the
tokens it scheduled in that step (decodes + prompt chunks), so the sidecar's
``accelgen_engine_budget_tokens`` has data without vLLM. Its steps are timed (wall time
of each iteration's sleep) and calibrated by the same
:class:`~accelgen.vllm.calibration.Calibrator`, whose report is the file's
``calibration``: the latency-model gauges and panels have data without vLLM too.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import math
import time
from dataclasses import dataclass, field
from pathlib import Path

from accelgen.core.latency import BatchShape, LatencyModel
from accelgen.core.calibration import TINY_CPU_PRIOR, Calibrator
from accelgen.vllm.stats import EngineStats


@dataclass(frozen=True, slots=True)
class SimEngineConfig:
    """Capacity of the simulated engine (names as vLLM's flags)."""

    max_num_seqs: int = 32
    max_num_batched_tokens: int = 2048
    max_model_len: int = 4096
    num_kv_blocks: int = 4096
    block_size_tokens: int = 16
    time_scale: float = 1.0  # > 1 slows every iteration down (e.g. for overload tests)


@dataclass(eq=False, slots=True)
class SimRequest:
    """One generation in the simulated engine; tokens arrive on ``tokens`` (None = done)."""

    num_prompt_tokens: int
    max_tokens: int
    n: int = 1
    priority: int = 0
    seq: int = 0
    num_computed: int = 0
    num_output: int = 0
    aborted: bool = False
    num_blocks: int = 0
    tokens: asyncio.Queue[int | None] = field(default_factory=asyncio.Queue)


class SimEngine:
    """The batching loop; :meth:`submit` a request, read its ``tokens`` queue."""

    def __init__(self, model: LatencyModel, config: SimEngineConfig, *, stats_path: Path | None = None) -> None:
        self.model = model
        self.config = config
        # The side channel accelgen.vllm writes (written only with a path; counted always).
        self.stats = EngineStats(policy="sim", path=stats_path)
        self.calibrator = Calibrator(prior=TINY_CPU_PRIOR)
        self._written_s, self._written_steps = -1e9, -1  # -1: not even the empty file yet
        self.waiting: list[SimRequest] = []
        self.running: list[SimRequest] = []
        self.free_blocks = config.num_kv_blocks
        self.num_prompt_tokens_total = 0
        self.num_generation_tokens_total = 0
        self.num_finished_total = 0
        self._seq = itertools.count()
        self._wake = asyncio.Event()

    @property
    def kv_usage(self) -> float:
        return 1.0 - self.free_blocks / self.config.num_kv_blocks

    def submit(self, request: SimRequest) -> None:
        request.seq = next(self._seq)
        tokens = request.num_prompt_tokens + request.max_tokens
        request.num_blocks = math.ceil(tokens / self.config.block_size_tokens) * request.n
        self.waiting.append(request)
        self._wake.set()

    def abort(self, request: SimRequest) -> None:
        """Stop generating for ``request`` and free its KV (the client went away)."""
        request.aborted = True
        if request in self.waiting:
            self.waiting.remove(request)
        elif request in self.running:
            self._finish(request)

    def _finish(self, request: SimRequest) -> None:
        self.running.remove(request)
        self.free_blocks += request.num_blocks
        request.tokens.put_nowait(None)

    def _admit(self) -> None:
        self.waiting.sort(key=lambda r: (r.priority, r.seq))
        while self.waiting and len(self.running) < self.config.max_num_seqs:
            head = self.waiting[0]
            if head.num_blocks > self.free_blocks:
                break
            self.waiting.pop(0)
            self.free_blocks -= head.num_blocks
            self.running.append(head)

    def _plan(self) -> tuple[BatchShape, list[tuple[SimRequest, int]]]:
        """The next batch: decodes first, then prompt chunks within the token budget."""
        budget = self.config.max_num_batched_tokens
        shape, work = BatchShape(), []
        for r in self.running:
            if r.num_computed >= r.num_prompt_tokens and budget >= r.n:
                for _ in range(r.n):
                    shape = shape.plus_decode(context_tokens=r.num_prompt_tokens + r.num_output)
                work.append((r, 0))
                budget -= r.n
        for r in self.running:
            left = r.num_prompt_tokens - r.num_computed
            if left > 0 and budget > 0:
                chunk = min(left, budget)
                shape = shape.plus_prefill(chunk, context_tokens=r.num_computed)
                work.append((r, chunk))
                budget -= chunk
        return shape, work

    def _record(self, shape: BatchShape) -> None:
        self.stats.num_steps += 1
        self.stats.last_budget_tokens = shape.num_tokens
        self.stats.budget_tokens.append(shape.num_tokens)
        if time.monotonic() - self._written_s >= self.stats.interval_s:
            self._write_stats()

    def _write_stats(self) -> None:
        # ~2 ms with a full window, in the sidecar's event loop under --engine sim:
        # at most every interval_s while busy, and once when idle (see _loop).
        self.stats.calibration = self.calibrator.report()
        self.stats.maybe_write(force=True)
        self._written_s, self._written_steps = time.monotonic(), self.stats.num_steps

    async def run(self) -> None:
        """The engine loop (a background task); the stats file is written at exit too."""
        try:
            await self._loop()
        finally:
            self.stats.close()

    async def _loop(self) -> None:
        while True:
            self._admit()
            if not self.running:
                self._wake.clear()
                if self.stats.path is not None and self._written_steps != self.stats.num_steps:
                    # Idle with steps not in the file yet: write them if it stays idle for
                    # interval_s (one write per quiet spell, not one per request).
                    with contextlib.suppress(TimeoutError):
                        await asyncio.wait_for(self._wake.wait(), self.stats.interval_s)
                    if not self._wake.is_set():
                        self._write_stats()
                    continue
                await self._wake.wait()
                continue
            shape, work = self._plan()
            self._record(shape)
            started_s = time.perf_counter()
            await asyncio.sleep(self.model.predict_s(shape) * self.config.time_scale)
            if self.config.time_scale > 0:  # at scale 0 steps take no time: nothing to calibrate
                self.calibrator.add(shape, time.perf_counter() - started_s)
            for request, chunk in work:
                if request.aborted:
                    continue
                if chunk:
                    request.num_computed += chunk
                    self.num_prompt_tokens_total += chunk
                    if request.num_computed < request.num_prompt_tokens:
                        continue  # the prompt's last chunk samples the first token
                self._emit(request)

    def _emit(self, request: SimRequest) -> None:
        request.num_output += 1
        self.num_generation_tokens_total += request.n
        request.tokens.put_nowait(request.num_output)
        if request.num_output >= request.max_tokens:
            self.num_finished_total += 1
            self._finish(request)
