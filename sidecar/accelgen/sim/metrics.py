"""Per-request and per-tier metrics of a simulated run, computed once.

* TTFT = first token − arrival; a TBT gap = time between consecutive tokens;
* a token is on time if its gap (the TTFT for the first) is within the target;
* a request meets its SLO if TTFT is on time and at most max(1, ⌈1 % of output⌉)
  tokens are late; offline requests if they complete before their deadline;
* attainment = requests meeting SLO / all requests; token attainment = on-time tokens /
  tokens of online requests; goodput = SLO-meeting requests (and their output tokens)
  per second; throughput = the same over all completed requests. Rates are over the
  run's span, first arrival to last completion.

The counts, attainment, rates and p99s are a :class:`~accelgen.core.summary.TierSummary`
over that span (every request judged); the rest is the simulator's own.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from accelgen.core.slo import TokenTimeline
from accelgen.core.summary import TierSummary, quantile
from accelgen.core.tiers import TierSet
from accelgen.sim.workload import SimRequest


@dataclass(slots=True)
class _Record(TokenTimeline):
    finish_s: float | None = None
    dropped: bool = False
    preemptions: int = 0
    refused: str | None = None  # "rejected" at arrival or "shed" from the queue (full system)

    def met(self) -> bool:
        return self.finish_s is not None and self.meets_slo(self.finish_s)


@dataclass(slots=True)
class Recorder:
    """Collects token times as the engine emits them."""

    requests: Sequence[SimRequest]
    tiers: TierSet
    admission: bool = False  # the full system: count what admission refused and shed
    records: dict[str, _Record] = field(init=False)
    gaps_s: dict[str, list[float]] = field(init=False)

    def __post_init__(self) -> None:
        self.records = {r.request_id: _Record(self.tiers.get(r.tier), r.arrival_s) for r in self.requests}
        self.gaps_s = {t.name: [] for t in self.tiers}

    def token(self, request_id: str, now: float) -> None:
        rec = self.records[request_id]
        gap_s = rec.token(now)
        if gap_s is not None:
            self.gaps_s[rec.tier.name].append(gap_s)

    def finished(self, request_id: str, now: float) -> None:
        self.records[request_id].finish_s = now

    def dropped(self, request_id: str) -> None:
        self.records[request_id].dropped = True

    def preempted(self, request_id: str) -> None:
        self.records[request_id].preemptions += 1

    def refused(self, request_id: str, how: str) -> None:
        """Admission refused the request at arrival (``"rejected"``) or shed it (``"shed"``)."""
        self.records[request_id].refused = how

    def summary(self) -> dict[str, Any]:
        """The metrics of ``accelgen bench sim --json``, overall and under ``tiers``."""
        recs = list(self.records.values())
        starts = [r.arrival_s for r in recs]
        ends = [r.finish_s for r in recs if r.finish_s is not None]
        span = (max(ends) - min(starts)) if ends else 0.0
        out = _summarize("all", recs, [g for gaps in self.gaps_s.values() for g in gaps], span)
        out["tiers"] = {
            t.name: _summarize(t.name, [r for r in recs if r.tier.name == t.name], self.gaps_s[t.name], span)
            for t in self.tiers
        }
        if self.admission:  # a refused request never ran: a miss, counted here as well
            for key, part in ((None, out), *out["tiers"].items()):
                chosen = [r for r in recs if key is None or r.tier.name == key]
                part["rejected"] = sum(r.refused == "rejected" for r in chosen)
                part["shed"] = sum(r.refused == "shed" for r in chosen)
        return out


def _q(values: Sequence[float], q: float) -> float:
    return quantile(values, q) or 0.0


def _summarize(name: str, recs: Sequence[_Record], gaps: Sequence[float], span_s: float) -> dict[str, Any]:
    done = [r for r in recs if r.finish_s is not None]
    met = [r for r in done if r.met()]
    ttfts = [r.first_token_s - r.arrival_s for r in recs if r.first_token_s is not None]
    tier = TierSummary(
        name=name,
        window_s=span_s,
        num_requests=len(recs),  # a dropped or unfinished request has missed
        num_completed=len(done),
        num_slo_met=len(met),
        num_tokens=sum(r.num_tokens for r in done),
        num_good_tokens=sum(r.num_tokens for r in met),
        ttft_p99_s=_q(ttfts, 0.99),
        tbt_p99_s=_q(gaps, 0.99),
    )
    online = [r for r in recs if r.tier.deadline_s is None]
    tokens = sum(r.num_tokens for r in online)
    # NOTE: a late first token counts as a late token here (it is not in num_late).
    late = sum(r.num_late + (r.ttft_s is not None and r.ttft_s > (r.tier.ttft_slo_s or math.inf)) for r in online)
    # Why completed online requests missed: their first token, or too many late ones.
    missed = [r for r in done if r.tier.deadline_s is None and not r.met()]
    missed_ttft = sum(1 for r in missed if r.ttft_s is None or r.ttft_s > (r.tier.ttft_slo_s or math.inf))
    return {
        "requests": tier.num_requests,
        "completed": tier.num_completed,
        "slo_met": tier.num_slo_met,
        "dropped": sum(r.dropped for r in recs),
        "throughput_rps": tier.throughput_rps,
        "throughput_tokens_per_s": tier.throughput_tokens_per_s,
        "goodput_rps": tier.goodput_rps,
        "goodput_tokens_per_s": tier.goodput_tokens_per_s,
        "attainment": tier.attainment,
        "token_attainment": (tokens - late) / tokens if tokens else 1.0,
        "late_tokens": late,  # online tokens (first ones included) later than their target
        "ttft_p50_s": _q(ttfts, 0.5),
        "ttft_p99_s": tier.ttft_p99_s,
        "tbt_p99_s": tier.tbt_p99_s,
        "latency_mean_s": float(np.mean([r.finish_s - r.arrival_s for r in done])) if done else 0.0,  # type: ignore[operator]
        "preemptions": sum(r.preemptions for r in recs),
        "missed_ttft": missed_ttft,
        "missed_tbt": len(missed) - missed_ttft,
    }
