"""Iteration latency models: predict how long one engine iteration takes, and invert that.

An iteration's cost is described by :class:`BatchShape`. Two models share the
:class:`LatencyModel` interface:

* :class:`ProfileLatencyModel` — token-proportional time from measured per-operator GPU
  profiles (the non-attention part of a layer, times the layer count) plus analytic
  attention terms and a fixed per-iteration overhead;
* :class:`FittedLatencyModel` — non-negative least squares on measured
  ``(shape, duration)`` samples over the shape's terms (tokens, decodes, attention
  pairs, KV read by decodes, and for chunks deep into a prompt the pairs against cached
  context, the cached KV each chunk reads, the chunks), with its fit error, for
  calibrating against a running engine;
* :class:`QuantileLatencyModel` — a fitted model scaled by the machine's slowdown plus,
  per region of shape space (:func:`region_of`: decode / prefill / mixed × short / long
  context), an allowance for its steps' tail: the planner plans with a high quantile of
  each step's measured time.

All are monotone in every field of the shape, so :func:`max_prefill_tokens_within` can
invert them (in closed form for the fitted ones, by bisection otherwise).
"""

from __future__ import annotations

import bisect
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any, Protocol

import numpy as np

from accelgen.core.errors import ConfigError


@dataclass(frozen=True, slots=True)
class BatchShape:
    """What an iteration computes, in the terms its kernels cost.

    Args:
        num_prefill_tokens: Prompt (or recompute) tokens in prefill chunks.
        num_decodes: Requests decoding one token each.
        prefill_attention_pairs: Σ over prefill chunks of chunk × (context before it +
            chunk / 2): the query-key pairs prefill attention computes.
        decode_kv_tokens: Σ over decodes of their context length: KV tokens read.
        prefill_context_pairs: The part of ``prefill_attention_pairs`` against context
            already in the KV cache (Σ chunk × context before it). Attention over cached
            blocks runs another kernel than attention within the chunk, at another cost.
        prefill_kv_tokens: Σ over prefill chunks of the context before them: cached KV
            every chunk reads once, however few its tokens (a chunk deep into a long
            prompt costs this even when it is small).
        num_prefills: Prefill chunks (sequences) in the batch.

    ::

        one chunk of s tokens after c cached ones:
            |<------ c cached ------>|<-- s new -->|
            pairs = s·(c + s/2)   context pairs = s·c   prefill KV tokens = c
    """

    num_prefill_tokens: int = 0
    num_decodes: int = 0
    prefill_attention_pairs: float = 0.0
    decode_kv_tokens: int = 0
    prefill_context_pairs: float = 0.0
    prefill_kv_tokens: int = 0
    num_prefills: int = 0

    @property
    def num_tokens(self) -> int:
        return self.num_prefill_tokens + self.num_decodes

    def plus_prefill(self, num_tokens: int, *, context_tokens: int) -> BatchShape:
        """This shape with one more prefill chunk of ``num_tokens`` after ``context_tokens``."""
        return BatchShape(
            num_prefill_tokens=self.num_prefill_tokens + num_tokens,
            num_decodes=self.num_decodes,
            prefill_attention_pairs=self.prefill_attention_pairs + attention_pairs(num_tokens, context_tokens),
            decode_kv_tokens=self.decode_kv_tokens,
            prefill_context_pairs=self.prefill_context_pairs + float(num_tokens * context_tokens),
            prefill_kv_tokens=self.prefill_kv_tokens + context_tokens,
            num_prefills=self.num_prefills + 1,
        )

    def plus_decode(self, *, context_tokens: int) -> BatchShape:
        return BatchShape(
            num_prefill_tokens=self.num_prefill_tokens,
            num_decodes=self.num_decodes + 1,
            prefill_attention_pairs=self.prefill_attention_pairs,
            decode_kv_tokens=self.decode_kv_tokens + context_tokens,
            prefill_context_pairs=self.prefill_context_pairs,
            prefill_kv_tokens=self.prefill_kv_tokens,
            num_prefills=self.num_prefills,
        )

    def plus_decodes(self, count: int, kv_tokens: int) -> BatchShape:
        """This shape with ``count`` more decodes reading ``kv_tokens`` of context between them."""
        return replace(self, num_decodes=self.num_decodes + count, decode_kv_tokens=self.decode_kv_tokens + kv_tokens)

    def to_list(self) -> list[float]:
        """The fields in order (the step log's ``shape``); :meth:`from_list` reads it back."""
        return [
            self.num_prefill_tokens,
            self.num_decodes,
            self.prefill_attention_pairs,
            self.decode_kv_tokens,
            self.prefill_context_pairs,
            self.prefill_kv_tokens,
            self.num_prefills,
        ]

    @classmethod
    def from_list(cls, values: Sequence[float]) -> BatchShape:
        """A shape from :meth:`to_list` (a shorter list, from an older log, leaves the rest 0)."""
        v = [*values, 0, 0, 0, 0, 0, 0, 0][:7]
        return cls(int(v[0]), int(v[1]), float(v[2]), int(v[3]), float(v[4]), int(v[5]), int(v[6]))


