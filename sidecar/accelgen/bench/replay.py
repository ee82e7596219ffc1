"""A request sequence replayed on an OpenAI-compatible server at its arrival times.

    warm-up (not recorded)
      └─► t = 0 ──► each request sent at its arrival_s, streamed (server-sent events);
                    every chunk's new tokens stamped on the recorder at their arrival
                └─► drain: at last arrival + drain_s, what still runs is cancelled

Every request streams ``/v1/completions`` (the body of :func:`accelgen.bench.probe.completion_body`)
with its tier in ``vllm_xargs`` (and its tier's ``priority`` for ``vllm-priority``). What
the recorder does not hold (failures, retries, late sends, the client's own lateness) is
in the :class:`Outcome`; :func:`write_request_log` writes one JSON line per request.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import random
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp

from accelgen.bench.probe import completion_body
from accelgen.core.summary import quantile
from accelgen.core.tiers import TierSet
from accelgen.sim.metrics import Recorder
from accelgen.sim.workload import SimRequest

WARMUP_REQUESTS = 6
_TICK_S = 0.01


@dataclass(slots=True)
class Outcome:
    """What one configuration's replay produced besides token times."""

    failed: dict[str, str] = field(default_factory=dict)  # request id -> error
    unfinished: list[str] = field(default_factory=list)  # cut off at the drain limit
    late_sends_s: list[float] = field(default_factory=list)  # send time - arrival time
    retried: list[str] = field(default_factory=list)  # connection reset before any token
    token_times_s: dict[str, list[float]] = field(default_factory=dict)  # arrival of each token chunk
    loop_lags_s: list[float] = field(default_factory=list)  # how late the client's 10-ms ticks woke
    wall_s: float = 0.0
    start_wall_s: float = 0.0  # time.time() at the replay's t = 0 (to match the step log)

    def client_figures(self) -> dict[str, Any]:
        """The client's side of a report entry: failures, retries, and how late it sent and woke."""
        return {
            "failed": len(self.failed),
            "unfinished": len(self.unfinished),
            "retried": len(self.retried),
            "errors": dict(list(self.failed.items())[:5]),
            "send_lag_p99_s": quantile(self.late_sends_s, 0.99) or 0.0,
            "client_loop_lag_p99_s": quantile(self.loop_lags_s, 0.99) or 0.0,
            "client_loop_lag_max_s": max(self.loop_lags_s, default=0.0),
        }


def _body(req: SimRequest, name: str, tiers: TierSet, rng: random.Random, vocab: int) -> dict[str, Any]:
    """``req``'s completion body for configuration ``name``: its tier, and its priority if asked."""
    tier = tiers.get(req.tier)
    body = completion_body(req.prompt_tokens, req.output_tokens, rng, vocab)
    body["vllm_xargs"] = {"slo_tier": tier.name}
    if name == "vllm-priority":
        body["priority"] = tier.priority
    return body


async def _send(
    session: aiohttp.ClientSession, url: str, body: dict[str, Any], on_tokens: Callable[[int], None]
) -> None:
    """POST one streaming completion; ``on_tokens(n)`` for every chunk with n new tokens."""
    seen = 0
    async with session.post(url, json=body) as resp:
        if resp.status != 200:
            raise RuntimeError(f"HTTP {resp.status}: {(await resp.text())[:200]}")
        async for raw in resp.content:
            line = raw.strip()
            if not line.startswith(b"data:"):
                continue
            data = line[5:].strip()
            if data == b"[DONE]":
                break
            chunk = json.loads(data)
            if "error" in chunk:
                raise RuntimeError(str(chunk["error"])[:200])
            usage = chunk.get("usage") or {}
            total = usage.get("completion_tokens")
            if total is None:  # no usage in this chunk: one token per choice with text
                total = seen + sum(1 for c in chunk.get("choices", []) if c.get("text"))
            if total > seen:
                on_tokens(total - seen)
                seen = total
    if seen < body["max_tokens"]:
        raise RuntimeError(f"stream ended after {seen} of {body['max_tokens']} tokens")


async def _warm_up(session: aiohttp.ClientSession, url: str, tiers: TierSet, *, vocab: int, seed: int) -> None:
    """A few requests of growing prompts, not recorded, in the default tier."""
    # The first requests of a fresh engine pay one-time costs, and AccelGen calibrates
    # its latency model on these steps.
    warm_rng = random.Random(seed + 1)
    warm = [completion_body(64 + 160 * i, 24, warm_rng, vocab) for i in range(WARMUP_REQUESTS)]
    for b in warm:
        b["vllm_xargs"] = {"slo_tier": tiers.default}
    await asyncio.gather(*(_send(session, url, b, lambda n: None) for b in warm))


def _error(err: BaseException) -> str:
    return f"{type(err).__name__}: {err}"


