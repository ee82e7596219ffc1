"""What the operator may do on the API, as (apiGroup, resource, verb) triples, from its code.

The operator's own calls are read from its source (``kube.get/list/create/patch`` with
literal resources, and ``apply.ensure``'s verbs on every kind ``build_children`` makes
with every option on); kopf's needs are kopf's documented RBAC for this resource. The
chart's ClusterRole (tests/deploy) and docs/operator.md's Permissions (tests/operator)
are both held to this set.
"""

from __future__ import annotations

import ast
from collections.abc import Iterable, Mapping
from typing import Any

import yaml

from accelgen_operator.apply import plural_of
from accelgen_operator.gateway import gateway_child_refs
from accelgen_operator.resources import build_children
from tests.support.deploy import ROOT

Triple = tuple[str, str, str]  # (apiGroup, resource, verb)
OPERATOR_SRC = ROOT / "operator" / "accelgen_operator"
# Not the operator: the emulated API, the benchmark and the test runner.
_NOT_OPERATOR = {"emulator.py", "bench.py", "runner.py"}
_CLIENT_VERBS = {"get", "list", "create", "patch"}

# kopf's own API use (kopf's documentation, "Deployment": RBAC), for this operator's resource.
KOPF_NEEDS: set[Triple] = {
    ("accelgen.dev", "inferencepools", "list"),
    ("accelgen.dev", "inferencepools", "watch"),
    ("accelgen.dev", "inferencepools", "patch"),  # finalizer, progress annotations, spec.replicas
    ("accelgen.dev", "inferencepools/status", "patch"),  # status subresource
    ("", "events", "create"),
    ("apiextensions.k8s.io", "customresourcedefinitions", "list"),
    ("apiextensions.k8s.io", "customresourcedefinitions", "watch"),
    ("", "namespaces", "list"),
    ("", "namespaces", "watch"),
}
KOPF_PEERING: set[Triple] = {
    ("kopf.dev", plural, verb)
    for plural in ("clusterkopfpeerings", "kopfpeerings")
    for verb in ("get", "list", "watch", "patch")
}


def group_of(api_version: str) -> str:
    return api_version.rsplit("/", 1)[0] if "/" in api_version else ""


def _kube_calls(tree: ast.AST) -> list[ast.Call]:
    """The ``kube.<verb>(...)`` calls in ``tree``, for the client's verbs."""
    return [
        n
        for n in ast.walk(tree)
        if isinstance(n, ast.Call)
        and isinstance(n.func, ast.Attribute)
        and isinstance(n.func.value, ast.Name)
        and n.func.value.id == "kube"
        and n.func.attr in _CLIENT_VERBS
    ]


def literal_calls() -> set[Triple]:
    """``kube.<verb>("apiVersion", "plural", ...)`` calls with literal arguments."""
    found: set[Triple] = set()
    for path in sorted(OPERATOR_SRC.glob("*.py")):
        if path.name in _NOT_OPERATOR:
            continue
        for call in _kube_calls(ast.parse(path.read_text())):
            args = call.args[:2]
            if len(args) == 2 and all(isinstance(a, ast.Constant) and isinstance(a.value, str) for a in args):
                api_version, plural = (str(a.value) for a in args)  # type: ignore[attr-defined]
                found.add((group_of(api_version), plural, call.func.attr))  # type: ignore[attr-defined]
    return found


def ensure_verbs() -> set[str]:
    """The client verbs ``apply.ensure`` calls on every child."""
    tree = ast.parse((OPERATOR_SRC / "apply.py").read_text())
    (ensure,) = [n for n in ast.walk(tree) if isinstance(n, ast.AsyncFunctionDef) and n.name == "ensure"]
    return {c.func.attr for c in _kube_calls(ensure)}  # type: ignore[attr-defined]


def full_spec() -> dict[str, Any]:
    """A pool spec with every option that makes a child or a call on."""
    return {
        "model": "m",
        "replicas": 1,
        "engine": {"image": "engine:1", "gpus": 1},
        "sidecar": {"image": "sidecar:1"},
        "tiers": [
            {"name": "interactive", "ttftMs": 500, "tbtMs": 100, "priority": 0, "attainmentTarget": 0.95},
            {"name": "batch", "deadlineSeconds": 3600, "priority": 1},
        ],
        "auth": {"secretName": "keys"},
        "autoscaling": {"minReplicas": 1, "maxReplicas": 2},
        "gateway": {"endpointPicker": {"type": "accelgen"}},  # the picker, its Services, the gateway pool
        "metrics": {"serviceMonitor": True},
    }


def code_triples() -> set[Triple]:
    """Everything the operator's code (and kopf for it) needs, peering included."""
    children = build_children("p", "ns", full_spec(), has_service_monitor_crd=True, has_gateway_crd=True)
    kinds = {(group_of(c["apiVersion"]), plural_of(c)) for c in children}
    ensure = {(g, p, verb) for g, p in kinds for verb in ensure_verbs()}
    # The gateway's children the spec stopped asking for: read, then deleted (handlers._prune_gateway).
    prune = {(group_of(a), plural, verb) for a, plural, _ in gateway_child_refs("p") for verb in ("get", "delete")}
    return literal_calls() | ensure | prune | KOPF_NEEDS | KOPF_PEERING


def rule_triples(rules: Iterable[Mapping[str, Any]]) -> set[Triple]:
    """The triples an RBAC rule list grants."""
    return {
        (group, resource, verb)
        for rule in rules
        for group in rule["apiGroups"]
        for resource in rule["resources"]
        for verb in rule["verbs"]
    }


def documented_triples() -> set[Triple]:
    """What docs/operator.md's Permissions section grants."""
    text = (ROOT / "docs" / "operator.md").read_text()
    block = text.split("### Permissions", 1)[1].split("```yaml", 1)[1].split("```", 1)[0]
    return rule_triples(yaml.safe_load(block)["rules"])
