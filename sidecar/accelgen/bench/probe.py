"""Measure a vLLM engine: fixed probe requests, and the latency model its steps fit.

A server that runs AccelGen's scheduler class times every step and fits its latency
model into its calibration file (:mod:`accelgen.vllm.calibration`); with the policy
``vllm-stock`` it schedules exactly like stock vLLM while doing so. The probe sends such
a server synthetic requests (``/v1/completions``, the prompt is token ids, ``max_tokens =
min_tokens``, ``ignore_eos``), one phase after another, each phase's requests at once::

    warm-up   a few short requests: a fresh engine's one-time costs
    decode    b requests of a p-token prompt, 24 tokens each: steps of b decodes at
              p..p+24 tokens of context, for (b, p) in DECODE_GRID
    prefill   one prompt of n tokens, one output token: an unchunked prefill of n, for
              n = cap/8, cap/4, cap/2, cap (cap = max_num_batched_tokens), three times
    mixed     8 decodes; once all of them decode, prompts of cap/4 and cap/2 beside them
    long      one prompt of 3 x cap tokens: chunks of cap at contexts 0, cap, 2 cap
    tail      2 requests of decodes only, long enough that the calibrator refits after
              every step above (it refits every max(32, samples / 8) steps)

Then the calibration file holds a fit of all of them (``load_fit``), which
:func:`accelgen.bench.sizing.measure_engine` reads by prediction only. The file can be
handed to AccelGen engines as their starting calibration.
"""

from __future__ import annotations

import dataclasses
import json
import math
import random
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from accelgen.bench.sizing import EngineMeasurement, measure_engine
from accelgen.core.latency import FittedLatencyModel
from accelgen.core.plan import EngineLimits
from accelgen.wire import WireError, read_engine_stats

if TYPE_CHECKING:
    from accelgen.launch import VllmServerConfig

#: (concurrent requests, prompt tokens) of the decode phases.
DECODE_GRID = ((1, 64), (4, 64), (16, 64), (4, 1024), (16, 256))
DECODE_TOKENS = 24
PREFILL_FRACTIONS = (8, 4, 2, 1)  # prompts of cap // f tokens
PREFILL_REPEATS = 3
LONG_PROMPT_CHUNKS = 3


@dataclass(frozen=True, slots=True)
class ProbeRequest:
    prompt_tokens: int
    output_tokens: int


@dataclass(frozen=True, slots=True)
class ProbePhase:
    """Requests sent at once; ``then`` is sent once every one of them has a token, so its
    prefills run in steps beside their decodes."""

    name: str
    requests: tuple[ProbeRequest, ...]
    then: tuple[ProbeRequest, ...] = ()

    @property
    def all_requests(self) -> tuple[ProbeRequest, ...]:
        return self.requests + self.then


@dataclass(frozen=True, slots=True)
class ProbeResult:
    """The engine's fitted model, what it says, and how it was obtained."""

    model: FittedLatencyModel
    measurement: EngineMeasurement
    calibration_file: Path
    num_requests: int
    wall_s: float
    num_steps: int | None = None  # from the stats file, when the server has one
    engine_port: int | None = None

    def to_dict(self) -> dict[str, Any]:
        return {
            "latency_model": self.model.to_dict(),
            "measurement": self.measurement.to_dict(),
            "calibration_file": str(self.calibration_file),
            "num_requests": self.num_requests,
            "num_steps": self.num_steps,
            "wall_s": self.wall_s,
            "engine_port": self.engine_port,
        }


