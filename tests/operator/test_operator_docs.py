"""docs/operator.md's Permissions list is exactly what the operator uses, no broader.

What the operator uses is :func:`tests.support.operator_rbac.code_triples` (its calls read
from its source, and kopf's documented needs); tests/deploy holds the Helm chart's
ClusterRole to the same set.
"""

from __future__ import annotations

from tests.support.operator_rbac import code_triples, documented_triples


def test_the_extraction_sees_the_operators_calls() -> None:
    used = code_triples()
    assert {("", "secrets", "get"), ("", "pods", "list"), ("apps", "deployments", "get")} <= used
    assert {("apps", "deployments", "create"), ("monitoring.coreos.com", "servicemonitors", "patch")} <= used
    assert ("inference.networking.k8s.io", "inferencepools", "create") in used


def test_docs_permissions_are_exactly_what_the_code_uses() -> None:
    docs, code = documented_triples(), code_triples()
    assert docs - code == set(), "docs/operator.md grants more than the operator uses"
    assert code - docs == set(), "docs/operator.md lacks something the operator uses"