#: Shape regions whose prediction errors are told apart (see :func:`region_of`).
REGIONS = tuple(f"{kind}-{ctx}" for kind in ("decode", "prefill", "mixed") for ctx in ("short", "long"))


def region_of(shape: BatchShape, *, long_context_tokens: int) -> str:
    """The region of shape space an iteration falls in: what it runs × how deep its context is.

    ``decode`` / ``prefill`` / ``mixed`` by what the batch holds; ``long`` when the mean
    cached context of its prefill chunks, or the mean context its decodes read, is
    ``long_context_tokens`` or more. A model can be right in one region and wrong in
    another (attention deep into a long prompt runs other kernels than a short chat's),
    so errors are kept apart. NOTE: per chunk, not per token, so a chunk's size never
    moves a batch between regions (a region-scaled model stays monotone in it).
    """
    context = shape.decode_kv_tokens / shape.num_decodes if shape.num_decodes else 0.0
    if shape.num_prefills:
        kind = "mixed" if shape.num_decodes else "prefill"
        context = max(context, shape.prefill_kv_tokens / shape.num_prefills)
    else:
        kind = "decode"
    return f"{kind}-long" if context >= long_context_tokens else f"{kind}-short"


def attention_pairs(chunk_tokens: int, context_tokens: int) -> float:
    """Query-key pairs of causal attention for a chunk that follows ``context_tokens``."""
    return chunk_tokens * (context_tokens + chunk_tokens / 2.0)


class LatencyModel(Protocol):
    """Predicts the wall time of one iteration."""

    @property
    def name(self) -> str:
        """Registry name or origin, for reports."""
        ...

    def predict_s(self, shape: BatchShape) -> float:
        """Seconds one iteration of ``shape`` takes (> 0)."""
        ...


def max_prefill_tokens_within(
    model: LatencyModel,
    limit_s: float,
    *,
    base: BatchShape,
    context_tokens: int,
    cap_tokens: int,
) -> int:
    """Largest chunk ``s`` ≤ ``cap_tokens`` with ``predict(base + chunk s) ≤ limit_s``.

    Returns 0 when even the base alone does not fit (the caller decides what to drop).
    The fitted model is inverted in closed form (the planner does this several times a
    step); any other model by bisection.
    """
    if cap_tokens <= 0 or model.predict_s(base) > limit_s:
        return 0
    if isinstance(model, FittedLatencyModel | QuantileLatencyModel):
        return model.max_prefill_tokens(limit_s, base=base, context_tokens=context_tokens, cap_tokens=cap_tokens)
    if model.predict_s(base.plus_prefill(cap_tokens, context_tokens=context_tokens)) <= limit_s:
        return cap_tokens
    lo, hi = 0, cap_tokens  # predict(lo) fits, predict(hi) does not
    while hi - lo > 1:
        mid = (lo + hi) // 2
        if model.predict_s(base.plus_prefill(mid, context_tokens=context_tokens)) <= limit_s:
            lo = mid
        else:
            hi = mid
    return lo


def _settle(
    n: int, model: LatencyModel, limit_s: float, *, base: BatchShape, context_tokens: int, cap_tokens: int
) -> int:
    """``n`` (a solved chunk size) moved to the largest that fits by ``model``'s own
    predictions: a step or two at most, so rounding never lets a chunk overrun."""

    def fits(k: int) -> bool:
        return model.predict_s(base.plus_prefill(k, context_tokens=context_tokens)) <= limit_s

    while n > 0 and not fits(n):
        n -= 1
    while n < cap_tokens and fits(n + 1):
        n += 1
    return n


