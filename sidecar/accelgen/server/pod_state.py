"""The pod as the sidecar sees it, for an endpoint picker: ``GET /pool/state`` and the counts
the sidecar's ``/metrics`` puts in vLLM's own series.

A picker that reads only vLLM's metrics sees the engine's queue, not the sidecar's: the
sidecar holds requests in its per-tier queues until the engine has room, so the engine
reports ~0 waiting on a pod whose sidecar queue is deep. Here every request the pod holds
is counted once::

    waiting = queued in the sidecar's admission + waiting inside the engine
    running = released by the sidecar and not finished − waiting inside the engine

(the engine's figures from its last poll; its raw values stay on ``/metrics`` as
``accelgen_engine_requests_waiting`` / ``_running``).

Headroom per tier (:attr:`accelgen.core.routing.PodState.headroom`, in **prompt
tokens**) is :func:`accelgen.core.routing.estimate.headroom_tokens` of:

- the prompt tokens the pod has not prefilled, per tier: every request queued in
  admission, and every released request whose first token has not come back;
- the predicted decode step of the requests now decoding and the seconds per prefill
  token beside it, from admission's latency model (:class:`~accelgen.core.admission.Speed`);
- the tightest TBT target among the released requests (the planner keeps every step
  within it, so prefill gets only what the decodes leave);
- the free KV in tokens, where vLLM's ``vllm:cache_config_info`` gives the cache's size
  (its blocks × block size × (1 − KV use)); absent otherwise (``kv_free_tokens`` null).

A tier whose admission queue is full (or the total queue) has at most 0 headroom: a
request sent there now is refused.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from accelgen.core.config import PolicyConfig
from accelgen.core.routing.estimate import headroom_tokens
from accelgen.core.tiers import SLOTier
from accelgen.server.engine_state import metric_samples, series_name
from accelgen.server.stream import Timing
from accelgen.server.tickets import Ticket

if TYPE_CHECKING:
    from accelgen.server.state import Sidecar

#: What the pod reports as a long prompt: the planner's own threshold by default.
LONG_PROMPT_TOKENS = PolicyConfig().long_prompt_tokens
_SERIES = ("vllm:num_requests_waiting", "vllm:num_requests_running")
_CACHE_INFO = "vllm:cache_config_info"  # vLLM's KV cache size, as labels of an info gauge


@dataclass(frozen=True, slots=True)
class InEngine:
    """A request the sidecar released to the engine: its ticket, and its tokens so far."""

    ticket: Ticket
    timing: Timing

    @property
    def first_token_s(self) -> float | None:
        return self.timing.timeline.first_token_s

    @property
    def last_token_s(self) -> float | None:
        return self.timing.timeline.last_token_s


def _slack(held: Iterable[InEngine], now_s: float) -> tuple[float | None, float | None]:
    """(tightest TBT of the released requests, least slack of those decoding)."""
    tbts = [e.ticket.tier.tbt_slo_s for e in held if e.ticket.tier.tbt_slo_s is not None]
    slacks = [
        e.last_token_s + e.ticket.tier.tbt_slo_s - now_s
        for e in held
        if e.last_token_s is not None and e.ticket.tier.tbt_slo_s is not None
    ]
    return (min(tbts) if tbts else None), (min(slacks) if slacks else None)


def _count_tiers(sidecar: Sidecar, held: Iterable[InEngine]) -> dict[str, int]:
    """Released requests per tier (every configured tier, 0 included)."""
    out = {t.name: 0 for t in sidecar.tiers}
    for e in held:
        out[e.ticket.tier.name] = out.get(e.ticket.tier.name, 0) + 1
    return out


def kv_free_tokens(vllm_text: str, kv_usage: float) -> int | None:
    """Free KV tokens: vLLM's ``cache_config_info`` (blocks × block size) × (1 − usage).

    None where the engine's page has no such series (an older vLLM, another engine).
    """
    for sample in metric_samples(vllm_text, (_CACHE_INFO,)):
        try:
            total = int(sample.labels["num_gpu_blocks"]) * int(sample.labels["block_size"])
        except (KeyError, ValueError):
            continue
        return max(0, round(total * (1.0 - min(1.0, max(0.0, kv_usage)))))
    return None


def _full(sidecar: Sidecar, tier: SLOTier) -> bool:
    admission, cfg = sidecar.admission, sidecar.admission.config
    return admission.depth.get(tier.name, 0) >= cfg.max_queue_per_tier or admission.queued() >= cfg.max_queue_total


def pod_state(sidecar: Sidecar, now_s: float) -> dict[str, Any]:
    """``GET /pool/state``: exactly the fields of :class:`PodState` less name and address."""
    admission, engine = sidecar.admission, sidecar.engine.state
    queued = admission.queued_tickets()
    held = list(sidecar.in_engine.values())
    prefilling = [e.ticket for e in held if e.first_token_s is None]
    by_tier = {t.name: 0 for t in sidecar.tiers}
    for ticket in (*queued, *prefilling):
        by_tier[ticket.tier.name] = by_tier.get(ticket.tier.name, 0) + ticket.num_prompt_tokens
    num_decodes = len(held) - len(prefilling)
    decode_s = admission.speed.decode_step_s(num_decodes)
    per_token_s = admission.speed.prefill_token_s(num_running=num_decodes)
    tightest_tbt_s, min_slack_s = _slack(held, now_s)
    kv_free = kv_free_tokens(engine.vllm_text, engine.kv_usage)
    headroom = headroom_tokens(
        sidecar.tiers,
        queued_tokens_by_tier=by_tier,
        decode_step_s=decode_s,
        prefill_s_per_token=per_token_s,
        tightest_tbt_s=tightest_tbt_s,
        kv_free_tokens=kv_free,
    )
    for tier in sidecar.tiers:
        if _full(sidecar, tier):
            headroom[tier.name] = min(0.0, headroom[tier.name])
    return {
        "ready": engine.ready,
        "waiting": len(queued) + engine.waiting,
        "running": max(0, admission.in_flight - engine.waiting),
        "kv_usage": engine.kv_usage,
        "headroom": {name: round(v, 1) if math.isfinite(v) else 0.0 for name, v in headroom.items()},
        "queued_prefill_tokens": sum(by_tier.values()),
        "queued_tokens_by_tier": by_tier,
        "min_slack_s": min_slack_s,
        "tightest_tbt_s": tightest_tbt_s,
        "decode_step_s": decode_s,
        "prefill_s_per_token": per_token_s,
        "running_by_tier": _count_tiers(sidecar, held),
        "long_prompts": sum(t.num_prompt_tokens >= LONG_PROMPT_TOKENS for t in (*queued, *prefilling)),
        "max_num_seqs": admission.config.max_in_flight,
        "kv_free_tokens": kv_free,
    }


def with_pod_counts(vllm_text: str, *, waiting: int, running: int) -> str:
    """The engine's ``vllm:*`` page with its waiting and running gauges set to the pod's.

    Each family keeps its first series' labels (the model name a picker filters on) with
    the pod's count; any other series of it (another engine of a data-parallel server)
    reads 0, so both a reader of one series and one that sums them see the pod's count.
    A page without the family gets an unlabelled series of it.
    """
    values = dict(zip(_SERIES, (waiting, running), strict=True))
    seen: set[str] = set()
    described: set[str] = set()  # families whose HELP/TYPE the page has
    out: list[str] = []
    for line in vllm_text.splitlines():
        name = series_name(line)
        words = line.split(" ", 3)
        if line.startswith("# ") and len(words) > 2 and words[2] in values:
            described.add(words[2])
            out.append(f"# HELP {words[2]} {_HELP[words[2]]}" if words[1] == "HELP" else line)
        elif name not in values:
            out.append(line)
        else:
            head = line[: line.rindex("}") + 1] if "{" in line else name
            out.append(f"{head} {values[name] if name not in seen else 0}")
            seen.add(name)
    for name in _SERIES:
        if name not in seen:
            if name not in described:
                out += [f"# HELP {name} {_HELP[name]}", f"# TYPE {name} gauge"]
            out.append(f"{name} {values[name]}")
    return "\n".join(out) + "\n"


_HELP = {
    "vllm:num_requests_waiting": "Requests waiting: the AccelGen sidecar's queues plus the engine's",
    "vllm:num_requests_running": "Requests the engine runs, as released by the AccelGen sidecar",
}
