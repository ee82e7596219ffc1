"""Scheduler tuning: one frozen record read by every policy (each uses its own fields).

Read from the ``scheduler`` section of a workload file or the engine's scheduler YAML::

    policy: accelgen
    gamma_s: 0.75
    safety_margin_s: 0.005
    long_prompt_tokens: 2048
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from accelgen.core.errors import ConfigError


@dataclass(frozen=True, slots=True)
class PolicyConfig:
    """Policy tuning with the paper's values (or ours, marked) as defaults.

    Args:
        gamma_s: Slack window γ of multi-resource batching (paper: 0.75 s).
        safety_margin_s: [ours] Kept free under the tightest running deadline when
            sizing the token budget, for latency-model error.
        long_prompt_tokens: [ours] Prompts at least this long get exclusive allocation.
        max_window: [ours] Most prefill candidates one best-fit window considers (bounds
            the planner's cost with deep queues).
        decode_fraction: [ours] Admit a new request only while one decode step of every
            running request plus it stays within this fraction of the tightest TBT
            target among them: admitting past that makes every online token late.
        reserve_kv: [ours] Admit a new request only if the free KV, less what running
            requests still need for their (predicted) outputs, holds its prompt and its
            own predicted output: otherwise decodes later run out of blocks and
            preemptions recompute work already done.
        dynamic_chunking: Size the budget from the tightest running deadline (ablation).
        slo_ordering: Order by slack and admit the urgent set first (ablation).
        best_fit: Two-resource best-fit within the γ window (ablation: first fit).
        deprioritize_lost: [ours] Queued requests whose TTFT is already lost go behind
            those that can still make theirs.
        reference_decodes: [ours] Concurrent decodes assumed when a fixed budget is
            sized for a TBT target (Sarathi-Serve's chunk size).
        reference_context_tokens: [ours] Their mean context for that sizing.
        output_lengths: [ours] How AccelGen predicts a request's output length (for
            KV reservation and offline slack): ``mean``, the tier's running mean;
            ``learned``, online quantiles per tier and prompt-length bucket, given
            the tokens produced so far (:mod:`accelgen.core.output_lengths`).
        output_quantile: [ours] The quantile ``learned`` predicts, in (0, 1]: above
            the median, since KV reserved for an output that runs longer is recomputed
            after a preemption, and reserved for one that ends sooner is only idle.
    """

    gamma_s: float = 0.75
    safety_margin_s: float = 0.005
    long_prompt_tokens: int = 2048
    max_window: int = 32
    decode_fraction: float = 0.8
    reserve_kv: bool = True
    dynamic_chunking: bool = True
    slo_ordering: bool = True
    best_fit: bool = True
    deprioritize_lost: bool = True
    reference_decodes: int = 32
    reference_context_tokens: int = 1024
    output_lengths: str = "mean"
    output_quantile: float = 0.7

    def replace(self, **changes: Any) -> PolicyConfig:
        return dataclasses.replace(self, **changes)


#: The values a string field may take.
_CHOICES = {"output_lengths": ("mean", "learned")}
#: Number fields that are fractions in (0, 1].
_UNIT_INTERVAL = {"output_quantile"}


def parse_policy_config(raw: Mapping[str, Any] | None) -> PolicyConfig:
    """A :class:`PolicyConfig` from a mapping; ConfigError names the bad field."""
    if raw is None:
        return PolicyConfig()
    if not isinstance(raw, Mapping):
        raise ConfigError("must be a mapping of tuning values")
    fields = {f.name: f for f in dataclasses.fields(PolicyConfig)}
    values: dict[str, Any] = {}
    for key, value in raw.items():
        if key not in fields:
            raise ConfigError(f"unknown key; expected one of {sorted(fields)}", field=str(key))
        default = getattr(PolicyConfig(), key)
        if isinstance(default, str):
            if value not in _CHOICES[key]:
                raise ConfigError(f"must be one of {', '.join(_CHOICES[key])}, got {value!r}", field=key)
        elif isinstance(default, bool):
            if not isinstance(value, bool):
                raise ConfigError(f"must be true or false, got {value!r}", field=key)
        elif isinstance(default, int):
            if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
                raise ConfigError(f"must be a positive integer, got {value!r}", field=key)
        else:
            if isinstance(value, bool) or not isinstance(value, int | float):
                raise ConfigError(f"must be a number, got {value!r}", field=key)
            if not math.isfinite(value) or value < 0:
                raise ConfigError(f"must be a non-negative number, got {value!r}", field=key)
            value = float(value)
            if key in _UNIT_INTERVAL and not 0 < value <= 1:
                raise ConfigError(f"must be in (0, 1], got {value!r}", field=key)
        values[key] = value
    return PolicyConfig(**values)
