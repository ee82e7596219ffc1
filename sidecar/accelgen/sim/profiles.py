"""Latency models by name, built from the real GPU profiles in ``shared/data/profiles``.

Names look like ``h100-llama-2-7b`` or ``a100-llama-2-70b-tp4``. The profile CSVs give
the non-attention time of one transformer layer per batch size (operator medians,
milliseconds); attention and a fixed per-iteration overhead are added analytically
from the hardware's bandwidth and compute [ours, constants below]. A path to a JSON
file instead of a name loads a :class:`FittedLatencyModel` (e.g. calibrated on an engine).
"""

from __future__ import annotations

import csv
import json
import os
import re
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import cast

from accelgen.core.errors import ConfigError
from accelgen.core.latency import BatchShape, FittedLatencyModel, LatencyModel, ProfileLatencyModel

DATA_ENV = "ACCELGEN_DATA_DIR"

#: The sim engine's default: a small profile shaped like a 7B model on one GPU (about
#: 10 ms per decode step at 32 requests).
# NOTE: typed as the protocol (a frozen dataclass's `name` does not satisfy its attribute).
DEFAULT_SIM_MODEL: LatencyModel = cast(
    LatencyModel,
    ProfileLatencyModel(
        name="sidecar-default",
        mlp_points=((1, 0.0050), (64, 0.0062), (256, 0.0110), (1024, 0.0300), (4096, 0.1100)),
        prefill_pair_s=2.0e-10,
        decode_kv_token_s=2.0e-9,
        overhead_s=0.002,
    ),
)


@dataclass(frozen=True, slots=True)
class ScaledLatencyModel:
    """Another model's predictions times ``factor`` (a slower engine of the same shape)."""

    inner: LatencyModel
    factor: float
    name: str = "scaled"

    def predict_s(self, shape: BatchShape) -> float:
        return self.inner.predict_s(shape) * self.factor


@dataclass(frozen=True, slots=True)
class Gpu:
    memory_bytes: float
    hbm_bytes_per_s: float
    bf16_flops: float


# NOTE: public datasheet numbers (SXM parts, dense BF16); efficiencies are [ours].
GPUS = {
    "h100": Gpu(memory_bytes=80e9, hbm_bytes_per_s=3.35e12, bf16_flops=989e12),
    "a100": Gpu(memory_bytes=80e9, hbm_bytes_per_s=2.0e12, bf16_flops=312e12),
}
BANDWIDTH_EFFICIENCY = 0.6
FLOPS_EFFICIENCY = 0.5
OVERHEAD_S = 0.003  # scheduling, sampling and kernel launches per iteration
GPU_MEMORY_UTILIZATION = 0.9  # vLLM's default
MODELS = {  # name → (profile file stem, layers, parameters)
    "llama-2-7b": ("Llama-2-7b-hf", 32, 6.7e9),
    "llama-2-70b": ("Llama-2-70b-hf", 80, 69e9),
}
_NAME = re.compile(r"^(?P<gpu>h100|a100)-(?P<model>llama-2-7b|llama-2-70b)(?:-tp(?P<tp>[1248]))?$")


def default_data_dir() -> Path:
    """``$ACCELGEN_DATA_DIR``, else ``../shared/data`` beside the working directory or repo."""
    env = os.environ.get(DATA_ENV)
    if env:
        return Path(env)
    for base in (Path.cwd(), Path(__file__).resolve().parents[3]):
        candidate = base.parent / "shared" / "data"
        if candidate.is_dir():
            return candidate
    return Path("../shared/data")


def model_names() -> list[str]:
    return [f"{g}-{m}" + ("-tp4" if m.endswith("70b") else "") for g in GPUS for m in MODELS]


