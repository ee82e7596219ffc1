"""docs/operator.md's Permissions list is exactly what the operator uses, no broader.

The operator's own calls are read from its source (``kube.get/list/create/patch`` with
literal resources, and ``apply.ensure``'s verbs on every kind ``build_children`` makes
with every option on); kopf's needs are kopf's documented RBAC for this resource.
tests/deploy holds the Helm chart's ClusterRole to the same set.
"""

from __future__ import annotations

import ast
from pathlib import Path
from typing import Any

import yaml

from accelgen_operator.apply import plural_of
from accelgen_operator.resources import build_children
from tests.support.operator_cluster import make_spec

ROOT = Path(__file__).resolve().parents[2]
SRC = ROOT / "operator" / "accelgen_operator"
NOT_OPERATOR = {"emulator.py", "bench.py", "runner.py"}  # the emulated API, the benchmark, the test runner
VERBS = {"get", "list", "create", "patch"}
Triple = tuple[str, str, str]

KOPF: set[Triple] = {
    ("accelgen.dev", "inferencepools", "list"),
    ("accelgen.dev", "inferencepools", "watch"),
    ("accelgen.dev", "inferencepools", "patch"),
    ("accelgen.dev", "inferencepools/status", "patch"),
    ("", "events", "create"),
    ("apiextensions.k8s.io", "customresourcedefinitions", "list"),
    ("apiextensions.k8s.io", "customresourcedefinitions", "watch"),
    ("", "namespaces", "list"),
    ("", "namespaces", "watch"),
    *(("kopf.dev", p, v) for p in ("clusterkopfpeerings", "kopfpeerings") for v in ("get", "list", "watch", "patch")),
}


def _group(api_version: str) -> str:
    return api_version.rsplit("/", 1)[0] if "/" in api_version else ""


def _kube_calls(tree: ast.AST) -> list[ast.Call]:
    return [
        n
        for n in ast.walk(tree)
        if isinstance(n, ast.Call)
        and isinstance(n.func, ast.Attribute)
        and isinstance(n.func.value, ast.Name)
        and n.func.value.id == "kube"
        and n.func.attr in VERBS
    ]


def used_by_the_code() -> set[Triple]:
    found: set[Triple] = set()
    for path in sorted(SRC.glob("*.py")):
        if path.name in NOT_OPERATOR:
            continue
        for call in _kube_calls(ast.parse(path.read_text())):
            args = call.args[:2]
            if len(args) == 2 and all(isinstance(a, ast.Constant) and isinstance(a.value, str) for a in args):
                api_version, plural = (str(a.value) for a in args)  # type: ignore[attr-defined]
                found.add((_group(api_version), plural, call.func.attr))  # type: ignore[attr-defined]
    apply_tree = ast.parse((SRC / "apply.py").read_text())
    (ensure,) = [n for n in ast.walk(apply_tree) if isinstance(n, ast.AsyncFunctionDef) and n.name == "ensure"]
    ensure_verbs = {c.func.attr for c in _kube_calls(ensure)}  # type: ignore[attr-defined]
    spec = make_spec(
        auth={"secretName": "keys"},
        autoscaling={"minReplicas": 1, "maxReplicas": 2},
        gateway={"enabled": True, "endpointPicker": {"name": "epp"}},
    )
    children = build_children("p", "ns", spec, has_service_monitor_crd=True, has_gateway_crd=True)
    found |= {(_group(c["apiVersion"]), plural_of(c), v) for c in children for v in ensure_verbs}
    return found | KOPF


def documented() -> set[Triple]:
    text = (ROOT / "docs" / "operator.md").read_text()
    block = text.split("### Permissions", 1)[1].split("```yaml", 1)[1].split("```", 1)[0]
    rules: list[dict[str, Any]] = yaml.safe_load(block)["rules"]
    return {(g, r, v) for rule in rules for g in rule["apiGroups"] for r in rule["resources"] for v in rule["verbs"]}


def test_the_extraction_sees_the_operators_calls() -> None:
    used = used_by_the_code()
    assert {("", "secrets", "get"), ("", "pods", "list"), ("apps", "deployments", "get")} <= used
    assert {("apps", "deployments", "create"), ("monitoring.coreos.com", "servicemonitors", "patch")} <= used
    assert ("inference.networking.k8s.io", "inferencepools", "create") in used


def test_docs_permissions_are_exactly_what_the_code_uses() -> None:
    docs, code = documented(), used_by_the_code()
    assert docs - code == set(), "docs/operator.md grants more than the operator uses"
    assert code - docs == set(), "docs/operator.md lacks something the operator uses"
