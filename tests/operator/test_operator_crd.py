"""The InferencePool CRD: valid as a Kubernetes object, and it accepts/rejects the examples."""

from __future__ import annotations

import copy
import re
from pathlib import Path

import kubernetes_validate
import pytest

from accelgen_operator import GROUP, KIND, PLURAL, VERSION
from tests.support.crd_schema import (
    CRD_PATH,
    EXAMPLES,
    apply_defaults,
    example_documents,
    load_crd,
    pool_schema,
    validate_pool,
)

K8S_VERSION = "1.30"
GOOD = sorted(EXAMPLES.glob("*.yaml"))
BAD = sorted((EXAMPLES / "invalid").glob("*.yaml"))


def test_crd_is_a_valid_customresourcedefinition() -> None:
    kubernetes_validate.validate(load_crd(), K8S_VERSION, strict=True)


def test_kopf_peering_crds_are_valid() -> None:
    docs = example_documents(CRD_PATH.parent / "kopf-peering.yaml")
    crds = [d for d in docs if d["kind"] == "CustomResourceDefinition"]
    assert {c["metadata"]["name"] for c in crds} == {"clusterkopfpeerings.kopf.dev", "kopfpeerings.kopf.dev"}
    for crd in crds:
        kubernetes_validate.validate(crd, K8S_VERSION, strict=True)
    assert any(d["kind"] == "ClusterKopfPeering" and d["metadata"]["name"] == "default" for d in docs)


def test_crd_names_group_and_subresources() -> None:
    crd = load_crd()
    assert crd["metadata"]["name"] == f"{PLURAL}.{GROUP}"
    names = crd["spec"]["names"]
    assert (names["kind"], names["plural"], names["shortNames"], names["categories"]) == (
        KIND,
        PLURAL,
        ["agpool"],
        ["accelgen"],
    )
    (version,) = crd["spec"]["versions"]
    assert version["name"] == VERSION and version["served"] and version["storage"]
    assert version["subresources"]["status"] == {}
    assert version["subresources"]["scale"]["specReplicasPath"] == ".spec.replicas"
    columns = {c["name"]: c["jsonPath"] for c in version["additionalPrinterColumns"]}
    assert columns["Ready"] == ".status.readyReplicas"
    assert columns["Model"] == ".spec.model"
    assert columns["Attainment"] == ".status.tightestAttainment"
    assert columns["Age"] == ".metadata.creationTimestamp"


@pytest.mark.parametrize("path", GOOD, ids=lambda p: p.name)
def test_examples_are_valid(path: Path) -> None:
    pools = [d for d in example_documents(path) if d["kind"] == KIND]
    assert pools, "every example holds an InferencePool"
    for doc in example_documents(path):
        if doc["kind"] == KIND:
            assert validate_pool(doc) == []
        else:
            kubernetes_validate.validate(doc, K8S_VERSION, strict=True)


def test_the_three_required_examples_exist() -> None:
    specs = {p.name: next(d for d in example_documents(p) if d["kind"] == KIND)["spec"] for p in GOOD}
    single = specs["llama-three-tiers.yaml"]
    assert single["engine"]["gpus"] == 1 and len(single["tiers"]) == 3
    tp = specs["tensor-parallel-70b.yaml"]["engine"]
    assert tp["gpus"] > 1 and tp["tensorParallelSize"] == tp["gpus"]
    tenants = specs["tenants-autoscaling.yaml"]
    assert tenants["auth"]["secretName"] and tenants["autoscaling"]["maxReplicas"] > 1


@pytest.mark.parametrize("path", BAD, ids=lambda p: p.name)
def test_invalid_examples_are_rejected_with_the_schema_message(path: Path) -> None:
    expected = re.search(r"^# expect: (.+)$", path.read_text(), re.M)
    assert expected, f"{path.name} must say what it expects in a '# expect:' line"
    (doc,) = example_documents(path)
    errors = validate_pool(doc)
    assert any(expected.group(1) in e for e in errors), errors


def test_defaults_are_applied_before_rules() -> None:
    schema = pool_schema()
    doc = {
        "spec": {
            "model": "m",
            "engine": {"image": "e"},
            "sidecar": {"image": "s"},
            "tiers": [{"name": "a", "ttftMs": 1, "tbtMs": 1}],
            "autoscaling": {"maxReplicas": 3},
        }
    }
    out = apply_defaults(schema, copy.deepcopy(doc))
    assert out["spec"]["replicas"] == 1
    assert out["spec"]["engine"]["gpus"] == 1
    assert out["spec"]["autoscaling"]["minReplicas"] == 1
    assert out["spec"]["tiers"][0]["attainmentTarget"] == 0.9


def test_replicas_outside_autoscaling_bounds_accepted() -> None:
    # Lowering maxReplicas below the current replicas must not be refused: the operator
    # clamps the Deployment and steps spec.replicas back within bounds (ScaledToBounds).
    docs = example_documents(EXAMPLES / "tenants-autoscaling.yaml")
    doc = next(d for d in docs if d["kind"] == KIND)
    doc["spec"]["replicas"] = 20
    assert validate_pool(doc) == []


def test_images_may_be_left_to_the_operators_defaults() -> None:
    """A pool may omit engine.image and sidecar.image; an empty image is still refused."""
    doc = copy.deepcopy(next(d for d in example_documents(EXAMPLES / "llama-three-tiers.yaml") if d["kind"] == KIND))
    del doc["spec"]["engine"]["image"], doc["spec"]["sidecar"]["image"]
    assert validate_pool(doc) == []
    doc["spec"]["engine"]["image"] = ""
    assert any("engine.image" in e for e in validate_pool(doc))
    spec = pool_schema()["properties"]["spec"]
    for part in ("engine", "sidecar"):
        assert "image" not in spec["properties"][part].get("required", [])
        assert "image" in spec["properties"][part]["properties"]
    assert spec["required"] == ["model", "engine", "tiers"]  # spec.sidecar is optional too
