"""accelgen.process with real child processes: ready, dead at start, deaf to SIGTERM, none left behind."""

from __future__ import annotations

import asyncio
import os
import signal
import sys
import time
from pathlib import Path

import pytest

from accelgen.process import ChildProcess, StartError, free_port, http_ok, stop_all, wait_ready

GENEROUS_S = 60.0  # a bound on what must not hang, never a speed


def _python(code: str) -> list[str]:
    return [sys.executable, "-c", code]


def _running(pid: int) -> bool:
    """Whether ``pid`` runs (an unreaped zombie does not)."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (FileNotFoundError, ProcessLookupError):
        return False
    return state not in ("Z", "X")


def _touch_then_sleep(ready: Path, *, ignore_term: bool = False) -> list[str]:
    ignore = "signal.signal(signal.SIGTERM, signal.SIG_IGN)\n" if ignore_term else ""
    return _python(f"import pathlib, signal, time\n{ignore}pathlib.Path({str(ready)!r}).touch()\ntime.sleep(600)\n")


def test_a_child_that_answers_http_is_ready_then_stopped(tmp_path: Path) -> None:
    port = free_port()
    argv = [sys.executable, "-m", "http.server", "--bind", "127.0.0.1", str(port)]
    with ChildProcess(argv, log_file=tmp_path / "http.log") as child:
        waited_s = child.wait_ready(f"http://127.0.0.1:{port}/", timeout_s=GENEROUS_S)
        assert 0.0 <= waited_s < GENEROUS_S
        assert http_ok(f"http://127.0.0.1:{port}/")
        assert os.getpgid(child.pid) == child.pid  # a group of its own
        assert os.getpgid(child.pid) != os.getpgid(0)
    assert child.poll() is not None and not _running(child.pid)
    assert not http_ok(f"http://127.0.0.1:{port}/")


def test_a_condition_is_awaited_and_the_child_keeps_running(tmp_path: Path) -> None:
    ready = tmp_path / "ready"
    child = ChildProcess(_touch_then_sleep(ready), quiet=True)
    try:
        child.wait_ready(ready.exists, timeout_s=GENEROUS_S)
        assert child.poll() is None
    finally:
        assert child.stop(grace_s=GENEROUS_S) == -signal.SIGTERM
    assert child.stop() == -signal.SIGTERM  # again: the same status, nothing sent


def test_a_child_that_dies_while_starting_raises_with_its_log_tail(tmp_path: Path) -> None:
    log = tmp_path / "child.log"
    code = "import sys\nprint('loading the model', flush=True)\nsys.exit('model exploded')"
    child = ChildProcess(_python(code), name="the engine", log_file=log)
    started = time.monotonic()
    with pytest.raises(StartError, match=r"the engine exited with 1 while starting") as err:
        child.wait_ready(lambda: False, timeout_s=GENEROUS_S)
    assert time.monotonic() - started < GENEROUS_S  # noticed, not waited out
    assert err.value.returncode == 1
    assert "loading the model" in err.value.tail and "model exploded" in str(err.value)
    assert not _running(child.pid)


def test_a_child_not_ready_by_its_deadline_is_stopped(tmp_path: Path) -> None:
    child = ChildProcess(_python("import time; time.sleep(600)"), name="sleeper", log_file=tmp_path / "s.log")
    with pytest.raises(StartError, match=r"sleeper not ready after 0.3 s") as err:
        child.wait_ready(lambda: False, timeout_s=0.3, poll_s=0.05)
    assert err.value.returncode is None  # it was still running when time ran out
    assert child.poll() == -signal.SIGTERM and not _running(child.pid)


def test_a_child_deaf_to_sigterm_is_killed_after_the_grace_period(tmp_path: Path) -> None:
    ready = tmp_path / "ready"
    child = ChildProcess(_touch_then_sleep(ready, ignore_term=True), quiet=True)
    child.wait_ready(ready.exists, timeout_s=GENEROUS_S)
    grace_s = 0.5
    started = time.monotonic()
    assert child.stop(grace_s=grace_s) == -signal.SIGKILL
    assert grace_s <= time.monotonic() - started < GENEROUS_S
    assert not _running(child.pid)


def test_no_process_of_the_group_is_left_behind(tmp_path: Path) -> None:
    """The child exits at SIGTERM; the grandchild it started ignores it and is killed."""
    pid_file, ready = tmp_path / "grandchild.pid", tmp_path / "ready"
    grandchild = _touch_then_sleep(ready, ignore_term=True)
    code = (
        "import pathlib, subprocess, sys, time\n"
        f"p = subprocess.Popen({grandchild!r})\n"
        f"pathlib.Path({str(pid_file)!r}).write_text(str(p.pid))\n"
        "time.sleep(600)\n"
    )
    child = ChildProcess(_python(code), quiet=True)
    child.wait_ready(lambda: ready.exists() and pid_file.exists(), timeout_s=GENEROUS_S)
    grandchild_pid = int(pid_file.read_text())
    assert os.getpgid(grandchild_pid) == child.pid
    assert child.stop(grace_s=0.5) == -signal.SIGTERM  # the child itself obeyed
    assert not _running(grandchild_pid)


def test_kill_ends_the_whole_group_at_once(tmp_path: Path) -> None:
    ready = tmp_path / "ready"
    child = ChildProcess(_touch_then_sleep(ready, ignore_term=True), quiet=True)
    child.wait_ready(ready.exists, timeout_s=GENEROUS_S)
    assert child.kill() == -signal.SIGKILL
    assert not _running(child.pid)


def test_wait_ready_async_notices_an_exit_inside_an_event_loop(tmp_path: Path) -> None:
    ready = tmp_path / "ready"
    good = ChildProcess(_touch_then_sleep(ready), quiet=True)
    bad = ChildProcess(_python("raise SystemExit(4)"), name="bad", quiet=True)
    try:
        assert asyncio.run(good.wait_ready_async(ready.exists, timeout_s=GENEROUS_S)) >= 0.0
        with pytest.raises(StartError, match="bad exited with 4 while starting"):
            asyncio.run(bad.wait_ready_async(lambda: False, timeout_s=GENEROUS_S))
    finally:
        stop_all([good, bad], grace_s=GENEROUS_S)
    assert good.poll() == -signal.SIGTERM and bad.poll() == 4


def test_stop_all_kills_every_child_deaf_to_sigterm(tmp_path: Path) -> None:
    children = []
    for i in range(3):
        ready = tmp_path / f"ready-{i}"
        children.append(ChildProcess(_touch_then_sleep(ready, ignore_term=True), quiet=True))
        children[-1].wait_ready(ready.exists, timeout_s=GENEROUS_S)
    grace_s = 0.5
    started = time.monotonic()
    stop_all(children, grace_s=grace_s)
    elapsed_s = time.monotonic() - started
    assert all(c.poll() == -signal.SIGKILL and not _running(c.pid) for c in children)
    assert grace_s <= elapsed_s < len(children) * grace_s + GENEROUS_S


def test_leaving_the_with_block_by_an_error_stops_the_child(tmp_path: Path) -> None:
    ready = tmp_path / "ready"
    with pytest.raises(KeyError), ChildProcess(_touch_then_sleep(ready), quiet=True) as child:
        child.wait_ready(ready.exists, timeout_s=GENEROUS_S)
        raise KeyError("the caller failed")
    assert child.poll() == -signal.SIGTERM and not _running(child.pid)


def test_a_url_without_a_child_is_awaited_until_its_deadline() -> None:
    url = f"http://127.0.0.1:{free_port()}/"  # nothing listens there
    with pytest.raises(StartError, match=r"/ not ready after 0.3 s") as err:
        wait_ready(url, timeout_s=0.3, poll_s=0.05)
    assert err.value.returncode is None and err.value.tail == ""