def probe_phases(limits: EngineLimits, *, max_model_len: int) -> tuple[ProbePhase, ...]:
    """The probe for an engine with these limits (``num_kv_blocks``: the usable ones);
    every request fits the KV cache and ``max_model_len``."""
    cap = limits.max_num_batched_tokens
    kv_tokens = limits.num_kv_blocks * limits.block_size_tokens
    longest = max(1, min(max_model_len - DECODE_TOKENS - 1, kv_tokens // 2))

    def fit(num: int, prompt: int, output: int) -> tuple[ProbeRequest, ...]:
        # Clipped so that all `num` together use at most half the KV cache.
        num = max(1, min(num, limits.max_num_seqs))
        prompt = max(1, min(prompt, longest, kv_tokens // (2 * num) - output))
        return (ProbeRequest(prompt, output),) * num

    phases = [ProbePhase("warm-up", fit(1, 32, 8) + fit(1, 128, 8) + fit(1, 512, 8))]
    phases += [ProbePhase(f"decode-{b}x{p}", fit(b, p, DECODE_TOKENS)) for b, p in DECODE_GRID]
    phases += [
        ProbePhase(f"prefill-{cap // f}", fit(1, cap // f, 1))
        for _ in range(PREFILL_REPEATS)
        for f in PREFILL_FRACTIONS
    ]
    phases.append(ProbePhase("mixed", fit(8, 64, 2 * DECODE_TOKENS), then=fit(1, cap // 4, 1) + fit(1, cap // 2, 1)))
    if longest > cap:
        phases.append(ProbePhase("long", fit(1, LONG_PROMPT_CHUNKS * cap, 8)))
    tail = max(64, estimated_steps(phases, cap) // 4)
    phases.append(ProbePhase("tail", fit(2, 16, min(tail, max_model_len - 17))))
    return tuple(phases)


def estimated_steps(phases: Sequence[ProbePhase], cap: int) -> int:
    """Engine steps the phases take at least (prefill steps plus decode steps)."""
    total = 0
    for phase in phases:
        reqs = phase.all_requests
        total += math.ceil(sum(r.prompt_tokens for r in reqs) / cap) + max(r.output_tokens for r in reqs)
    return total


def measure(cfg: VllmServerConfig, limits: EngineLimits, *, log_file: Path, vocab: int, seed: int = 0) -> ProbeResult:
    """Start ``cfg``'s server (it must have a ``calibration_file`` and a ``max_model_len``), probe it, stop it."""
    from accelgen.launch import VllmServer

    if cfg.calibration_file is None or cfg.max_model_len is None:
        raise ValueError("the measurement engine needs a calibration_file and a max_model_len")
    cfg.calibration_file.unlink(missing_ok=True)  # the fit must be this engine's own
    phases = probe_phases(limits, max_model_len=cfg.max_model_len)
    with VllmServer(dataclasses.replace(cfg, log_file=log_file), start_timeout_s=420.0) as server:
        result = probe_server(
            server.base_url,
            phases,
            calibration_file=cfg.calibration_file,
            max_num_batched_tokens=limits.max_num_batched_tokens,
            vocab=vocab,
            seed=seed,
            stats_file=cfg.stats_file,
        )
    return dataclasses.replace(result, engine_port=server.port)


def probe_server(
    base_url: str,
    phases: Sequence[ProbePhase],
    *,
    calibration_file: Path,
    max_num_batched_tokens: int,
    vocab: int,
    seed: int = 0,
    stats_file: Path | None = None,
) -> ProbeResult:
    """Send ``phases`` to a started server, then read the fit it wrote.

    RuntimeError when a probe request fails or the server wrote no fit.
    """
    import asyncio

    from accelgen.vllm.calibration import load_fit

    t0 = time.monotonic()
    asyncio.run(_send_phases(base_url, phases, vocab=vocab, seed=seed))
    wall_s = time.monotonic() - t0
    if not calibration_file.exists():
        raise RuntimeError(f"the measurement engine wrote no calibration file ({calibration_file})")
    model = load_fit(calibration_file)
    return ProbeResult(
        model=model,
        measurement=measure_engine(model, max_num_batched_tokens=max_num_batched_tokens),
        calibration_file=calibration_file,
        num_requests=sum(len(p.all_requests) for p in phases),
        wall_s=wall_s,
        num_steps=_num_steps(stats_file),
    )


def _num_steps(stats_file: Path | None) -> int | None:
    if stats_file is None or not stats_file.exists():
        return None
    try:
        return read_engine_stats(stats_file).num_steps
    except (OSError, WireError):
        return None


async def _send_phases(base_url: str, phases: Sequence[ProbePhase], *, vocab: int, seed: int) -> None:
    import asyncio

    import aiohttp

    rng = random.Random(seed)
    url = base_url + "/v1/completions"
    timeout = aiohttp.ClientTimeout(total=None, sock_read=600)
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0), timeout=timeout) as session:
        for phase in phases:
            started = [asyncio.Event() for _ in phase.requests]
            tasks = [
                asyncio.ensure_future(_complete(session, url, _body(r, rng, vocab), ev))
                for r, ev in zip(phase.requests, started, strict=True)
            ]
            if phase.then:
                await asyncio.gather(*(ev.wait() for ev in started))
                tasks += [asyncio.ensure_future(_complete(session, url, _body(r, rng, vocab))) for r in phase.then]
            try:
                await asyncio.gather(*tasks)
            except Exception as err:
                for task in tasks:
                    task.cancel()
                raise RuntimeError(f"probe phase {phase.name}: {type(err).__name__}: {err}") from err


def completion_body(prompt_tokens: int, output_tokens: int, rng: random.Random, vocab: int) -> dict[str, Any]:
    """A streaming ``/v1/completions`` body: that many random token ids, exactly that many
    output tokens (``ignore_eos``), every chunk with the cumulative token count."""
    return {
        "model": "model",
        "prompt": [rng.randrange(10, vocab) for _ in range(prompt_tokens)],
        "max_tokens": output_tokens,
        "min_tokens": output_tokens,
        "ignore_eos": True,
        "temperature": 0.0,
        "stream": True,
        "stream_options": {"include_usage": True, "continuous_usage_stats": True},
    }


def _body(req: ProbeRequest, rng: random.Random, vocab: int) -> dict[str, Any]:
    return completion_body(req.prompt_tokens, req.output_tokens, rng, vocab)


async def _complete(session: Any, url: str, body: dict[str, Any], started: Any = None) -> None:
    """One streaming completion; ``started.set()`` at its first token (or its end)."""
    seen = 0
    try:
        async with session.post(url, json=body) as resp:
            if resp.status != 200:
                raise RuntimeError(f"HTTP {resp.status}: {(await resp.text())[:200]}")
            async for raw in resp.content:
                line = raw.strip()
                if not line.startswith(b"data:") or line[5:].strip() == b"[DONE]":
                    continue
                chunk = json.loads(line[5:])
                if "error" in chunk:
                    raise RuntimeError(str(chunk["error"])[:200])
                seen = max(seen, (chunk.get("usage") or {}).get("completion_tokens") or 0)
                if seen and started is not None:
                    started.set()
    finally:
        if started is not None:
            started.set()  # a failed request must not hold its phase back
    if seen < body["max_tokens"]:
        raise RuntimeError(f"stream ended after {seen} of {body['max_tokens']} tokens")
