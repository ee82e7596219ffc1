"""Reloading the tier configuration on SIGHUP or when its file changes.

A bad new file is logged and ignored: the sidecar keeps serving with the tiers it has.
A Kubernetes ConfigMap mount changes by swapping a symlink, so the file's resolved
path and its mtime are both watched.
"""

from __future__ import annotations

import asyncio
import logging
import os
import signal
from collections.abc import Callable
from pathlib import Path

from accelgen.config import load_tiers
from accelgen.core.errors import ConfigError
from accelgen.core.tiers import TierSet

log = logging.getLogger("accelgen.server")


def _stamp(path: Path) -> tuple[str, float] | None:
    try:
        return str(path.resolve()), os.stat(path).st_mtime
    except OSError:
        return None


class TierReloader:
    """Calls ``apply(tiers)`` with a freshly loaded file on SIGHUP or a change of the file."""

    def __init__(self, path: str, apply: Callable[[TierSet], None]) -> None:
        self.path = Path(path)
        self.apply = apply
        self._stamp = _stamp(self.path)

    def reload(self) -> bool:
        """Load and apply the file now; False (logged) if it is invalid."""
        self._stamp = _stamp(self.path)
        try:
            tiers = load_tiers(self.path)
        except ConfigError as err:
            log.error("tier reload failed, keeping the current tiers: %s", err)
            return False
        self.apply(tiers)
        return True

    def install_sighup(self, loop: asyncio.AbstractEventLoop) -> None:
        try:
            loop.add_signal_handler(signal.SIGHUP, self.reload)
        except (NotImplementedError, RuntimeError, ValueError):
            log.info("SIGHUP reload unavailable here; watching the file only")

    async def watch(self, interval_s: float = 1.0) -> None:
        """Poll the file's identity and mtime forever (a background task)."""
        while True:
            await asyncio.sleep(interval_s)
            stamp = _stamp(self.path)
            if stamp is not None and stamp != self._stamp:
                self.reload()
