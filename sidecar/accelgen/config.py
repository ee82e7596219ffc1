"""Reading configuration files (YAML) into core types, with errors that name file and field."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

from accelgen.core.errors import ConfigError
from accelgen.core.tiers import TierSet, parse_tiers


def read_yaml(path: str | Path) -> Any:
    """Parse a YAML file; any failure is a :class:`ConfigError` naming the file."""
    source = str(path)
    try:
        text = Path(path).read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError("file not found", source=source) from None
    except OSError as err:
        raise ConfigError(f"cannot read: {err.strerror}", source=source) from None
    try:
        return yaml.safe_load(text)
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        where = f" (line {mark.line + 1}, column {mark.column + 1})" if mark else ""
        raise ConfigError(f"malformed YAML{where}", source=source) from None


def load_tiers(path: str | Path) -> TierSet:
    """The tier configuration file shared by engine, sidecar and simulator."""
    try:
        return parse_tiers(read_yaml(path))
    except ConfigError as err:
        raise err.within(source=str(path)) from None
