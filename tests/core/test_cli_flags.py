"""Numeric flags: nonsense is argparse's error (exit 2, the flag and the reason), nothing runs."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from accelgen.argtypes import int_at_least, non_negative_float, non_negative_int, port, positive_float, positive_int
from accelgen.cli import _COMMANDS, build_parser, main

SERVE = ["serve"]
SIM = ["bench", "sim", "w.yaml"]
PLANNER = ["bench", "planner"]
VLLM = ["bench", "vllm", "w.yaml"]
OVERHEAD = ["bench", "overhead"]
PROXY = ["bench", "proxy"]
SLOWLORIS = ["bench", "slowloris"]
CAPACITY = ["bench", "capacity", "w.yaml"]
POOL = ["bench", "pool", "w.yaml"]
PICKER = ["picker", "--pods", "a:1"]
BENCH_PICKER = ["bench", "picker"]
DASHBOARD = ["bench", "dashboard"]
TINY = ["model", "tiny", "dir"]
MATRIX = ["bench", "matrix", "w.yaml", "--out", "dir"]

# (command, flag, bad value, reason printed)
BAD_FLAGS = [
    (SERVE, "--port", "0", "must be a port 1..65535, got 0"),
    (SERVE, "--port", "65536", "must be a port 1..65535, got 65536"),
    (SERVE, "--max-running", "0", "must be > 0, got 0"),
    (SERVE, "--max-queue", "-3", "must be > 0, got -3"),
    (SERVE, "--sim-max-num-seqs", "0", "must be > 0, got 0"),
    (SERVE, "--sim-time-scale", "-1", "must be >= 0, got -1"),
    (SERVE, "--sim-time-scale", "inf", "must be finite, got inf"),
    (SERVE, "--token-timeout-s", "-1", "must be > 0, got -1"),
    (SERVE, "--token-timeout-s", "nan", "must be finite, got nan"),
    (SERVE, "--connect-timeout-s", "0", "must be > 0, got 0"),
    (SERVE, "--header-timeout-s", "0", "must be > 0, got 0"),
    (SERVE, "--body-timeout-s", "nan", "must be finite, got nan"),
    (SERVE, "--idle-timeout-s", "-1", "must be > 0, got -1"),
    (SERVE, "--max-connections", "0", "must be > 0, got 0"),
    (SIM, "--rate", "0", "must be > 0, got 0"),
    (PLANNER, "--running", "0", "must be > 0, got 0"),
    (PLANNER, "--waiting", "-5", "must be > 0, got -5"),
    (PLANNER, "--scale", "0", "must be > 0, got 0"),
    (PLANNER, "--repeats", "1", "must be >= 2, got 1"),
    (VLLM, "--duration-s", "0", "must be > 0, got 0"),
    (VLLM, "--drain-s", "-1", "must be >= 0, got -1"),
    (VLLM, "--repeats", "0", "must be > 0, got 0"),
    (OVERHEAD, "--requests", "0", "must be > 0, got 0"),
    (OVERHEAD, "--rounds", "-1", "must be > 0, got -1"),
    (OVERHEAD, "--kv-blocks", "4", "must be >= 5, got 4"),
    (PROXY, "--requests", "0", "must be > 0, got 0"),
    (PROXY, "--blocks", "0", "must be > 0, got 0"),
    (PROXY, "--concurrency", "0", "must be > 0, got 0"),
    (PROXY, "--max-tokens", "0", "must be > 0, got 0"),
    (PROXY, "--prompt-words", "0", "must be > 0, got 0"),
    (PROXY, "--sim-time-scale", "-0.5", "must be >= 0, got -0.5"),
    (SLOWLORIS, "--slow", "0", "must be > 0, got 0"),
    (CAPACITY, "--seeds", "0", "must be > 0, got 0"),
    (CAPACITY, "--target-precision", "0", "must be > 0, got 0"),
    (POOL, "--seeds", "0", "must be > 0, got 0"),
    (PICKER, "--refresh-s", "0", "must be > 0, got 0"),
    (BENCH_PICKER, "--pods", "0", "must be > 0, got 0"),
    (BENCH_PICKER, "--requests", "-1", "must be > 0, got -1"),
    (PICKER, "--health-port", "0", "must be a port 1..65535, got 0"),
    (PICKER, "--startup-timeout-s", "-1", "must be >= 0, got -1"),
    (SERVE, "--replicas", "0", "must be >= 1, got 0"),
    (POOL, "--target-precision", "0", "must be > 0, got 0"),
    (POOL, "--duration-s", "-1", "must be > 0, got -1"),
    (POOL, "--pods", "0", "must be > 0, got 0"),
    (SLOWLORIS, "--timeout-s", "0", "must be > 0, got 0"),
    (DASHBOARD, "--duration", "0", "must be > 0, got 0"),
    (DASHBOARD, "--seed", "-1", "must be >= 0, got -1"),
    (DASHBOARD, "--since", "0m", "must be > 0, got 0m"),
    (TINY, "--hidden", "0", "must be > 0, got 0"),
    (TINY, "--layers", "0", "must be > 0, got 0"),
    (TINY, "--head-dim", "0", "must be > 0, got 0"),
    (TINY, "--vocab", "-1", "must be > 0, got -1"),
    (TINY, "--max-context", "0", "must be > 0, got 0"),
    (TINY, "--layers", "two", "not an integer: 'two'"),
    (MATRIX, "--duration-s", "0", "must be > 0, got 0"),
    (MATRIX, "--repeats", "0", "must be > 0, got 0"),
]


@pytest.mark.parametrize(
    ("command", "flag", "value", "reason"),
    BAD_FLAGS,
    ids=[f"{' '.join(c[:2])} {f} {v}" for c, f, v, _ in BAD_FLAGS],
)
def test_bad_value_is_argparse_error(
    command: list[str], flag: str, value: str, reason: str, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as exc:
        main([*command, flag, value])
    assert exc.value.code == 2
    assert f"argument {flag}: {reason}" in capsys.readouterr().err


def _actions(parser: argparse.ArgumentParser) -> Iterator[argparse.Action]:
    for action in parser._actions:
        yield action
        if isinstance(action, argparse._SubParsersAction):
            for sub in action.choices.values():
                yield from _actions(sub)


def test_no_flag_takes_a_bare_int_or_float() -> None:
    bare = [a.option_strings for a in _actions(build_parser()) if a.type in (int, float)]
    assert bare == []


def test_every_command_is_covered() -> None:
    skipped = ("w.yaml", "dir", "--out", "--pods", "a:1")
    covered = {tuple(arg for arg in command if arg not in skipped) for command, *_ in BAD_FLAGS}
    assert covered == {path for path, _, _ in _COMMANDS}


def test_valid_edge_values_still_parse() -> None:
    parser = build_parser()
    serve = parser.parse_args(["serve", "--port", "65535", "--sim-time-scale", "0", "--token-timeout-s", "0.5"])
    assert (serve.port, serve.sim_time_scale, serve.token_timeout_s) == (65535, 0.0, 0.5)
    assert (serve.max_running, serve.max_queue, serve.connect_timeout_s) == (64, 256, 30.0)  # defaults
    proxy = parser.parse_args(["bench", "proxy", "--sim-time-scale", "0", "--requests", "1"])
    assert (proxy.sim_time_scale, proxy.requests) == (0.0, 1)
    planner = parser.parse_args(["bench", "planner", "--repeats", "2"])
    assert planner.repeats == 2
    assert parser.parse_args(["bench", "dashboard", "--seed", "0"]).seed == 0


def test_tiny_model_hidden_not_a_multiple_of_head_dim(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["model", "tiny", str(tmp_path / "m"), "--hidden", "100", "--head-dim", "64"]) == 2
    assert "--hidden: must be a multiple of --head-dim (64), got 100" in capsys.readouterr().err
    assert not (tmp_path / "m").exists()


def test_sim_server_rejects_a_bad_time_scale(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    from accelgen.sim import http

    monkeypatch.setattr(sys, "argv", ["accelgen.sim.http", "--time-scale", "-1"])
    with pytest.raises(SystemExit) as exc:
        http.main()
    assert exc.value.code == 2
    assert "argument --time-scale: must be >= 0, got -1" in capsys.readouterr().err


def test_sim_policy_is_a_core_policy_by_name(capsys: pytest.CaptureFixture[str]) -> None:
    parser = build_parser()
    assert parser.parse_args(["serve", "--engine", "sim"]).sim_policy == "accelgen"
    assert parser.parse_args(["serve", "--sim-policy", "vllm-fcfs"]).sim_policy == "vllm-fcfs"
    with pytest.raises(SystemExit) as exc:
        parser.parse_args(["serve", "--sim-policy", "fifo"])
    assert exc.value.code == 2
    assert "argument --sim-policy: unknown policy 'fifo'; one of accelgen," in capsys.readouterr().err


@pytest.mark.parametrize(
    ("parse", "good", "bad"),
    [
        (positive_int, {"1": 1, "65536": 65536}, ["0", "-1", "1.5", "x", ""]),
        (non_negative_int, {"0": 0, "7": 7}, ["-1", "nan"]),
        (int_at_least(2), {"2": 2, "10": 10}, ["1", "0"]),
        (port, {"1": 1, "65535": 65535}, ["0", "65536", "-1"]),
        (positive_float, {"1e-9": 1e-9, "2": 2.0}, ["0", "-0.0", "-1", "nan", "inf", "-inf", "x"]),
        (non_negative_float, {"0": 0.0, "-0": 0.0, "1.5": 1.5}, ["-1e-9", "nan", "-nan", "inf", "1e400"]),
    ],
)
def test_argtypes(parse: Callable[[str], float], good: dict[str, float], bad: list[str]) -> None:
    for text, value in good.items():
        assert parse(text) == value
    for text in bad:
        with pytest.raises(argparse.ArgumentTypeError) as exc:
            parse(text)
        assert text in str(exc.value) and ("must be" in str(exc.value) or "not a" in str(exc.value))