@dataclass(frozen=True, slots=True)
class ProfileLatencyModel:
    """Measured token-proportional time plus analytic attention and a fixed overhead.

    Args:
        name: Registry name, e.g. ``h100-llama-2-7b``.
        mlp_points: ``(num_tokens, seconds)`` for the non-attention part of the whole
            model (all layers), sorted by tokens; interpolated linearly, and extrapolated
            past the largest batch with the least-squares slope of the upper half.
        prefill_pair_s: Seconds per query-key pair of prefill attention (all layers).
        decode_kv_token_s: Seconds per KV token read by decode attention (all layers).
        overhead_s: Fixed cost of every iteration (scheduling, sampling, launches).
        kv_bytes_per_token: KV cache bytes one token holds (for capacity planning).
    """

    name: str
    mlp_points: tuple[tuple[int, float], ...]
    prefill_pair_s: float
    decode_kv_token_s: float
    overhead_s: float
    kv_bytes_per_token: int = 0
    _xs: tuple[int, ...] = field(init=False, repr=False, compare=False)
    _tail_slope: float = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        if len(self.mlp_points) < 2:
            raise ConfigError("a profile needs at least two batch sizes", field="mlp_points")
        object.__setattr__(self, "_xs", tuple(p[0] for p in self.mlp_points))
        upper = [p for p in self.mlp_points if p[0] >= self.mlp_points[-1][0] / 2]
        if len(upper) < 2:
            upper = list(self.mlp_points[-2:])
        slope = float(np.polyfit([p[0] for p in upper], [p[1] for p in upper], 1)[0])
        object.__setattr__(self, "_tail_slope", max(slope, 0.0))

    def mlp_s(self, num_tokens: int) -> float:
        pts = self.mlp_points
        i = bisect.bisect_left(self._xs, num_tokens)
        if i == 0:
            return pts[0][1]
        if i >= len(pts):
            last_x, last_y = pts[-1]
            return last_y + self._tail_slope * (num_tokens - last_x)
        (x0, y0), (x1, y1) = pts[i - 1], pts[i]
        return y0 + (y1 - y0) * (num_tokens - x0) / (x1 - x0)

    def predict_s(self, shape: BatchShape) -> float:
        tokens = shape.num_prefill_tokens + shape.num_decodes
        if tokens == 0:
            return self.overhead_s
        return (
            self.overhead_s
            + self.mlp_s(tokens)
            + self.prefill_pair_s * shape.prefill_attention_pairs
            + self.decode_kv_token_s * shape.decode_kv_tokens
        )


_FEATURES = (
    "intercept_s",
    "per_token_s",
    "per_decode_s",
    "per_attention_pair_s",
    "per_kv_token_s",
    "per_context_pair_s",
    "per_prefill_kv_token_s",
    "per_prefill_s",
)
#: The first five: what a file written before the context terms existed holds.
_BASE_FEATURES = _FEATURES[:5]


def _features(shape: BatchShape) -> tuple[float, ...]:
    return (
        1.0,
        float(shape.num_prefill_tokens + shape.num_decodes),
        float(shape.num_decodes),
        shape.prefill_attention_pairs,
        float(shape.decode_kv_tokens),
        shape.prefill_context_pairs,
        float(shape.prefill_kv_tokens),
        float(shape.num_prefills),
    )


