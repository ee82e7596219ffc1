"""Pure part of the apply step: the merge patch clears fields the spec dropped."""

from __future__ import annotations

from accelgen_operator.apply import merge_patch, plural_of, spec_hash
from accelgen_operator.resources import build_deployment, stamp_hash
from tests.support.operator_cluster import make_spec


def test_patch_nulls_dropped_pod_fields_and_keeps_the_rest() -> None:
    engine = {
        "image": "e",
        "gpus": 1,
        "nodeSelector": {"gpu": "a100"},
        "runtimeClassName": "nvidia",
    }
    current = build_deployment("llama", "ns", make_spec(engine=engine))
    current["spec"]["template"]["spec"]["dnsPolicy"] = "ClusterFirst"  # server default: not ours
    desired = build_deployment("llama", "ns", make_spec(engine={"image": "e", "gpus": 1}))
    patch = merge_patch(current, desired)
    pod = patch["spec"]["template"]["spec"]
    assert pod["nodeSelector"] is None and pod["runtimeClassName"] is None
    assert "dnsPolicy" not in pod
    assert "nodeSelector" not in desired["spec"]["template"]["spec"]  # desired is not mutated
    assert "apiVersion" not in patch and "kind" not in patch


def test_spec_hash_and_plural() -> None:
    deployment = stamp_hash(build_deployment("llama", "ns", make_spec()))
    assert spec_hash(deployment) and spec_hash({}) is None
    assert plural_of(deployment) == "deployments"