@dataclass(frozen=True, slots=True)
class _Replay:
    """One replay's clock (``t = 0`` at ``t0`` on ``loop``), its connection and its records."""

    session: aiohttp.ClientSession
    url: str
    bodies: dict[str, dict[str, Any]]
    recorder: Recorder
    outcome: Outcome
    loop: asyncio.AbstractEventLoop
    t0: float

    def now_s(self) -> float:
        """Seconds since the replay's start."""
        return self.loop.time() - self.t0

    async def run(self, requests: Sequence[SimRequest], *, drain_s: float) -> None:
        """Send every request at its arrival; cancel what still runs ``drain_s`` after the last."""
        tick = asyncio.ensure_future(self._tick())
        tasks = {asyncio.ensure_future(self._one(r)): r.request_id for r in requests}
        last = requests[-1].arrival_s if requests else 0.0
        remaining = self.t0 + last + drain_s - self.loop.time()
        _, pending = await asyncio.wait(tasks, timeout=max(remaining, 0.1))
        for task in pending:
            task.cancel()
            self.outcome.unfinished.append(tasks[task])
        if pending:
            await asyncio.gather(*pending, return_exceptions=True)
        tick.cancel()
        self.outcome.wall_s = self.now_s()

    async def _one(self, req: SimRequest) -> None:
        """Wait for ``req``'s arrival, stream it, and record it finished or dropped."""
        delay = self.t0 + req.arrival_s - self.loop.time()
        if delay > 0:
            await asyncio.sleep(delay)
        self.outcome.late_sends_s.append(max(0.0, self.now_s() - req.arrival_s))
        error = await self._stream(req.request_id)
        if error is not None:
            self.outcome.failed[req.request_id] = error
            self.recorder.dropped(req.request_id)
            return
        self.recorder.finished(req.request_id, self.now_s())

    async def _stream(self, request_id: str) -> str | None:
        """Stream one request, stamping its tokens; the error that ended it, or None."""
        times = self.outcome.token_times_s[request_id] = []

        def on_tokens(n: int) -> None:
            now = self.now_s()
            times.append(now)
            for _ in range(n):
                self.recorder.token(request_id, now)

        for attempt in range(2):
            try:
                await _send(self.session, self.url, self.bodies[request_id], on_tokens)
                return None
            except aiohttp.ClientConnectionError as err:
                # A pooled keep-alive connection reset before any token: send again
                # (the time lost stays in this request's TTFT).
                if attempt > 0 or times:
                    return _error(err)
                self.outcome.retried.append(request_id)
            except Exception as err:  # a failed request is counted, never fatal
                return _error(err)
        raise AssertionError("the second attempt returns")

    async def _tick(self) -> None:
        """Record how late the client's own loop wakes (token times include it: it shares the CPU)."""
        while True:
            t = self.loop.time()
            await asyncio.sleep(_TICK_S)
            self.outcome.loop_lags_s.append(self.loop.time() - t - _TICK_S)


async def replay(
    base_url: str,
    name: str,
    requests: list[SimRequest],
    recorder: Recorder,
    tiers: TierSet,
    *,
    vocab: int,
    seed: int,
    drain_s: float,
) -> Outcome:
    """Replay ``requests`` on the server at ``base_url`` as configuration ``name``.

    Args:
        base_url: The server's ``http://host:port``.
        name: The engine configuration (``vllm-priority`` bodies carry the tier's priority).
        requests: In arrival order; each is sent at its ``arrival_s`` after the warm-up.
        recorder: Receives every token, finish and drop.
        tiers: The workload's tiers.
        vocab: Prompt token ids are drawn below this.
        seed: Seeds the prompts (the warm-up's with ``seed + 1``).
        drain_s: How long after the last arrival requests may still run.

    Returns:
        What the recorder does not hold: failures, retries, lateness, wall times.
    """
    outcome = Outcome()
    rng = random.Random(seed)
    bodies = {r.request_id: _body(r, name, tiers, rng, vocab) for r in requests}  # before the clock starts
    url = base_url + "/v1/completions"
    timeout = aiohttp.ClientTimeout(total=None, sock_read=600)
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0), timeout=timeout) as session:
        await _warm_up(session, url, tiers, vocab=vocab, seed=seed)
        loop = asyncio.get_running_loop()
        clock = _Replay(session, url, bodies, recorder, outcome, loop, t0=loop.time())
        outcome.start_wall_s = time.time()
        await clock.run(requests, drain_s=drain_s)
    return outcome


def write_request_log(path: Path, recorder: Recorder, outcome: Outcome) -> None:
    """One JSON line per request: its verdict and, for a missed one, why (late tokens' times).

    Times are seconds from the replay's start; ``start_wall_s`` in each line puts them on
    the step log's clock (``t_s``).
    """
    with path.open("w", encoding="utf-8") as f:
        for rid, rec in recorder.records.items():
            times = outcome.token_times_s.get(rid, [])
            tbt = rec.tier.tbt_slo_s
            late = [(b, b - a) for a, b in itertools.pairwise(times) if tbt is not None and b - a > tbt]
            line = {
                "id": rid,
                "tier": rec.tier.name,
                "arrival_s": rec.arrival_s,
                "ttft_s": rec.ttft_s,
                "tokens": rec.num_tokens,
                "late_tokens": rec.num_late,
                "met": rec.met(),
                "late_gaps": [[round(t, 4), round(gap, 4)] for t, gap in late],
                "error": outcome.failed.get(rid),
                "start_wall_s": outcome.start_wall_s,
            }
            f.write(json.dumps(line) + "\n")
