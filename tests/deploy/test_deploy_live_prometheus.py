"""Every PromQL expression of the dashboard and the rules returns data from a real Prometheus.

On 127.0.0.1 only: `accelgen serve --engine sim --pool demo` under a bounded streaming load
(light, overload, light) across the three default tiers, then the tight tier alone at
twice what the engine can run of it, scraped every second by a real
Prometheus that evaluates monitoring/rules.yaml (every 2 s instead of 30 s). Then the
real alerts the overload raises are checked too. Both processes are stopped at the end.
About 50 s.
"""

from __future__ import annotations

import asyncio
import re
import time
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

import pytest

from accelgen.bench.dashboard_cmd import (
    LOAD_MIX,
    LocalStack,
    dashboard_panels,
    instant_query,
    main_panels,
    prometheus_binary,
    render_png,
    rule_expressions,
    run_load,
    substitute,
)
from tests.support.deploy import DASHBOARD, RULES

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(
        prometheus_binary() is None,
        reason="the Prometheus server is not installed: run scripts/install-prometheus.sh (Debian's prometheus)",
    ),
]
_COMPARISON = re.compile(r"\s(<=|>=|==|!=|<|>)\s")
T = TypeVar("T")
# The tight tier's requests of LOAD_MIX, alone.
TIGHT_MIX = (LOAD_MIX[0][0], 1.0, *LOAD_MIX[0][2:])


def as_bool(expr: str) -> str:
    """An alert's expression with its comparisons as `bool`: 0/1 for every matched series
    instead of only the firing ones, so a healthy system still proves the operands match."""
    return _COMPARISON.sub(lambda m: f" {m.group(1)} bool ", expr)


def test_as_bool() -> None:
    assert as_bool("a < on (x) b") == "a < bool on (x) b"
    assert as_bool("a == 0") == "a == bool 0"


def _poll(fetch: Callable[[], T], done: Callable[[T], bool], *, timeout_s: float) -> T:
    """``fetch()`` every second until ``done`` holds of its value or ``timeout_s`` passes;
    the last value (the caller asserts on it). Prometheus evaluates each rule group on
    its own tick, so a test waits for what it needs rather than for one series."""
    deadline = time.monotonic() + timeout_s
    value = fetch()
    while not done(value) and time.monotonic() < deadline:
        time.sleep(1)
        value = fetch()
    return value


def test_every_query_has_data(tmp_path: Path) -> None:
    panels = dashboard_panels(DASHBOARD)
    rules = rule_expressions(RULES)
    with LocalStack(RULES, tmp_path) as stack:
        started = time.time()
        counts = asyncio.run(run_load(stack.sidecar_url, [(8, 3.0), (10, 16.0), (5, 3.0)]))
        assert counts.get("200", 0) >= 30, counts
        # Then the tight tier alone at about twice what the engine can run of it, whatever
        # the machine (the sim engine's pace is its latency model's; a slow machine only
        # slows it more): 4 sequences of 32 decode steps of >= 7 ms each finish at most
        # ~18 requests/s. That tier must then miss or be refused, which admission alone
        # decides; the mixed overload above the engine may absorb by shedding looser work.
        tight = asyncio.run(run_load(stack.sidecar_url, [(8, 40.0)], seed=11, load_mix=[TIGHT_MIX]))
        assert sum(tight.values()) >= 200, tight
        prom = stack.prometheus_url

        queries: dict[str, str] = {}
        for panel in panels:
            for expr, _ in panel.targets:
                queries[f"dashboard {panel.title!r}: {expr}"] = substitute(expr)
        for name, expr in rules.items():
            queries[f"rule {name}: {expr}"] = as_bool(expr) if name.startswith("AccelGen") else expr
            if not name.startswith("AccelGen"):
                queries[f"recorded series {name}"] = name
        # Recording rules evaluate every 2 s, some reading the others: a bound, not a wait.
        sizes = _poll(
            lambda: {label: len(instant_query(prom, expr)) for label, expr in queries.items()},
            lambda got: all(got.values()),
            timeout_s=60,
        )
        empty = sorted(label for label, n in sizes.items() if n == 0)
        assert empty == []
        assert len(sizes) >= 40

        # Per tier, not one series for all: the dashboard shows three tiers, the sim pool's.
        goodput = instant_query(prom, "accelgen:throughput_requests:rate5m")
        assert {s["metric"]["tier"] for s in goodput} == {"interactive", "standard", "batch"}
        assert all(s["metric"]["pool"] == "demo" for s in goodput)

        # The tight tier's overload makes a real alert pending (their `for:` is minutes):
        # its attainment falls below target, or it refuses more than 5 % of its arrivals:
        # which, or both, depends on how admission and the engine split the excess. The
        # rejection alert is for the tight tier only; the healthy engine raises nothing.
        either = {("AccelGenAttainmentBelowTarget", "interactive"), ("AccelGenTightTierRejecting", "interactive")}
        pending = _poll(
            lambda: {(a["metric"]["alertname"], a["metric"].get("tier")) for a in instant_query(prom, "ALERTS")},
            lambda got: bool(either & got),
            timeout_s=60,
        )
        assert either & pending, pending
        assert not {t for name, t in pending if name == "AccelGenTightTierRejecting"} - {"interactive"}
        assert not any(name == "AccelGenEngineNotReady" for name, _ in pending)

        # The documented PNG, from the same Prometheus.
        out = tmp_path / "dashboard.png"
        drawn, no_data = render_png(prom, main_panels(DASHBOARD), start_s=started, end_s=time.time(), out=out)
        assert no_data == [] and len(drawn) == 6
        assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