@dataclass(frozen=True, slots=True)
class NamedModel:
    """A profile-based model plus what capacity planning needs about it."""

    model: ProfileLatencyModel
    gpu: Gpu
    num_gpus: int
    weight_bytes: float

    def kv_capacity_blocks(self, block_size_tokens: int) -> int:
        """KV blocks that fit beside the weights at vLLM's default memory utilisation."""
        free = self.gpu.memory_bytes * self.num_gpus * GPU_MEMORY_UTILIZATION - self.weight_bytes
        per_block = self.model.kv_bytes_per_token * block_size_tokens
        return max(int(free // per_block), 1)


@lru_cache(maxsize=16)
def named_model(name: str, data_dir: Path | None = None) -> NamedModel:
    """Build the named profile model; ConfigError for an unknown name or a bad file."""
    match = _NAME.match(name)
    if not match:
        raise ConfigError(f"unknown latency model {name!r}; known: {', '.join(model_names())}")
    gpu = GPUS[match["gpu"]]
    stem, layers, params = MODELS[match["model"]]
    tp = int(match["tp"] or 1)
    path = (data_dir or default_data_dir()) / "profiles" / f"{match['gpu']}_{stem}_mlp.csv"
    points, shape = _read_profile(path, tp)
    n_embd, n_head, n_kv_head = shape
    head_dim = n_embd // n_head
    kv_bytes_per_token = 2 * n_kv_head * head_dim * 2 * layers  # K and V, bf16, all layers
    # Decode attention streams each KV token once per layer; prefill attention does
    # 4·d FLOPs per query-key pair per layer (QKᵀ and PV). Both split over TP ranks.
    decode_kv_token_s = kv_bytes_per_token / tp / (gpu.hbm_bytes_per_s * BANDWIDTH_EFFICIENCY)
    prefill_pair_s = 4 * n_embd * layers / tp / (gpu.bf16_flops * FLOPS_EFFICIENCY)
    model = ProfileLatencyModel(
        name=name,
        mlp_points=tuple((tokens, ms * layers / 1000.0) for tokens, ms in points),
        prefill_pair_s=prefill_pair_s,
        decode_kv_token_s=decode_kv_token_s,
        overhead_s=OVERHEAD_S,
        kv_bytes_per_token=kv_bytes_per_token,
    )
    return NamedModel(model=model, gpu=gpu, num_gpus=tp, weight_bytes=params * 2)


def _read_profile(path: Path, tp: int) -> tuple[list[tuple[int, float]], tuple[int, int, int]]:
    """Per batch size, the summed median operator time of one layer (ms), and the shape."""
    try:
        with path.open(newline="") as f:
            rows = list(csv.DictReader(f))
    except FileNotFoundError:
        raise ConfigError(f"profile not found (set {DATA_ENV} or --data-dir)", source=str(path)) from None
    if not rows:
        raise ConfigError("empty profile", source=str(path))
    ops = sorted({c.split(".")[1] for c in rows[0] if c.startswith("time_stats.") and c.endswith(".median")})
    required = {"num_tokens", "num_tensor_parallel_workers", "n_embd", "n_head", "n_kv_head"}
    missing = sorted(required - set(rows[0]))
    if missing or not ops:
        raise ConfigError(f"missing column(s) {missing or 'time_stats.*.median'}", source=str(path))
    by_tokens: dict[int, list[float]] = {}
    for row in rows:
        if int(row["num_tensor_parallel_workers"]) != tp:
            continue
        total = sum(float(row[f"time_stats.{op}.median"]) for op in ops)
        by_tokens.setdefault(int(row["num_tokens"]), []).append(total)
    if len(by_tokens) < 2:
        raise ConfigError(f"no rows for tensor parallelism {tp}", source=str(path))
    points = []
    slowest = 0.0
    for tokens, values in sorted(by_tokens.items()):
        # NOTE: keep the curve monotone (measurement noise dips) so it can be inverted.
        slowest = max(slowest, sum(values) / len(values))
        points.append((tokens, slowest))
    first = rows[0]
    return points, (int(first["n_embd"]), int(first["n_head"]), int(first["n_kv_head"]))


def load_latency_model(spec: str, *, data_dir: Path | None = None) -> LatencyModel:
    """A named profile model, or a fitted model from a JSON file path."""
    if spec.endswith(".json"):
        try:
            raw = json.loads(Path(spec).read_text())
        except FileNotFoundError:
            raise ConfigError("fitted latency profile not found", source=spec) from None
        except (OSError, json.JSONDecodeError) as err:
            raise ConfigError(f"unreadable fitted latency profile: {err}", source=spec) from None
        try:
            return FittedLatencyModel.from_dict(raw.get("latency_model", raw))
        except ConfigError as err:
            raise err.within(source=spec) from None
    return named_model(spec, data_dir).model
