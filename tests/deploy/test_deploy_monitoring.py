"""Prometheus rules and the Grafana dashboard: checked by promtool, embedded by the chart unchanged.

promtool comes with Debian's `prometheus` package (scripts/install-prometheus.sh); without
it these tests skip and say so.
"""

from __future__ import annotations

import json
import re
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from accelgen.bench.dashboard_cmd import dashboard_panels, rule_expressions
from tests.support.deploy import CHART, DASHBOARD, RULES, RULES_TEST, load_values, objects, one, render, tool

PROMTOOL = tool("promtool")
needs_promtool = pytest.mark.skipif(
    PROMTOOL is None, reason="promtool not installed: run scripts/install-prometheus.sh (Debian's prometheus)"
)
ALERTS = {
    "AccelGenAttainmentBelowTarget",
    "AccelGenEngineNotReady",
    "AccelGenSidecarStalled",
    "AccelGenTightTierRejecting",
}


def _promtool(*args: str) -> subprocess.CompletedProcess[str]:
    assert PROMTOOL is not None
    return subprocess.run([PROMTOOL, *args], capture_output=True, text=True, timeout=60, check=False)


@needs_promtool
def test_promtool_check_rules() -> None:
    result = _promtool("check", "rules", str(RULES))
    assert result.returncode == 0, result.stdout + result.stderr
    assert "SUCCESS: 16 rules found" in result.stdout


@needs_promtool
def test_promtool_test_rules_exercises_every_alert() -> None:
    result = _promtool("test", "rules", str(RULES_TEST))
    assert result.returncode == 0, result.stdout + result.stderr
    tested = set(re.findall(r"alertname: (\w+)", RULES_TEST.read_text()))
    assert tested == ALERTS == {name for name in rule_expressions(RULES) if name.startswith("AccelGen")}


@needs_promtool
@pytest.mark.parametrize(
    ("old", "new"),
    [
        ("for: 15m", "for: 30m"),  # attainment alert would not fire yet at 25 m
        ("accelgen_engine_ready == 0", "accelgen_engine_ready < 0"),
        ("p99_rate5m > 0.5", "p99_rate5m > 5"),  # the stalled sidecar would not fire
        ("p99_rate5m > 0.5", "p99_rate5m > 0.0005"),  # the healthy one (p99 1 ms) would fire too
        ("accelgen:rejected:ratio_rate5m > 0.05", "accelgen:rejected:ratio_rate5m > 0.5"),
        ("(accelgen_tier_target_seconds) + 0.9", "(accelgen_tier_target_seconds) + 0.8"),  # the default target
    ],
)
def test_rule_tests_catch_a_broken_rule(tmp_path: Path, old: str, new: str) -> None:
    """The unit tests are not vacuous: each mutated rule makes them fail."""
    text = RULES.read_text()
    assert old in text
    (tmp_path / "rules.yaml").write_text(text.replace(old, new))
    (tmp_path / "rules_test.yaml").write_text(RULES_TEST.read_text())
    result = _promtool("test", "rules", str(tmp_path / "rules_test.yaml"))
    assert result.returncode != 0


def _monitoring_render() -> list[dict[str, Any]]:
    rendered: list[dict[str, Any]] = objects(render(load_values(CHART / "ci" / "monitoring-values.yaml")))
    return rendered


def test_chart_prometheusrule_is_the_rule_file() -> None:
    rule = one(_monitoring_render(), "PrometheusRule")
    assert rule["spec"] == yaml.safe_load(RULES.read_text())
    assert rule["metadata"]["labels"]["release"] == "kube-prometheus-stack"


@needs_promtool
def test_chart_prometheusrule_passes_promtool(tmp_path: Path) -> None:
    rule = one(_monitoring_render(), "PrometheusRule")
    (tmp_path / "rendered.yaml").write_text(yaml.safe_dump(rule["spec"]))
    result = _promtool("check", "rules", str(tmp_path / "rendered.yaml"))
    assert result.returncode == 0, result.stdout + result.stderr


def test_chart_dashboard_configmap_is_the_dashboard() -> None:
    cm = one(_monitoring_render(), "ConfigMap")
    assert cm["metadata"]["labels"]["grafana_dashboard"] == "1"
    assert json.loads(cm["data"]["accelgen.json"]) == json.loads(DASHBOARD.read_text())


def test_custom_resources_are_well_formed() -> None:
    """PodMonitor and PrometheusRule: no schema ships with kubernetes-validate, so the fields
    the Prometheus Operator needs are checked here (monitoring.coreos.com/v1)."""
    objs = _monitoring_render()
    monitor = one(objs, "PodMonitor")
    assert monitor["apiVersion"] == "monitoring.coreos.com/v1"
    spec = monitor["spec"]
    assert set(spec) == {"selector", "namespaceSelector", "podMetricsEndpoints"}
    assert spec["namespaceSelector"] == {"matchNames": ["serving"]}
    (endpoint,) = spec["podMetricsEndpoints"]
    assert endpoint == {"port": "http", "path": "/metrics", "interval": "15s"}
    # The operator's pod labels (resources.selector_labels/common_labels) are what it selects.
    from accelgen_operator.resources import build_children

    pool_spec = {
        "model": "m",
        "engine": {"image": "e"},
        "sidecar": {"image": "s"},
        "tiers": [{"name": "t", "ttftMs": 500, "tbtMs": 100}],
    }
    (deployment,) = [c for c in build_children("p", "ns", pool_spec) if c["kind"] == "Deployment"]
    pod_labels = deployment["spec"]["template"]["metadata"]["labels"]
    assert spec["selector"]["matchLabels"].items() <= pod_labels.items()
    assert all(e["key"] in pod_labels for e in spec["selector"]["matchExpressions"])
    sidecar = next(c for c in deployment["spec"]["template"]["spec"]["containers"] if c["name"] == "sidecar")
    assert any(p["name"] == "http" for p in sidecar["ports"])
    rule = one(objs, "PrometheusRule")
    assert rule["apiVersion"] == "monitoring.coreos.com/v1"
    for group in rule["spec"]["groups"]:
        assert set(group) <= {"name", "interval", "rules"}
        for r in group["rules"]:
            assert set(r) <= {"record", "alert", "expr", "for", "labels", "annotations"}
            assert ("record" in r) != ("alert" in r)


def test_dashboard_covers_the_issue() -> None:
    data = json.loads(DASHBOARD.read_text())
    variables = {v["name"]: v for v in data["templating"]["list"]}
    assert {"pool", "tier"} <= set(variables)
    panels = dashboard_panels(DASHBOARD)
    titles = " | ".join(p.title for p in panels)
    for topic in ("Goodput (requests/s)", "Goodput (output tokens/s)", "attainment vs target", "TTFT", "TBT",
                  "queue depth", "Rejected", "KV cache", "running / waiting", "token budget",
                  "event-loop lag"):  # fmt: skip
        assert topic in titles, topic
    exprs = [e for p in panels for e, _ in p.targets]
    # Every per-tier query honours both variables; engine- and sidecar-level ones (no tier
    # label) honour the pool.
    for expr in exprs:
        assert '$pool"' in expr, expr
        if not any(m in expr for m in ("accelgen_engine", "accelgen_event_loop_lag")):
            assert '$tier"' in expr, expr
    # Targets come from the sidecar's target gauge.
    assert any('target="ttft"' in e for e in exprs) and any('target="tbt"' in e for e in exprs)
    ids = [p["id"] for p in data["panels"]]
    assert len(ids) == len(set(ids))
