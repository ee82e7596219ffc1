"""Reading request-length traces (CSV) such as Azure LLM inference 2023 and arXiv summarization."""

from __future__ import annotations

import csv
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

from accelgen.core.errors import ConfigError

REQUIRED = ("num_prefill_tokens", "num_decode_tokens")


@dataclass(frozen=True, slots=True)
class Trace:
    """Prompt and output lengths, and arrival times when the trace has them."""

    path: str
    prompt_tokens: tuple[int, ...]
    output_tokens: tuple[int, ...]
    arrivals_s: tuple[float, ...] | None

    def __len__(self) -> int:
        return len(self.prompt_tokens)


@lru_cache(maxsize=8)
def read_trace(path: Path) -> Trace:
    """Parse a trace CSV; ConfigError names the file, the row and the column."""
    source = str(path)
    try:
        with path.open(newline="") as f:
            reader = csv.DictReader(f)
            columns = reader.fieldnames or []
            missing = [c for c in REQUIRED if c not in columns]
            if missing:
                raise ConfigError(f"missing column(s) {', '.join(missing)}; has {columns}", source=source)
            has_arrivals = "arrived_at" in columns
            prompts: list[int] = []
            outputs: list[int] = []
            arrivals: list[float] = []
            for line, row in enumerate(reader, start=2):
                try:
                    prompts.append(max(int(float(row["num_prefill_tokens"])), 1))
                    outputs.append(max(int(float(row["num_decode_tokens"])), 1))
                    if has_arrivals:
                        arrivals.append(float(row["arrived_at"]))
                except (TypeError, ValueError):
                    raise ConfigError(f"row {line}: not a number", source=source) from None
    except FileNotFoundError:
        raise ConfigError("trace not found (set ACCELGEN_DATA_DIR or --data-dir)", source=source) from None
    if not prompts:
        raise ConfigError("trace has no rows", source=source)
    return Trace(source, tuple(prompts), tuple(outputs), tuple(arrivals) if has_arrivals else None)
