"""argparse ``type=`` callables for numeric flags: nonsense is argparse's error (exit 2).

``parser.add_argument("--max-running", type=positive_int)`` makes ``--max-running 0``
print ``argument --max-running: must be > 0, got 0`` and exit 2, before any work starts.
Floats must also be finite: ``nan`` and ``inf`` pass every comparison or none.
"""

from __future__ import annotations

import argparse
import math
from collections.abc import Callable
from typing import TypeVar

N = TypeVar("N", int, float)


def _int(text: str) -> int:
    try:
        return int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not an integer: {text!r}") from None


def _float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None
    if not math.isfinite(value):
        raise argparse.ArgumentTypeError(f"must be finite, got {text}")
    return value


def _checked(parse: Callable[[str], N], ok: Callable[[N], bool], requirement: str, name: str) -> Callable[[str], N]:
    """A type that parses with ``parse``, then refuses values failing ``ok``."""

    def check(text: str) -> N:
        value = parse(text)
        if not ok(value):
            raise argparse.ArgumentTypeError(f"must be {requirement}, got {text}")
        return value

    check.__name__ = name  # argparse names the type in some messages
    return check


def int_at_least(minimum: int) -> Callable[[str], int]:
    """A type for integers >= ``minimum``."""
    return _checked(_int, lambda v: v >= minimum, f">= {minimum}", f"int_at_least_{minimum}")


# An integer > 0 (a count, a size); >= 0 (a seed).
positive_int = _checked(_int, lambda v: v > 0, "> 0", "positive_int")
non_negative_int = _checked(_int, lambda v: v >= 0, ">= 0", "non_negative_int")
# A finite number > 0 (a timeout, a rate, a duration); >= 0 (a scale where 0 means "no time").
positive_float = _checked(_float, lambda v: v > 0, "> 0", "positive_float")
non_negative_float = _checked(_float, lambda v: v >= 0, ">= 0", "non_negative_float")
# A TCP port to listen on (0, "any free port", would hide where it listens).
port = _checked(_int, lambda v: 1 <= v <= 65535, "a port 1..65535", "port")
