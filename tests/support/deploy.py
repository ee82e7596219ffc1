"""Shared helpers of the deployment tests: the chart rendered by Helm's own engine.

``helm-python-sdk`` binds Helm 4's Go SDK (template engine, values coalescing, schema
validation, lint, packaging) through a C library: no helm binary, no cluster.
"""

from __future__ import annotations

import functools
import shutil
import sys
from pathlib import Path
from typing import Any

import helm_python as helm
import yaml

ROOT = Path(__file__).resolve().parents[2]
CHART = ROOT / "charts" / "accelgen"
CI_VALUES = sorted((CHART / "ci").glob("*.yaml"))
MONITORING = ROOT / "monitoring"
RULES = MONITORING / "rules.yaml"
RULES_TEST = MONITORING / "rules_test.yaml"
DASHBOARD = MONITORING / "dashboard.json"
RELEASE = "ag"
NAMESPACE = "accelgen-system"
K8S_VERSION = "1.30"

helm.disable_logging()  # "found symbolic link in path" on every load: expected, see the chart


@functools.cache
def chart() -> helm.Chart:
    return helm.Chart.load(CHART)


def load_values(path: Path) -> dict[str, Any]:
    values: dict[str, Any] = yaml.safe_load(path.read_text()) or {}
    return values


def render(values: dict[str, Any] | None = None) -> dict[str, str]:
    """Template path → rendered text, as `helm template` (schema checked first, as helm does)."""
    chart().validate_schema(values or {})
    return chart().render(values or {}, name=RELEASE, namespace=NAMESPACE, is_install=True)


def objects(rendered: dict[str, str]) -> list[dict[str, Any]]:
    """Every Kubernetes object of a render (NOTES.txt excluded)."""
    out: list[dict[str, Any]] = []
    for path, text in sorted(rendered.items()):
        if path.endswith("NOTES.txt"):
            continue
        out.extend(doc for doc in yaml.safe_load_all(text) if doc)
    return out


def by_kind(objs: list[dict[str, Any]], kind: str) -> list[dict[str, Any]]:
    return [o for o in objs if o["kind"] == kind]


def one(objs: list[dict[str, Any]], kind: str) -> dict[str, Any]:
    (obj,) = by_kind(objs, kind)
    return obj


def tool(name: str) -> str | None:
    """A command on PATH or in this interpreter's bin directory (the venv)."""
    return shutil.which(name) or shutil.which(name, path=str(Path(sys.executable).parent))
