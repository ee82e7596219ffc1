"""Calibration files: the engine's latency fit persisted, so a restarted engine starts calibrated.

The calibration itself is :class:`accelgen.core.calibration.Calibrator` (pure, no file
I/O); here it is built to start from a file's fit and to rewrite the file on every new
fit. ``accelgen bench vllm`` writes the same files from its probe steps.
"""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import Any

from accelgen.core.calibration import Calibrator
from accelgen.core.errors import ConfigError
from accelgen.core.latency import FittedLatencyModel


def persisted_calibrator(*, prior: FittedLatencyModel, path: Path | None, **options: Any) -> Calibrator:
    """A :class:`Calibrator` that starts from ``path``'s fit, if the file exists, and
    saves every new fit there; with ``path`` None, one that persists nothing.

    ``options``: the Calibrator's other keyword arguments.
    """
    if path is None:
        return Calibrator(prior=prior, **options)
    start = load_fit(path) if path.exists() else None
    return Calibrator(prior=prior, start_fit=start, on_fit=lambda fit: save_fit(path, fit), **options)


def save_fit(path: Path, fit: FittedLatencyModel) -> None:
    """Write the fit atomically (a reader never sees half a file)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".calibration-", suffix=".json")
    with os.fdopen(fd, "w", encoding="utf-8") as f:
        json.dump({"latency_model": fit.to_dict()}, f, indent=2)
    os.replace(tmp, path)


def load_fit(path: Path) -> FittedLatencyModel:
    """Read a fit written by :func:`save_fit`; ConfigError naming the file otherwise."""
    try:
        raw = json.loads(path.read_text(encoding="utf-8"))
        return FittedLatencyModel.from_dict(raw["latency_model"])
    except ConfigError as err:
        raise err.within(source=str(path), prefix="latency_model") from None
    except (OSError, ValueError, KeyError, TypeError) as err:
        raise ConfigError(f"not a calibration file: {err}", source=str(path)) from None
