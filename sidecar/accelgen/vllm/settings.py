"""The in-engine scheduler's settings, read from the environment of the vLLM process.

vLLM builds the scheduler itself (``--scheduler-cls``) and passes it no arguments of
ours, so settings travel in environment variables, which the EngineCore process inherits:

====================================  ===================================================
``ACCELGEN_TIERS``                     tier YAML (the file the simulator and sidecar read);
                                       unset: one tier ``default`` (TTFT 2 s, TBT 200 ms)
``ACCELGEN_SCHEDULER_CONFIG``          scheduler YAML, see below
``ACCELGEN_POLICY``                    policy name; overrides the YAML's ``policy``
``ACCELGEN_STATS_FILE``                stats snapshot (JSON), see :mod:`accelgen.vllm.stats`
``ACCELGEN_STEP_LOG``                  per-step JSON lines
``ACCELGEN_CALIBRATION_FILE``          persisted latency fit, read at start, rewritten
====================================  ===================================================

The scheduler YAML::

    policy: accelgen              # any name of accelgen.core.policies (not clairvoyant ones)
    gamma_s: 0.75                 # ... and any other PolicyConfig field
    safety_margin_s: 0.005
    long_prompt_tokens: 2048
    calibration_file: /var/lib/accelgen/fit.json
    stats_file: /run/accelgen/engine.json
    step_log: null
    min_fit_samples: 32           # samples before the fitted model replaces the prior
    refit_every: 32
    slowdown_quantile: 0.99       # plan each region of shapes at this quantile of measured/fitted
                                  # (>= 1; see accelgen.core.calibration); null: never scale
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from accelgen.config import load_tiers, read_yaml
from accelgen.core.config import PolicyConfig, parse_policy_config
from accelgen.core.errors import ConfigError
from accelgen.core.slo import PLANNING_QUANTILE
from accelgen.core.tiers import ENGINE_DEFAULT_TIERS, TierSet

_ADAPTER_KEYS = {
    "policy",
    "calibration_file",
    "stats_file",
    "step_log",
    "min_fit_samples",
    "refit_every",
    "slowdown_quantile",
}


@dataclass(frozen=True, slots=True)
class SchedulerSettings:
    """Everything :class:`accelgen.vllm.AccelGenScheduler` needs besides vLLM's config."""

    tiers: TierSet = ENGINE_DEFAULT_TIERS
    policy: str = "accelgen"
    policy_config: PolicyConfig = field(default_factory=PolicyConfig)
    calibration_file: Path | None = None
    stats_file: Path | None = None
    step_log: Path | None = None
    min_fit_samples: int = 32
    refit_every: int = 32
    slowdown_quantile: float | None = PLANNING_QUANTILE


def _path(value: Any, field: str) -> Path | None:
    if value is None or value == "":
        return None
    if not isinstance(value, str):
        raise ConfigError(f"must be a path, got {value!r}", field=field)
    return Path(value)


def _count(raw: Mapping[str, Any], key: str, default: int) -> int:
    value = raw.get(key, default)
    if isinstance(value, bool) or not isinstance(value, int) or value < 2:
        raise ConfigError(f"must be an integer >= 2, got {value!r}", field=key)
    return value


def _quantile(value: Any, field: str) -> float | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int | float) or not 0 < value <= 1:
        raise ConfigError(f"must be a number in (0, 1] or null, got {value!r}", field=field)
    return float(value)


def parse_scheduler_config(raw: object, *, tiers: TierSet = ENGINE_DEFAULT_TIERS) -> SchedulerSettings:
    """Settings from the scheduler YAML's mapping; ConfigError names the bad field."""
    if raw is None:
        raw = {}
    if not isinstance(raw, Mapping):
        raise ConfigError("the scheduler configuration must be a mapping")
    policy = raw.get("policy", "accelgen")
    if not isinstance(policy, str):
        raise ConfigError(f"must be a policy name, got {policy!r}", field="policy")
    tuning = {k: v for k, v in raw.items() if k not in _ADAPTER_KEYS}
    return SchedulerSettings(
        tiers=tiers,
        policy=policy,
        policy_config=parse_policy_config(tuning),
        calibration_file=_path(raw.get("calibration_file"), "calibration_file"),
        stats_file=_path(raw.get("stats_file"), "stats_file"),
        step_log=_path(raw.get("step_log"), "step_log"),
        min_fit_samples=_count(raw, "min_fit_samples", 32),
        refit_every=_count(raw, "refit_every", 32),
        slowdown_quantile=_quantile(raw.get("slowdown_quantile", PLANNING_QUANTILE), "slowdown_quantile"),
    )


def settings_from_env(environ: Mapping[str, str]) -> SchedulerSettings:
    """Settings from ``ACCELGEN_*`` variables (see the module docstring)."""
    tiers_path = environ.get("ACCELGEN_TIERS")
    tiers = load_tiers(tiers_path) if tiers_path else ENGINE_DEFAULT_TIERS
    config_path = environ.get("ACCELGEN_SCHEDULER_CONFIG")
    if config_path:
        try:
            settings = parse_scheduler_config(read_yaml(config_path), tiers=tiers)
        except ConfigError as err:
            raise err.within(source=config_path) from None
    else:
        settings = SchedulerSettings(tiers=tiers)
    overrides: dict[str, Any] = {}
    if environ.get("ACCELGEN_POLICY"):
        overrides["policy"] = environ["ACCELGEN_POLICY"]
    for key, var in (
        ("stats_file", "ACCELGEN_STATS_FILE"),
        ("step_log", "ACCELGEN_STEP_LOG"),
        ("calibration_file", "ACCELGEN_CALIBRATION_FILE"),
    ):
        if environ.get(var):
            overrides[key] = Path(environ[var])
    if not overrides:
        return settings
    values = {f: getattr(settings, f) for f in SchedulerSettings.__dataclass_fields__}
    values.update(overrides)
    return SchedulerSettings(**values)
