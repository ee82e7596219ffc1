"""A closed-loop streaming load generator: time to first token and token gaps, client side.

Used by ``accelgen bench proxy`` to send the very same load straight to an engine and
through the sidecar. ``concurrency`` workers each send streaming completions back to
back until ``num_requests`` have been sent.
"""

from __future__ import annotations

import asyncio
import statistics
import time
from dataclasses import dataclass
from typing import Any

import aiohttp

from accelgen.core.summary import quantile


@dataclass(frozen=True, slots=True)
class Sample:
    """One request as the client saw it."""

    ok: bool
    ttft_s: float = 0.0
    gaps_s: tuple[float, ...] = ()
    num_events: int = 0


async def _one(session: aiohttp.ClientSession, url: str, body: dict[str, Any]) -> Sample:
    start = time.perf_counter()
    first = last = 0.0
    gaps: list[float] = []
    events = 0
    async with session.post(url + "/v1/completions", json=body) as resp:
        if resp.status != 200:
            await resp.read()
            return Sample(ok=False)
        async for line in resp.content:
            if not line.startswith(b"data:") or line.startswith(b"data: [DONE]"):
                continue
            now = time.perf_counter()
            if events == 0:
                first = now
            else:
                gaps.append(now - last)
            last = now
            events += 1
    return Sample(ok=events > 0, ttft_s=first - start, gaps_s=tuple(gaps), num_events=events)


async def run_load(
    url: str, *, num_requests: int, concurrency: int, body: dict[str, Any]
) -> tuple[list[Sample], float]:
    """Send ``num_requests`` streaming requests; (samples, wall seconds)."""
    samples: list[Sample] = []
    remaining = num_requests
    timeout = aiohttp.ClientTimeout(total=300)
    connector = aiohttp.TCPConnector(limit=0)
    async with aiohttp.ClientSession(timeout=timeout, connector=connector) as session:

        async def worker() -> None:
            nonlocal remaining
            while remaining > 0:
                remaining -= 1
                try:
                    samples.append(await _one(session, url, body))
                except (aiohttp.ClientError, TimeoutError):
                    samples.append(Sample(ok=False))

        start = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(concurrency)))
        wall_s = time.perf_counter() - start
    return samples, wall_s


def _quantile(values: list[float], q: float) -> float:
    return quantile(values, q) or 0.0


def summarize(samples: list[Sample], wall_s: float) -> dict[str, float]:
    """TTFT p50/p99, mean token gap, events (≈ tokens) per second, failures."""
    ok = [s for s in samples if s.ok]
    ttfts = [s.ttft_s for s in ok]
    gaps = [g for s in ok for g in s.gaps_s]
    return {
        "requests": float(len(samples)),
        "failed": float(len(samples) - len(ok)),
        "ttft_p50_ms": 1000.0 * _quantile(ttfts, 0.50),
        "ttft_p99_ms": 1000.0 * _quantile(ttfts, 0.99),
        "token_gap_mean_ms": 1000.0 * (statistics.fmean(gaps) if gaps else 0.0),
        "tokens_per_s": sum(s.num_events for s in ok) / wall_s if wall_s > 0 else 0.0,
        "requests_per_s": len(ok) / wall_s if wall_s > 0 else 0.0,
        "wall_s": wall_s,
    }
