"""Starting, awaiting and stopping child processes: the one way this project runs them.

A :class:`ChildProcess` starts at once (as :class:`subprocess.Popen` does), in a process
group of its own, and is stopped as a group::

    with ChildProcess([sys.executable, "-m", "http.server", str(port)], log_file=log) as child:
        child.wait_ready(f"http://127.0.0.1:{port}/", timeout_s=30)
        ...
    # SIGTERM to the group, SIGKILL to whatever is left after the grace period

    start ──► wait_ready(url or condition)  ──► ... ──► stop(): SIGTERM ─ grace ─► SIGKILL
                 │ exits / deadline passes
                 └──► stop(), StartError with the tail of its log

Readiness is an HTTP URL that answers 200 or a condition (a callable), awaited with a
deadline while watching the child: one that exits first raises at once. The
:meth:`ChildProcess.wait_ready_async` twin awaits the same inside an event loop.
Imports nothing of accelgen.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import socket
import subprocess
import time
import urllib.request
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path
from types import TracebackType

#: An HTTP URL that must answer 200, or a condition that must become true.
Readiness = str | Callable[[], bool]

LOG_TAIL_CHARS = 4000
_POLL_S = 0.2
_GROUP_POLL_S = 0.02
_KILLED_WAIT_S = 5.0  # for SIGKILLed processes to be gone: the kernel's time, not theirs


class StartError(RuntimeError):
    """A child exited, or was not ready by its deadline, while starting (it is stopped).

    Attributes:
        returncode: The child's exit status, or None when it was still running.
        tail: The end of its log (empty when its output is not captured).
    """

    def __init__(self, message: str, *, returncode: int | None, tail: str) -> None:
        super().__init__(f"{message}:\n{tail}" if tail else message)
        self.returncode = returncode
        self.tail = tail


def free_port() -> int:
    """A TCP port on 127.0.0.1 that was free a moment ago."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def http_ok(url: str, *, timeout_s: float = 2.0) -> bool:
    """Whether ``GET url`` answers 200 now."""
    try:
        with urllib.request.urlopen(url, timeout=timeout_s) as resp:
            return bool(resp.status == 200)
    except OSError:
        return False


def _condition(ready: Readiness) -> Callable[[], bool]:
    if callable(ready):
        return ready
    return lambda: http_ok(ready)


def _group_alive(pgid: int) -> bool:
    """Whether a process of group ``pgid`` is still running (zombies do not count).

    NOTE: an orphaned zombie lingers wherever PID 1 does not reap, and ``killpg(pgid, 0)``
    succeeds on it; /proc tells the two apart.
    """
    proc = Path("/proc")
    if not (proc / "self" / "stat").exists():
        try:
            os.killpg(pgid, 0)
        except (ProcessLookupError, PermissionError):
            return False
        return True
    for stat in proc.glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except (OSError, IndexError):
            continue  # gone meanwhile
        if int(fields[2]) == pgid and fields[0] not in ("Z", "X"):
            return True
    return False