@dataclass(frozen=True, slots=True)
class FittedLatencyModel:
    """A linear model over :class:`BatchShape`'s terms, fitted to measured iterations.

    Coefficients (all ≥ 0, in the order of ``_FEATURES``): a fixed cost per iteration,
    per token, per decode, per attention pair, per KV token a decode reads, the extra
    cost of a pair against cached context, per cached KV token a prefill chunk reads,
    and per prefill chunk. Five values (the terms before the context ones) are padded
    with zeros. ``fit_error`` is the mean absolute percentage error on the samples it
    was fitted on; ``p90_error`` the 90th percentile of the per-sample relative error.
    """

    coefficients: tuple[float, ...]
    num_samples: int = 0
    fit_error: float = 0.0
    p90_error: float = 0.0
    name: str = "fitted"

    def __post_init__(self) -> None:
        c = tuple(float(v) for v in self.coefficients)
        if len(c) not in (len(_BASE_FEATURES), len(_FEATURES)):
            raise ValueError(f"needs {len(_BASE_FEATURES)} or {len(_FEATURES)} coefficients, got {len(c)}")
        object.__setattr__(self, "coefficients", c + (0.0,) * (len(_FEATURES) - len(c)))

    def predict_s(self, shape: BatchShape) -> float:
        c = self.coefficients
        return (
            c[0]
            + c[1] * (shape.num_prefill_tokens + shape.num_decodes)
            + c[2] * shape.num_decodes
            + c[3] * shape.prefill_attention_pairs
            + c[4] * shape.decode_kv_tokens
            + c[5] * shape.prefill_context_pairs
            + c[6] * shape.prefill_kv_tokens
            + c[7] * shape.num_prefills
        )

    def scaled(self, factor: float) -> FittedLatencyModel:
        """This model with every prediction ``factor`` times as long (a linear model scales
        by its coefficients), e.g. for a machine that currently runs slower than it was
        fitted. The name stays: it says where the model came from."""
        return FittedLatencyModel(
            coefficients=tuple(v * factor for v in self.coefficients),
            num_samples=self.num_samples,
            fit_error=self.fit_error,
            p90_error=self.p90_error,
            name=self.name,
        )

    def max_prefill_tokens(self, limit_s: float, *, base: BatchShape, context_tokens: int, cap_tokens: int) -> int:
        """:func:`max_prefill_tokens_within` for this model, solved rather than searched.

        A chunk of ``s`` tokens after ``c = context_tokens`` adds a fixed
        ``c6·c + c7`` (the cached KV it reads, the chunk itself) and
        ``(c1 + (c3 + c5)·c)·s + c3/2·s²`` to ``base``'s time: a quadratic in ``s``.
        When the fixed part alone overruns, not one token fits (0). The root is rounded
        down, then checked against :meth:`predict_s` itself (a step or two at most) so
        that floating-point rounding never lets a chunk overrun the limit.
        """
        c = self.coefficients
        room = limit_s - self.predict_s(base) - c[6] * context_tokens - c[7]
        if room < 0:
            return 0
        linear = c[1] + (c[3] + c[5]) * context_tokens
        # The positive root of c3/2·s² + linear·s = room, in the form without cancellation.
        denominator = math.sqrt(linear * linear + 2.0 * c[3] * room) + linear
        if denominator <= 0:
            return cap_tokens  # chunk tokens cost nothing in this model
        n = max(0, math.floor(min(2.0 * room / denominator, float(cap_tokens))))
        return _settle(n, self, limit_s, base=base, context_tokens=context_tokens, cap_tokens=cap_tokens)

    @classmethod
    def fit(
        cls, samples: Sequence[tuple[BatchShape, float]], *, relative: bool = False, name: str = "fitted"
    ) -> FittedLatencyModel:
        """Non-negative least squares on ``(shape, seconds)`` samples.

        ``relative``: minimise squared *relative* error (each row weighted by 1/duration)
        instead of squared seconds, where one 500 ms prefill outweighs a hundred 5 ms
        decode steps; a planner deciding TBT budgets needs every step right in
        proportion. Columns with no variation in the samples are left out (coefficient
        0), so a decode-only calibration does not invent a prefill cost.
        """
        if len(samples) < 2:
            raise ValueError("need at least two samples to fit a latency model")
        x = np.array([_features(s) for s, _ in samples], dtype=float)
        y = np.array([d for _, d in samples], dtype=float)
        w = 1.0 / np.maximum(y, 1e-9) if relative else np.ones_like(y)
        active = [0] + [j for j in range(1, x.shape[1]) if np.ptp(x[:, j]) > 0]
        coef = np.zeros(x.shape[1])
        # Active-set NNLS: refit without the columns whose coefficients come out negative.
        while active:
            # Scale columns so tiny per-pair costs are not lost to conditioning.
            scale = np.maximum(np.abs(x[:, active]).max(axis=0), 1e-12)
            sol = np.linalg.lstsq(x[:, active] / scale * w[:, None], y * w, rcond=None)[0] / scale
            negative = {j for j, v in zip(active, sol, strict=True) if v < 0}
            if not negative:
                coef[active] = sol
                break
            active = [j for j in active if j not in negative]
        pred = x @ coef
        rel = np.abs(pred - y) / np.maximum(y, 1e-12)
        return cls(
            coefficients=tuple(float(v) for v in coef),
            num_samples=len(samples),
            fit_error=float(rel.mean()),
            p90_error=float(np.quantile(rel, 0.9)),
            name=name,
        )

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "coefficients": dict(zip(_FEATURES, self.coefficients, strict=True)),
            "num_samples": self.num_samples,
            "fit_error": self.fit_error,
            "p90_error": self.p90_error,
        }

    @classmethod
    def from_dict(cls, raw: Mapping[str, Any]) -> FittedLatencyModel:
        coeffs = raw.get("coefficients")
        if not isinstance(coeffs, Mapping) or not set(_BASE_FEATURES) <= set(coeffs) <= set(_FEATURES):
            raise ConfigError(
                f"needs the keys {list(_BASE_FEATURES)}, and may have {list(_FEATURES[len(_BASE_FEATURES) :])}",
                field="coefficients",
            )
        values = []
        for key in _FEATURES:
            v = coeffs.get(key, 0.0)
            if isinstance(v, bool) or not isinstance(v, int | float) or not math.isfinite(v) or v < 0:
                raise ConfigError(f"must be a non-negative number, got {v!r}", field=f"coefficients.{key}")
            values.append(float(v))
        return cls(
            coefficients=tuple(values),
            num_samples=int(raw.get("num_samples", 0)),
            fit_error=float(raw.get("fit_error", 0.0)),
            p90_error=float(raw.get("p90_error", 0.0)),
            name=str(raw.get("name", "fitted")),
        )


