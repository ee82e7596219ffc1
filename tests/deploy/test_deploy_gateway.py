"""The chart with the gateway's children: its ClusterRole lets the operator make AccelGen's
endpoint picker (a Deployment, two Services) and the gateway API's InferencePool, and its
CRD copy takes ``spec.gateway.endpointPicker`` and a pool without ``spec.sidecar``.

Rendered with the real Helm engine (``tests.support.deploy``); the children come from the
operator's own manifest builder, so a new kind there without a rule here fails.
"""

from __future__ import annotations

from typing import Any

import yaml

from accelgen_operator import KIND
from accelgen_operator.apply import plural_of
from accelgen_operator.resources import DefaultImages, build_children
from tests.support.crd_schema import EXAMPLES, example_documents, validate_pool
from tests.support.deploy import ROOT, objects, one, render
from tests.support.operator_rbac import ensure_verbs, group_of, rule_triples


def _picker_spec() -> dict[str, Any]:
    return {
        "model": "m",
        "engine": {"gpus": 1},
        "tiers": [{"name": "interactive", "ttftMs": 500, "tbtMs": 100}],
        "gateway": {"endpointPicker": {"type": "accelgen"}},
    }


def test_the_cluster_role_covers_the_picker_and_the_gateway_pool() -> None:
    children = build_children(
        "p", "ns", _picker_spec(), has_gateway_crd=True, images=DefaultImages(engine="e:1", sidecar="s:1")
    )
    kinds = {(group_of(c["apiVersion"]), plural_of(c)) for c in children}
    assert {("inference.networking.k8s.io", "inferencepools"), ("apps", "deployments"), ("", "services")} <= kinds
    assert sum(c["kind"] == "Deployment" for c in children) == 2  # the pool's and the picker's
    granted = rule_triples(one(objects(render()), "ClusterRole")["rules"])
    needed = {(group, plural, verb) for group, plural in kinds for verb in ensure_verbs()}
    assert needed - granted == set(), "the chart's ClusterRole does not let the operator make these"


def test_the_charts_crd_is_the_one_with_the_gateway_picker() -> None:
    rendered_crd = yaml.safe_load((ROOT / "charts/accelgen/crds/accelgen.dev_inferencepools.yaml").read_text())
    spec = rendered_crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"]["spec"]
    assert "sidecar" not in spec["required"]
    picker = spec["properties"]["gateway"]["properties"]["endpointPicker"]["properties"]
    assert picker["type"]["enum"] == ["accelgen", "external"]
    assert {"service", "port", "failureMode"} <= set(picker)


def test_the_example_pool_with_the_picker_is_minimal() -> None:
    (doc,) = [d for d in example_documents(EXAMPLES / "gateway-picker.yaml") if d["kind"] == KIND]
    assert "sidecar" not in doc["spec"] and "image" not in doc["spec"]["engine"]
    assert doc["spec"]["gateway"]["endpointPicker"]["type"] == "accelgen"
    assert validate_pool(doc) == []
