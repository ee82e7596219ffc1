"""Shared constants and helpers of the vLLM engine tests (fixtures are in conftest.py).

Tests drive the in-process engine one step at a time::

    rid = add(engine, prompt_tokens=600, max_tokens=8, slo_tier="tight")
    with Recorder(engine) as rec:         # every SchedulerOutput of these steps
        run_until_idle(engine)
"""

from __future__ import annotations

import random
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

# The tiers of `accelgen bench overhead`, whose load the overhead test runs on this engine:
# tight (TTFT 3 s, TBT 150 ms), loose (TTFT 30 s, TBT 3 s, the default), batch (600 s).
from accelgen.bench.overhead_cmd import TIERS_YAML as TIERS_YAML

CAP_TOKENS = 2048  # max_num_batched_tokens: the largest chunk
KV_BLOCKS = 64  # num_gpu_blocks_override: 63 usable blocks of 128 tokens
KV_MEMORY_BYTES = 64 << 20  # > 64 blocks x 0.5 MiB (128 tokens x 2 layers x K,V x 256 x fp32)
MAX_MODEL_LEN = 6144  # < 63 usable blocks x 128: vLLM checks one request fits

_rng = random.Random(1234)
_counter = iter(range(10**9))
# vLLM appends a suffix to the id a request is added with; outputs carry the original.
_internal_ids: dict[str, str] = {}


def prompt(num_tokens: int) -> dict[str, list[int]]:
    """A prompt of exactly ``num_tokens`` random token ids (no two share a prefix)."""
    return {"prompt_token_ids": [_rng.randrange(10, 1000) for _ in range(num_tokens)]}


def add(engine: Any, *, prompt_tokens: int, max_tokens: int, **xargs: Any) -> str:
    """Queue one request (SLO metadata as ``vllm_xargs`` would carry it); its engine id."""
    from vllm import SamplingParams

    params = SamplingParams(max_tokens=max_tokens, ignore_eos=True, temperature=0.0, extra_args=xargs or None)
    external_id = f"t{next(_counter)}"
    req_id: str = engine.llm.llm_engine.add_request(external_id, prompt(prompt_tokens), params)
    _internal_ids[external_id] = req_id
    return req_id


def step(engine: Any) -> list[Any]:
    outputs: list[Any] = engine.llm.llm_engine.step()
    return outputs


def run_until_idle(engine: Any, *, max_steps: int = 20_000) -> dict[str, int]:
    """Step until every request has finished; output tokens of each finished request."""
    llm_engine = engine.llm.llm_engine
    finished: dict[str, int] = {}
    n = 0
    while llm_engine.has_unfinished_requests():
        for out in llm_engine.step():
            if out.finished:
                finished[_internal_ids.get(out.request_id, out.request_id)] = len(out.outputs[0].token_ids)
        n += 1
        assert n < max_steps, f"engine did not drain: {describe(engine)}"
    return finished


def describe(engine: Any) -> str:
    """The scheduler's state, for failure messages."""
    s = engine.scheduler
    lines = [f"policy={s.policy_name} free_blocks={s.kv_cache_manager.block_pool.get_num_free_blocks()}"]
    for r in s.requests.values():
        lines.append(
            f"  {r.request_id} {r.status.name} computed={r.num_computed_tokens} "
            f"prompt={r.num_prompt_tokens} out={r.num_output_tokens}"
        )
    if s.planner is not None:
        lines.append(f"  planner running={[m.request_id for m in s.planner.running]}")
        lines.append(f"  planner waiting={[m.request_id for m in s.planner.waiting()]}")
        lines.append(f"  planner free_blocks={s.planner.free_blocks}")
        lines.append(f"  last plan={s.last_plan}")
        lines.append(f"  model={s.calibrator.model}")
        lines.append(f"  waiting={[r.request_id for r in s.waiting]} deferred={s.deferred_waiting}")
    return "\n".join(lines)


class Recorder:
    """Collects every ``SchedulerOutput`` while active (wraps the instance's schedule)."""

    def __init__(self, engine: Any) -> None:
        self.scheduler = engine.scheduler
        self.outputs: list[Any] = []
        self.running_before: list[list[str]] = []

    def __enter__(self) -> Recorder:
        inner = self.scheduler.schedule

        def schedule(*args: Any, **kwargs: Any) -> Any:
            self.running_before.append([r.request_id for r in self.scheduler.running])
            out = inner(*args, **kwargs)
            self.outputs.append(out)
            return out

        self.scheduler.schedule = schedule
        return self

    def __exit__(self, *exc: object) -> None:
        del self.scheduler.schedule  # back to the class's method

    @property
    def preempted(self) -> list[str]:
        """Ids preempted in the recorded steps, in order."""
        return [rid for out in self.outputs for rid in sorted(out.preempted_req_ids or ())]


@contextmanager
def policy(engine: Any, name: str) -> Iterator[None]:
    """Run the block under another policy of the same engine (it must be idle)."""
    scheduler = engine.scheduler
    before = scheduler.policy_name
    scheduler.use_policy(name)
    try:
        yield
    finally:
        run_until_idle(engine)
        scheduler.use_policy(before)


def calibration_workload(engine: Any) -> None:
    """Varied steps — prefill chunks of many sizes and contexts, decodes of many batch
    sizes — until the calibrator has fitted at least once."""
    sizes = [96, 1800, 300, 700, 2500, 150, 1200, 450, 60, 900]
    for i, size in enumerate(sizes):
        add(engine, prompt_tokens=size, max_tokens=24 + 8 * (i % 4), slo_tier="loose")
        for _ in range(3):
            step(engine)
    run_until_idle(engine)


def vllm_import_error() -> str | None:
    """Why ``import vllm`` fails here (a reason to skip, named), or None."""
    try:
        import vllm  # noqa: F401
    except Exception as err:  # any failure to import is a reason to skip
        return f"{type(err).__name__}: {err}"
    return None