class ChildProcess:
    """A child process in its own process group; :meth:`stop` (or leaving ``with``) ends the group.

    Args:
        argv: The command line.
        name: How errors name it (default: the program's name).
        env: Its whole environment (default: this process's).
        log_file: Where its stdout and stderr go (truncated first); default: this
            process's own, or nowhere with ``quiet``.
        quiet: Discard its output when there is no ``log_file``.
        stop_grace_s: How long :meth:`stop` waits after SIGTERM before SIGKILL.
    """

    def __init__(
        self,
        argv: Sequence[str],
        *,
        name: str | None = None,
        env: Mapping[str, str] | None = None,
        log_file: Path | None = None,
        quiet: bool = False,
        stop_grace_s: float = 10.0,
    ) -> None:
        self.argv = list(argv)
        self.name = name or Path(self.argv[0]).name
        self.log_file = log_file
        self.stop_grace_s = stop_grace_s
        out: int | None = subprocess.DEVNULL if quiet else None
        with contextlib.ExitStack() as files:
            if log_file is not None:
                log_file.parent.mkdir(parents=True, exist_ok=True)
                out = files.enter_context(log_file.open("wb")).fileno()
            # NOTE: its own process group (stopped as one with killpg), but not a new
            # session: a new session is a new scheduler autogroup, where a busy-waiting
            # engine can keep every other process off a small machine's CPUs. stdin
            # from /dev/null: a background process group must not read the terminal.
            self._proc = subprocess.Popen(
                self.argv,
                env=None if env is None else dict(env),
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT if out is not None else None,
                process_group=0,
            )
        self.pid = self._proc.pid
        self._stopped = False

    def poll(self) -> int | None:
        """Its exit status if it has exited, else None."""
        return self._proc.poll()

    def send_signal(self, sig: int) -> None:
        """Signal the child itself (not its group)."""
        self._proc.send_signal(sig)

    def log_tail(self, num_chars: int = LOG_TAIL_CHARS) -> str:
        """The end of its log file ("" without one)."""
        if self.log_file is None:
            return ""
        try:
            return self.log_file.read_text(errors="replace")[-num_chars:]
        except OSError:
            return ""

    def _failed(self, what: str) -> StartError:
        returncode = self._proc.poll()
        self.stop()
        return StartError(f"{self.name} {what}", returncode=returncode, tail=self.log_tail())

    def _raise_if_exited(self) -> None:
        if (rc := self._proc.poll()) is not None:
            raise self._failed(f"exited with {rc} while starting")

    def wait_ready(self, ready: Readiness, *, timeout_s: float, poll_s: float = _POLL_S) -> float:
        """Wait until ``ready`` holds; the seconds it took.

        Raises:
            StartError: The child exited first, or ``timeout_s`` passed (it is stopped).
        """
        return wait_ready(ready, timeout_s=timeout_s, child=self, poll_s=poll_s)

    async def wait_ready_async(self, ready: Readiness, *, timeout_s: float, poll_s: float = _POLL_S) -> float:
        """:meth:`wait_ready` inside an event loop: each check runs in a worker thread."""
        check = _condition(ready)
        start = time.monotonic()
        while True:
            self._raise_if_exited()
            if await asyncio.to_thread(check):
                return time.monotonic() - start
            if time.monotonic() - start > timeout_s:
                raise self._failed(f"not ready after {timeout_s:g} s")
            await asyncio.sleep(poll_s)

    def _signal_group(self, sig: int) -> None:
        # NOTE: the group is signalled even when the child has exited: what it started
        # (an engine core, workers) may live on in the group.
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.pid, sig)

    def _settle(self, deadline: float) -> int:
        """Wait for the child and its group until ``deadline``, then SIGKILL what is left."""
        try:
            self._proc.wait(timeout=max(0.0, deadline - time.monotonic()))
            while _group_alive(self.pid) and time.monotonic() < deadline:
                time.sleep(_GROUP_POLL_S)
        except subprocess.TimeoutExpired:
            pass
        if self._proc.poll() is None or _group_alive(self.pid):
            self._signal_group(signal.SIGKILL)
            gone_by = time.monotonic() + _KILLED_WAIT_S
            while _group_alive(self.pid) and time.monotonic() < gone_by:
                time.sleep(_GROUP_POLL_S)
        return self._proc.wait()

    def stop(self, grace_s: float | None = None) -> int:
        """SIGTERM the group, SIGKILL it after ``grace_s`` (default ``stop_grace_s``); its exit status.

        Safe to call again, and after the child has exited.
        """
        if self._stopped:
            return self._proc.wait()
        self._stopped = True
        self._signal_group(signal.SIGTERM)
        return self._settle(time.monotonic() + (self.stop_grace_s if grace_s is None else grace_s))

    def kill(self) -> int:
        """SIGKILL the whole group now (a crash, as a test stages one); its exit status."""
        self._stopped = True
        self._signal_group(signal.SIGKILL)
        return self._settle(time.monotonic())

    def __enter__(self) -> ChildProcess:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()


def wait_ready(
    ready: Readiness, *, timeout_s: float, child: ChildProcess | None = None, poll_s: float = _POLL_S
) -> float:
    """Wait until ``ready`` holds, watching ``child`` if given; the seconds it took.

    Raises:
        StartError: ``child`` exited first, or ``timeout_s`` passed (``child`` is stopped).
    """
    check = _condition(ready)
    start = time.monotonic()
    while True:
        if child is not None:
            child._raise_if_exited()
        if check():
            return time.monotonic() - start
        if time.monotonic() - start > timeout_s:
            what = f"not ready after {timeout_s:g} s"
            if child is not None:
                raise child._failed(what)
            name = ready if isinstance(ready, str) else "the condition"
            raise StartError(f"{name} {what}", returncode=None, tail="")
        time.sleep(poll_s)


def stop_all(children: Iterable[ChildProcess], *, grace_s: float) -> None:
    """Stop several children within one grace period: SIGTERM to every group first."""
    pending = [c for c in children if not c._stopped]
    for child in pending:
        child._stopped = True
        child._signal_group(signal.SIGTERM)
    deadline = time.monotonic() + grace_s
    for child in pending:
        child._settle(deadline)
