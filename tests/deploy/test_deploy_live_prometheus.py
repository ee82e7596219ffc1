"""Every PromQL expression of the dashboard and the rules returns data from a real Prometheus.

On 127.0.0.1 only: `accelgen serve --engine sim --pool demo` under a bounded streaming load
(light, overload, light) across the three default tiers, scraped every second by a real
Prometheus that evaluates monitoring/rules.yaml (every 2 s instead of 30 s). Then the
real alerts the overload raises are checked too. Both processes are stopped at the end.
About 40 s.
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

        # The overload (16 req/s against a 4-sequence engine) makes the real alerts pending
        # (their `for:` is minutes): attainment falls below target; the healthy engine
        # raises nothing. The tight tier is released ahead of the looser work the engine
        # holds (admission holds a request for the engine's pressure only when nothing
        # looser is in it), so whether it is also rejected depends on the run: if the
        # rejection alert fires, it is for the tight tier only.
        expected = {("AccelGenAttainmentBelowTarget", "interactive")}
        pending = _poll(
            lambda: {(a["metric"]["alertname"], a["metric"].get("tier")) for a in instant_query(prom, "ALERTS")},
            lambda got: expected <= got,
            timeout_s=60,
        )
        assert expected <= pending, pending
        assert not {t for name, t in pending if name == "AccelGenTightTierRejecting"} - {"interactive"}
        assert not any(name == "AccelGenEngineNotReady" for name, _ in pending)

        # The documented PNG, from the same Prometheus.
        out = tmp_path / "dashboard.png"
        drawn, no_data = render_png(prom, main_panels(DASHBOARD), start_s=started, end_s=time.time(), out=out)
        assert no_data == [] and len(drawn) == 6
        assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