@dataclass(frozen=True, slots=True)
class QuantileLatencyModel:
    """A fitted model that predicts a high quantile of a step's time, not its mean.

    ``base × scale + offset(region)``: ``scale`` is how much slower than fitted the
    machine runs (every shape alike); per region of shape space (:func:`region_of`) the
    offset is the allowance its steps' tail needs beyond that (measured − scaled fit at
    a high quantile: jitter from other processes is a time, not a proportion, and a
    region the fit gets wrong needs more of it). Regions not in ``offsets_s`` use
    ``default_offset_s``.

    Args:
        base: The fitted model.
        scale: Factor of every prediction (≥ 1 in use).
        offsets_s: Region name → seconds added to its steps' predictions (≥ 0).
        default_offset_s: Seconds added in every other region.
        long_context_tokens: Where a region's context turns ``long``.
    """

    base: FittedLatencyModel
    scale: float = 1.0
    offsets_s: Mapping[str, float] = field(default_factory=dict)
    default_offset_s: float = 0.0
    long_context_tokens: int = 1024
    _scaled: FittedLatencyModel = field(init=False, repr=False, compare=False)
    _offsets: dict[str, float] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "_scaled", self.base.scaled(self.scale))
        object.__setattr__(self, "_offsets", {r: self.offsets_s.get(r, self.default_offset_s) for r in REGIONS})

    @property
    def name(self) -> str:
        return self.base.name

    def offset_s(self, shape: BatchShape) -> float:
        return self._offsets[region_of(shape, long_context_tokens=self.long_context_tokens)]

    def predict_s(self, shape: BatchShape) -> float:
        return self._scaled.predict_s(shape) + self.offset_s(shape)

    def max_prefill_tokens(self, limit_s: float, *, base: BatchShape, context_tokens: int, cap_tokens: int) -> int:
        """The scaled fit's closed form, less the offset of the region the chunk puts the
        batch in (which does not depend on the chunk's size, see :func:`region_of`),
        then checked against :meth:`predict_s` itself (rounding never lets it overrun)."""
        offset = self._offsets[
            region_of(base.plus_prefill(1, context_tokens=context_tokens), long_context_tokens=self.long_context_tokens)
        ]
        n = self._scaled.max_prefill_tokens(
            limit_s - offset, base=base, context_tokens=context_tokens, cap_tokens=cap_tokens
        )
        return _settle(n, self, limit_s, base=base, context_tokens=context_tokens, cap_tokens=cap_tokens)
