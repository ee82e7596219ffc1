"""What crosses a process boundary, typed and versioned: one writer and one reader each.

Every document here is a frozen dataclass with ``to_json()`` (plain JSON types, with
its ``version``) and ``from_json()``, which raises :class:`WireError` naming the field
when a document is of a newer or unknown version, lacks a field or has one of the wrong
type. Keys a reader does not know are ignored, so a writer may add a field without a
new version; removing or retyping one needs a new version.

* :data:`SCHEDULER_CLS` — what vLLM's ``--scheduler-cls`` loads to run AccelGen, in
  the operator's pod spec and every engine this project starts.
* :class:`SloFields` — a request's SLO metadata in the OpenAI body's ``vllm_xargs``,
  written by the sidecar and read by the in-engine scheduler (clients talking to the
  engine directly write the same keys, without a version); :func:`resolve_tier` makes
  them a request's tier, in vLLM's scheduler and in the simulated engine alike.
* :class:`EngineStatsFile` — the in-engine scheduler's statistics (the vLLM engine's or
  the simulated engine's), a file rewritten atomically by :class:`EngineStatsRecorder`
  and read by :func:`read_engine_stats` (the sidecar, the benchmarks, tests).
* :class:`SidecarStats` — the sidecar's ``GET /stats``: per tier a
  :class:`~accelgen.core.summary.TierSummary` of its last window, and what it last saw
  of its engine; read by the operator.

Imports ``accelgen.core`` only: the sidecar, the simulator, the in-engine scheduler and
the operator all read and write these without importing each other.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import statistics
import tempfile
import time
import types
from collections import Counter, deque
from collections.abc import Mapping
from pathlib import Path
from typing import Any, TypeVar, Union, get_args, get_origin, get_type_hints

from accelgen.core.summary import TierSummary, quantile
from accelgen.core.tiers import SLOTier, TierSet

_T = TypeVar("_T")


class WireError(ValueError):
    """A document this reader does not understand: newer version, missing or mistyped field."""


def _is_number(value: object) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def _decode_value(kind: Any, value: object, where: str) -> Any:
    """``value`` checked against the annotation ``kind`` (and converted for dataclasses)."""
    origin = get_origin(kind)
    if origin in (Union, types.UnionType):
        options = get_args(kind)
        if value is None and type(None) in options:
            return None
        (inner,) = [option for option in options if option is not type(None)]
        return _decode_value(inner, value, where)
    if dataclasses.is_dataclass(kind) and isinstance(kind, type):
        if not isinstance(value, dict):
            raise WireError(f"{where} must be an object, got {value!r}")
        return _decode_fields(kind, value, where)
    if origin is dict:
        _, value_kind = get_args(kind)
        if not isinstance(value, dict):
            raise WireError(f"{where} must be an object, got {value!r}")
        if value_kind is Any:
            return dict(value)
        return {str(k): _decode_value(value_kind, v, f"{where}.{k}") for k, v in value.items()}
    if kind is float:
        if not _is_number(value):
            raise WireError(f"{where} must be a number, got {value!r}")
        return float(value)  # type: ignore[arg-type]
    if kind is int:
        if not isinstance(value, int) or isinstance(value, bool):
            raise WireError(f"{where} must be an integer, got {value!r}")
        return value
    if kind in (str, bool):
        if not isinstance(value, kind):
            raise WireError(f"{where} must be a {kind.__name__}, got {value!r}")
        return value
    raise TypeError(f"no wire decoding for {kind!r} at {where}")  # a programming error


def _decode_fields(cls: type[_T], doc: Mapping[str, object], where: str) -> _T:
    hints = get_type_hints(cls)
    values: dict[str, Any] = {}
    for spec in dataclasses.fields(cls):  # type: ignore[arg-type]
        if spec.name == "version":
            continue
        if spec.name not in doc:  # a default is the writer's, never a reader's guess
            raise WireError(f"{where}: missing field {spec.name!r}")
        values[spec.name] = _decode_value(hints[spec.name], doc[spec.name], f"{where}.{spec.name}")
    return cls(**values)


def decode(cls: type[_T], doc: object, *, what: str, version: int) -> _T:
    """A versioned document of type ``cls`` from parsed JSON; WireError if it is not one."""
    if not isinstance(doc, dict):
        raise WireError(f"{what} must be a JSON object, got {type(doc).__name__}")
    found = doc.get("version")
    if found is None:
        raise WireError(f"{what}: missing field 'version' (this reader reads version {version})")
    if not isinstance(found, int) or isinstance(found, bool) or found != version:
        newer = " (newer than this reader)" if isinstance(found, int) and found > version else ""
        raise WireError(f"{what}: version {found!r}{newer} is not the version {version} this reader reads")
    return _decode_fields(cls, doc, what)


def encode(document: Any) -> dict[str, Any]:
    """A wire dataclass as plain JSON types (its ``version`` included)."""
    out: dict[str, Any] = dataclasses.asdict(document)
    return out


# --- the engine's scheduler class --------------------------------------------------------

#: What vLLM's ``--scheduler-cls`` loads to run AccelGen (see :mod:`accelgen.vllm`):
#: the operator writes it into the engine container's arguments, the launcher into its
#: command line.
SCHEDULER_CLS = "accelgen.vllm.AccelGenScheduler"


# --- a request's SLO fields in vllm_xargs ---------------------------------------------

SLO_VERSION = 1
SLO_VERSION_KEY = "accelgen_slo_version"
SLO_TIER_KEY = "slo_tier"
#: What a client may write instead of ``slo_tier`` (the first one present wins).
SLO_TIER_ALIASES = ("tier", "accelgen_tier")
SLO_TARGET_KEYS = ("ttft_ms", "tbt_ms", "deadline_s")
#: Every key of the SLO fields: the sidecar drops a client's own before writing its.
SLO_KEYS = (SLO_VERSION_KEY, SLO_TIER_KEY, *SLO_TIER_ALIASES, *SLO_TARGET_KEYS)


def _positive(key: str, value: object) -> float:
    """A target as a float > 0; a numeric string counts (clients send them), a bool not."""
    number: object = value
    if isinstance(value, str):
        try:
            number = float(value)
        except ValueError:
            number = None
    if isinstance(number, int | float) and not isinstance(number, bool) and math.isfinite(number) and number > 0:
        return float(number)
    raise WireError(f"{key} must be a positive number, got {value!r}")


@dataclasses.dataclass(frozen=True, slots=True)
class SloFields:
    """A request's SLO metadata: a tier by name, and targets overriding the tier's.

    ``deadline_s`` (an offline request) excludes ``ttft_ms`` and ``tbt_ms``. Which tier
    names exist is the reader's tier set to say, not the wire's.
    """

    tier: str | None = None
    ttft_ms: float | None = None
    tbt_ms: float | None = None
    deadline_s: float | None = None

    def to_xargs(self) -> dict[str, Any]:
        """The ``vllm_xargs`` entries (only the fields that are set, and the version)."""
        out: dict[str, Any] = {SLO_VERSION_KEY: SLO_VERSION}
        if self.tier is not None:
            out[SLO_TIER_KEY] = self.tier
        for key in SLO_TARGET_KEYS:
            value = getattr(self, key)
            if value is not None:
                out[key] = value
        return out

    @classmethod
    def from_xargs(cls, xargs: Mapping[str, Any]) -> SloFields:
        """The SLO fields of a request's ``vllm_xargs`` (other keys are not ours).

        Raises:
            WireError: A version other than this reader's, a tier name that is not a
                string, a target that is not a positive number, or a deadline with
                targets.
        """
        version = xargs.get(SLO_VERSION_KEY, SLO_VERSION)  # none: a client's own metadata
        if version != SLO_VERSION or isinstance(version, bool):
            raise WireError(f"{SLO_VERSION_KEY} {version!r} is not the version {SLO_VERSION} this reader reads")
        key = next((k for k in (SLO_TIER_KEY, *SLO_TIER_ALIASES) if k in xargs), None)
        tier = None if key is None else xargs[key]
        if tier is not None and not isinstance(tier, str):
            raise WireError(f"{key} must be a string, got {tier!r}")
        targets = {k: _positive(k, xargs[k]) for k in SLO_TARGET_KEYS if k in xargs}
        if "deadline_s" in targets and len(targets) > 1:
            raise WireError("deadline_s excludes ttft_ms/tbt_ms")
        return cls(tier=tier, **targets)


@dataclasses.dataclass(frozen=True, slots=True)
class ResolvedTier:
    """The tier a request is scheduled under, and what was wrong with its SLO fields."""

    tier: SLOTier
    problem: str | None = None


def resolve_tier(xargs: object, tiers: TierSet, *, adopt_unknown: bool = False) -> ResolvedTier:
    """The tier of a request whose ``vllm_xargs`` is ``xargs``: its SLO fields over a tier.

    Fields that cannot be read fall back to the default tier, with the problem said:
    inside an engine a request never fails for its metadata (the sidecar checks it at
    the edge).

    Args:
        xargs: The request's ``vllm_xargs`` (vLLM's ``sampling_params.extra_args``);
            None or empty: the default tier.
        tiers: The engine's tiers.
        adopt_unknown: Whether a tier name not in ``tiers`` is kept (planned with the
            default tier's targets under the targets sent beside it) rather than
            replaced by the default tier and reported.

    Returns:
        The tier (a per-request copy when targets are sent) and, when the fields were
        unusable in part or whole, a description of the problem.
    """
    default = tiers.default_tier
    if not xargs:
        return ResolvedTier(default)
    if not isinstance(xargs, Mapping):
        return ResolvedTier(default, f"vllm_xargs must be an object, got {type(xargs).__name__}")
    try:
        fields = SloFields.from_xargs(xargs)
    except WireError as err:
        return ResolvedTier(default, str(err))
    if fields.tier is None or fields.tier in tiers:
        base = tiers.get(fields.tier)
    elif adopt_unknown:
        base = dataclasses.replace(default, name=fields.tier)
    else:
        return ResolvedTier(default, f"unknown tier {fields.tier!r}")
    return _with_targets(base, fields)


def _with_targets(base: SLOTier, fields: SloFields) -> ResolvedTier:
    """``base`` with the targets of ``fields``: a deadline makes it offline, TTFT/TBT online."""
    if fields.deadline_s is not None:
        return ResolvedTier(dataclasses.replace(base, ttft_slo_s=None, tbt_slo_s=None, deadline_s=fields.deadline_s))
    if fields.ttft_ms is None and fields.tbt_ms is None:
        return ResolvedTier(base)
    if base.is_offline and (fields.ttft_ms is None or fields.tbt_ms is None):
        return ResolvedTier(base, "an offline tier needs both ttft_ms and tbt_ms to go online")
    ttft_s = base.ttft_slo_s if fields.ttft_ms is None else fields.ttft_ms / 1000.0
    tbt_s = base.tbt_slo_s if fields.tbt_ms is None else fields.tbt_ms / 1000.0
    return ResolvedTier(dataclasses.replace(base, ttft_slo_s=ttft_s, tbt_slo_s=tbt_s, deadline_s=None))


# --- the engine stats file -------------------------------------------------------------

ENGINE_STATS_VERSION = 1


@dataclasses.dataclass(frozen=True, slots=True)
class BudgetTokens:
    """The planner's token budget: the last step's, and over the recent steps."""

    last: int
    min: int | None  # None before the first step
    max: int | None
    median: float | None


@dataclasses.dataclass(frozen=True, slots=True)
class StepTimes:
    """The last step's predicted and measured seconds, and the mean relative error."""

    last_predicted: float | None
    last_measured: float | None
    mean_error: float | None


@dataclasses.dataclass(frozen=True, slots=True)
class Durations:
    """Seconds over the recent steps (None with no step yet)."""

    median: float | None
    p99: float | None
    mean: float | None
    num: int


@dataclasses.dataclass(frozen=True, slots=True)
class EngineStatsFile:
    """The in-engine scheduler's statistics, as one engine process publishes them.

    ``calibration`` is the latency model's report (``Calibrator.report()``), an opaque
    JSON object here: its reader is the sidecar's latency-model gauges.
    """

    policy: str
    pid: int
    started_at_s: float  # wall clock (time.time()), for a reader in another process
    updated_at_s: float
    num_steps: int
    num_empty_plans: int
    num_inexact_steps: int
    num_fallback_steps: int
    num_unexecuted_admissions: int
    budget_tokens: BudgetTokens
    step_time_s: StepTimes
    planner_s: Durations
    schedule_s: Durations
    preemptions_by_tier: dict[str, int]
    engine_preemptions_by_tier: dict[str, int]  # the subset vLLM made on its own
    requests_by_tier: dict[str, int]
    slo_metadata_problems: dict[str, int]
    calibration: dict[str, Any]
    version: int = ENGINE_STATS_VERSION

    @property
    def num_preemptions(self) -> int:
        return sum(self.preemptions_by_tier.values())

    def to_json(self) -> dict[str, Any]:
        return encode(self)

    @classmethod
    def from_json(cls, doc: object) -> EngineStatsFile:
        return decode(cls, doc, what="engine stats", version=ENGINE_STATS_VERSION)


def write_engine_stats(path: Path, stats: EngineStatsFile) -> None:
    """Replace ``path`` with ``stats`` atomically: a reader never sees half a file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".stats-", suffix=".json")
    with os.fdopen(fd, "w", encoding="utf-8") as f:
        json.dump(stats.to_json(), f, indent=1)
    # NOTE: mkstemp makes it 0600; the sidecar reading it may run as another user.
    os.chmod(tmp, 0o644)
    os.replace(tmp, path)


def read_engine_stats(path: Path) -> EngineStatsFile:
    """The stats file at ``path``; OSError if unreadable, WireError if not this format."""
    try:
        doc = json.loads(path.read_text(encoding="utf-8"))
    except ValueError as err:  # UnicodeDecodeError included
        raise WireError(f"engine stats {path}: not JSON ({err})") from None
    return EngineStatsFile.from_json(doc)


def _durations(values: list[float]) -> Durations:
    return Durations(
        median=statistics.median(values) if values else None,
        p99=quantile(values, 0.99),
        mean=statistics.fmean(values) if values else None,
        num=len(values),
    )


class EngineStatsRecorder:
    """The writer of the stats file: one engine's counters and recent per-step timings.

    The engine (vLLM's scheduler, the simulated engine) updates the public counters and
    windows as it runs and calls :meth:`maybe_write`; :meth:`snapshot` is the file.

    Args:
        policy: Name of the policy in use.
        path: The stats file, or None to keep the numbers in memory only.
        interval_s: Least time between two writes.
        window: Steps kept for the medians and quantiles.
    """

    def __init__(self, *, policy: str, path: Path | None = None, interval_s: float = 0.5, window: int = 4096) -> None:
        self.policy = policy
        self.path = path
        self.interval_s = interval_s
        self.started_s = time.time()
        self.num_steps = 0
        self.num_empty_plans = 0
        self.num_inexact_steps = 0
        self.num_fallback_steps = 0
        self.num_unexecuted_admissions = 0
        self.preemptions_by_tier: Counter[str] = Counter()
        self.engine_preemptions_by_tier: Counter[str] = Counter()
        self.requests_by_tier: Counter[str] = Counter()
        self.slo_problems: Counter[str] = Counter()
        self.last_budget_tokens = 0
        self.schedule_s: deque[float] = deque(maxlen=window)
        self.planner_s: deque[float] = deque(maxlen=window)
        self.budget_tokens: deque[int] = deque(maxlen=window)
        self.step_errors: deque[float] = deque(maxlen=window)
        self.last_predicted_s: float | None = None
        self.last_measured_s: float | None = None
        self.calibration: dict[str, Any] = {}
        self._last_write_s = 0.0

    def record_timing(self, *, predicted_s: float, measured_s: float) -> None:
        """One step's predicted and measured duration."""
        self.last_predicted_s = predicted_s
        self.last_measured_s = measured_s
        if measured_s > 0:
            self.step_errors.append(abs(predicted_s - measured_s) / measured_s)

    def snapshot(self) -> EngineStatsFile:
        """What the file says now."""
        budgets = list(self.budget_tokens)
        errors = list(self.step_errors)
        return EngineStatsFile(
            policy=self.policy,
            pid=os.getpid(),
            started_at_s=self.started_s,
            updated_at_s=time.time(),
            num_steps=self.num_steps,
            num_empty_plans=self.num_empty_plans,
            num_inexact_steps=self.num_inexact_steps,
            num_fallback_steps=self.num_fallback_steps,
            num_unexecuted_admissions=self.num_unexecuted_admissions,
            budget_tokens=BudgetTokens(
                last=self.last_budget_tokens,
                min=min(budgets) if budgets else None,
                max=max(budgets) if budgets else None,
                median=statistics.median(budgets) if budgets else None,
            ),
            step_time_s=StepTimes(
                last_predicted=self.last_predicted_s,
                last_measured=self.last_measured_s,
                mean_error=statistics.fmean(errors) if errors else None,
            ),
            planner_s=_durations(list(self.planner_s)),
            schedule_s=_durations(list(self.schedule_s)),
            preemptions_by_tier=dict(self.preemptions_by_tier),
            engine_preemptions_by_tier=dict(self.engine_preemptions_by_tier),
            requests_by_tier=dict(self.requests_by_tier),
            slo_metadata_problems=dict(self.slo_problems),
            calibration=self.calibration,
        )

    def maybe_write(self, *, force: bool = False) -> None:
        """Rewrite the file if ``interval_s`` has passed since the last write (or ``force``)."""
        now = time.monotonic()
        if self.path is None or (not force and now - self._last_write_s < self.interval_s):
            return
        self._last_write_s = now
        write_engine_stats(self.path, self.snapshot())

    def close(self) -> None:
        """The last write."""
        self.maybe_write(force=True)


# --- the sidecar's GET /stats ------------------------------------------------------------

STATS_VERSION = 1
_TIER_COUNTS = {"completed": "num_completed", "slo_met": "num_slo_met", "rejected": "num_rejected"}
_TIER_COUNTS.update(num_tokens="num_tokens", num_good_tokens="num_good_tokens")
_TIER_SECONDS = ("ttft_p99_s", "tbt_p99_s")


@dataclasses.dataclass(frozen=True, slots=True)
class EngineView:
    """What the sidecar last saw of its engine."""

    ready: bool = False
    running: int = 0
    waiting: int = 0
    kv_usage: float = 0.0  # fraction of the KV cache in use, in [0, 1]


def _non_negative(raw: Mapping[str, object], key: str, where: str, *, integer: bool) -> float:
    value = raw.get(key)
    if value is None:
        raise WireError(f"{where}: missing field {key!r}")
    if not isinstance(value, int | float) or isinstance(value, bool) or not math.isfinite(value) or value < 0:
        raise WireError(f"{where}.{key} must be a non-negative number, got {value!r}")
    if integer and not isinstance(value, int):
        raise WireError(f"{where}.{key} must be a whole number, got {value!r}")
    return float(value)


def _tier_json(tier: TierSummary) -> dict[str, Any]:
    out: dict[str, Any] = {"name": tier.name}
    out.update({key: getattr(tier, attr) for key, attr in _TIER_COUNTS.items()})
    out.update({key: getattr(tier, key) for key in _TIER_SECONDS})
    # Derived from the counts (core.summary's definitions), for readers that only show them.
    out.update(
        attainment=tier.attainment,
        goodput_rps=tier.goodput_rps,
        goodput_tokens_per_s=tier.goodput_tokens_per_s,
        throughput_rps=tier.throughput_rps,
        throughput_tokens_per_s=tier.throughput_tokens_per_s,
    )
    return out


def _tier_from_json(raw: object, where: str, window_s: float) -> TierSummary:
    if not isinstance(raw, dict) or not isinstance(raw.get("name"), str):
        raise WireError(f"{where} must be an object with a string name")
    counts = {attr: int(_non_negative(raw, key, where, integer=True)) for key, attr in _TIER_COUNTS.items()}
    seconds = {key: _non_negative(raw, key, where, integer=False) for key in _TIER_SECONDS}
    if counts["num_slo_met"] > counts["num_completed"]:
        raise WireError(f"{where}: slo_met exceeds completed")
    if counts["num_good_tokens"] > counts["num_tokens"]:
        raise WireError(f"{where}: num_good_tokens exceeds num_tokens")
    # The sidecar judges the requests that completed in its window.
    return TierSummary(
        name=raw["name"],
        window_s=window_s,
        num_requests=counts["num_completed"],
        num_completed=counts["num_completed"],
        num_slo_met=counts["num_slo_met"],
        num_rejected=counts["num_rejected"],
        num_tokens=counts["num_tokens"],
        num_good_tokens=counts["num_good_tokens"],
        ttft_p99_s=seconds["ttft_p99_s"],
        tbt_p99_s=seconds["tbt_p99_s"],
    )


@dataclasses.dataclass(frozen=True, slots=True)
class SidecarStats:
    """One sidecar's ``GET /stats``: its last window per tier, and its engine."""

    pool: str | None
    window_s: int
    tiers: tuple[TierSummary, ...]
    engine: EngineView
    version: int = STATS_VERSION

    def to_json(self) -> dict[str, Any]:
        return {
            "version": self.version,
            "pool": self.pool,
            "window_s": self.window_s,
            "tiers": [_tier_json(t) for t in self.tiers],
            "engine": dataclasses.asdict(self.engine),
        }

    @classmethod
    def from_json(cls, doc: object) -> SidecarStats:
        """A ``/stats`` answer; WireError names the first field that is not the format."""
        what = "/stats"
        head = decode(_StatsHead, doc, what=what, version=STATS_VERSION)
        assert isinstance(doc, dict)  # decode checked it
        if head.window_s <= 0:
            raise WireError(f"{what}.window_s must be positive, got {head.window_s}")
        tiers_raw = doc.get("tiers")
        if not isinstance(tiers_raw, list):
            raise WireError(f"{what}.tiers must be a list")
        tiers = tuple(_tier_from_json(t, f"{what}.tiers[{i}]", head.window_s) for i, t in enumerate(tiers_raw))
        engine = head.engine
        for key in ("running", "waiting", "kv_usage"):
            _non_negative(dataclasses.asdict(engine), key, f"{what}.engine", integer=key != "kv_usage")
        # NOTE: an engine's usage may round past 1; it is a fraction all the same.
        engine = dataclasses.replace(engine, kv_usage=min(1.0, engine.kv_usage))
        return cls(pool=head.pool, window_s=head.window_s, tiers=tiers, engine=engine)


@dataclasses.dataclass(frozen=True, slots=True)
class _StatsHead:
    """The fields of ``/stats`` the generic decoder checks (tiers are checked apart)."""

    pool: str | None
    window_s: int
    engine: EngineView
