"""The Helm chart, rendered by Helm's own engine: objects, schemas, lint, failures, NOTES."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import helm_python as helm
import kubernetes_validate
import pytest
import yaml

from tests.support import crd_schema
from tests.support.deploy import (
    CHART,
    CI_VALUES,
    K8S_VERSION,
    NAMESPACE,
    by_kind,
    chart,
    load_values,
    objects,
    one,
    render,
)

SCENARIOS = [pytest.param(None, id="defaults")] + [pytest.param(p, id=p.stem) for p in CI_VALUES]
# Kinds whose schema kubernetes-validate does not ship (CRD-typed); checked below instead.
CUSTOM_KINDS = {"PodMonitor", "PrometheusRule", "ClusterKopfPeering"}


def _values(path: Path | None) -> dict[str, Any]:
    return load_values(path) if path else {}


def test_at_least_three_scenarios() -> None:
    assert len(CI_VALUES) >= 3


@pytest.mark.parametrize("values_file", SCENARIOS)
def test_every_object_validates_against_kubernetes_schemas(values_file: Path | None) -> None:
    objs = objects(render(_values(values_file)))
    assert {"Deployment", "ClusterRole"} <= {o["kind"] for o in objs}
    for obj in objs:
        if obj["kind"] in CUSTOM_KINDS:
            continue
        kubernetes_validate.validate(obj, K8S_VERSION, strict=True)


@pytest.mark.parametrize("values_file", SCENARIOS)
def test_helm_lint_is_clean(values_file: Path | None) -> None:
    report = helm.lint(CHART, _values(values_file), strict=True, namespace=NAMESPACE, kube_version="v1.30.0")
    problems = [m for m in report["messages"] if m["severity"] >= 2]
    assert report["errors"] == [] and problems == [], report


def test_kubernetes_validation_catches_a_broken_object() -> None:
    deployment = one(objects(render()), "Deployment")
    deployment["spec"]["template"]["spec"]["containers"][0]["livenessProbe"]["httpGet"]["port"] = {"bad": 1}
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(deployment, K8S_VERSION, strict=True)


def test_operator_deployment() -> None:
    objs = objects(render())
    deployment = one(objs, "Deployment")
    spec = deployment["spec"]
    assert spec["replicas"] == 1 and spec["strategy"] == {"type": "Recreate"}
    pod = spec["template"]["spec"]
    (container,) = pod["containers"]
    assert container["command"] == ["accelgen-operator"]
    assert container["args"][0] == "run"
    assert "--liveness=http://0.0.0.0:8080/healthz" in container["args"]
    assert "--peering=default" in container["args"] and "--standalone" not in container["args"]
    assert container["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": "healthz"}
    assert {"name": "healthz", "containerPort": 8080, "protocol": "TCP"} in container["ports"]
    assert container["image"] == "ghcr.io/accelgen/accelgen-operator:0.1.0"  # appVersion
    env = {e["name"]: e["value"] for e in container["env"]}
    assert env["ACCELGEN_DEFAULT_ENGINE_IMAGE"] == "ghcr.io/accelgen/accelgen-engine:0.1.0"
    assert env["ACCELGEN_DEFAULT_SIDECAR_IMAGE"] == "ghcr.io/accelgen/accelgen-sidecar:0.1.0"
    assert pod["serviceAccountName"] == one(objs, "ServiceAccount")["metadata"]["name"]
    # The selector must not match the pools' pods (they carry app.kubernetes.io/name=accelgen too).
    assert spec["selector"]["matchLabels"]["app.kubernetes.io/component"] == "operator"
    assert one(objs, "ClusterKopfPeering")["metadata"]["name"] == "default"


def test_operator_args_follow_the_cli() -> None:
    """Every flag the chart passes exists in `accelgen-operator run` (parsed by its own parser)."""
    from accelgen_operator.cli import _parser

    for path in [None, *CI_VALUES]:
        container = one(objects(render(_values(path))), "Deployment")["spec"]["template"]["spec"]["containers"][0]
        args = _parser().parse_args(container["args"])
        assert args.command == "run"
        port = container["ports"][0]["containerPort"]
        assert args.liveness == f"http://0.0.0.0:{port}/healthz"


def test_scenarios_change_what_they_say() -> None:
    by_name = {p.stem: load_values(p) for p in CI_VALUES}
    standalone = one(objects(render(by_name["namespaced-standalone-values"])), "Deployment")
    args = standalone["spec"]["template"]["spec"]["containers"][0]["args"]
    assert "--standalone" in args and "--namespace=serving" in args and "--namespace=team-*" in args
    assert by_kind(objects(render(by_name["namespaced-standalone-values"])), "ClusterKopfPeering") == []

    pinned = objects(render(by_name["pinned-existing-sa-values"]))
    assert by_kind(pinned, "ServiceAccount") == []
    container = one(pinned, "Deployment")["spec"]["template"]["spec"]["containers"][0]
    assert container["image"].startswith("registry.example.com/ml/accelgen-operator@sha256:")
    env = {e["name"]: e["value"] for e in container["env"]}
    assert env["ACCELGEN_DEFAULT_ENGINE_IMAGE"] == "registry.example.com/ml/accelgen-engine:0.1.0-vllm0.32.0"
    assert one(pinned, "ClusterRoleBinding")["subjects"][0]["name"] == "accelgen-operator"

    monitored = objects(render(by_name["monitoring-values"]))
    assert {"PodMonitor", "PrometheusRule", "ConfigMap"} <= {o["kind"] for o in monitored}
    dashboard = one(monitored, "ConfigMap")
    assert dashboard["metadata"]["labels"]["grafana_dashboard"] == "1"
    assert dashboard["metadata"]["namespace"] == "monitoring"


def test_monitoring_is_off_by_default() -> None:
    kinds = {o["kind"] for o in objects(render())}
    assert not kinds & {"PodMonitor", "PrometheusRule", "ConfigMap"}


def test_hardened_security_context_by_default() -> None:
    pod = one(objects(render()), "Deployment")["spec"]["template"]["spec"]
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert pod["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
    ctx = pod["containers"][0]["securityContext"]
    assert ctx["readOnlyRootFilesystem"] is True
    assert ctx["allowPrivilegeEscalation"] is False
    assert ctx["capabilities"] == {"drop": ["ALL"]}
    assert ctx["runAsNonRoot"] is True


@pytest.mark.parametrize(
    ("values", "message"),
    [
        ({"serviceAccount": {"create": False}}, "serviceAccount.name is required when serviceAccount.create is false"),
        ({"operator": {"image": {"repository": ""}}}, "operator.image.repository is required"),
        ({"defaults": {"engine": {"image": {"repository": ""}}}}, "defaults.engine.image.repository is required"),
        ({"defaults": {"sidecar": {"image": {"repository": ""}}}}, "defaults.sidecar.image.repository is required"),
    ],
)
def test_required_values_fail_with_their_message(values: dict[str, Any], message: str) -> None:
    with pytest.raises(helm.HelmRenderError, match=re.escape(f"accelgen: {message}")):
        render(values)


@pytest.mark.parametrize(
    ("values", "where"),
    [
        ({"operator": {"imagee": {}}}, "additional properties 'imagee' not allowed"),
        ({"monitoring": {"podMonitor": {"enabled": True, "interval": "soon"}}}, "/monitoring/podMonitor/interval"),
        ({"operator": {"livenessPort": 80}}, "/operator/livenessPort"),
        ({"operator": {"image": {"digest": "latest"}}}, "/operator/image/digest"),
    ],
)
def test_schema_rejects_bad_values(values: dict[str, Any], where: str) -> None:
    with pytest.raises(helm.HelmValuesError, match=re.escape(where)):
        render(values)


def _objects_in_schema(node: Any, path: str = "") -> list[tuple[str, dict[str, Any]]]:
    out: list[tuple[str, dict[str, Any]]] = []
    if isinstance(node, dict):
        if node.get("type") == "object" and "properties" in node:
            out.append((path, node))
        for key, value in node.items():
            out += _objects_in_schema(value, f"{path}/{key}")
    return out


def test_schema_is_draft_2020_12_with_closed_objects() -> None:
    schema = json.loads((CHART / "values.schema.json").read_text())
    assert schema["$schema"] == "https://json-schema.org/draft/2020-12/schema"
    found = _objects_in_schema(schema)
    assert len(found) > 10
    for path, node in found:
        assert node.get("additionalProperties") is False, f"{path or '/'} is open"
    assert chart().schema == schema


# Free-form blocks: the comment on the block describes what is inside.
_FREE_FORM = {"resources", "podSecurityContext", "securityContext", "labels", "annotations"}


def test_every_value_is_commented() -> None:
    lines = (CHART / "values.yaml").read_text().splitlines()
    stack: list[tuple[int, str]] = []  # (indent, key) of the enclosing keys
    missing = []
    for i, line in enumerate(lines):
        match = re.match(r"^(\s*)([A-Za-z][\w-]*):", line)
        if not match:
            continue
        indent, key = len(match.group(1)), match.group(2)
        while stack and stack[-1][0] >= indent:
            stack.pop()
        inside_free_form = any(k in _FREE_FORM for _, k in stack)
        stack.append((indent, key))
        if inside_free_form:
            continue
        above = lines[i - 1].strip() if i else ""
        if not above.startswith("#"):
            missing.append(f"line {i + 1}: {key}")
    assert missing == []


def _schema_defaults(schema: dict[str, Any], path: str = "") -> dict[str, Any]:
    """Each leaf property of the schema (path -> its ``default``, or a marker when it has none)."""
    leaves: dict[str, Any] = {}
    for name, sub in schema.get("properties", {}).items():
        where = f"{path}.{name}" if path else name
        if "properties" in sub:
            leaves |= _schema_defaults(sub, where)
        elif name != "global":  # Helm's own, filled by parent charts
            leaves[where] = sub.get("default", "<no default>")
    return leaves


def _values_leaves(values: dict[str, Any], schema: dict[str, Any], path: str = "") -> dict[str, Any]:
    """values.yaml flattened the way the schema nests objects (open objects are one leaf)."""
    leaves: dict[str, Any] = {}
    for name, value in values.items():
        where = f"{path}.{name}" if path else name
        sub = schema.get("properties", {}).get(name, {})
        leaves |= _values_leaves(value, sub, where) if "properties" in sub else {where: value}
    return leaves


def test_values_yaml_is_the_schema_default() -> None:
    """values.yaml holds exactly the schema's defaults: every leaf of the schema has a
    ``default`` and values.yaml has that value, no more and no less; and it validates."""
    values = yaml.safe_load((CHART / "values.yaml").read_text())
    schema = json.loads((CHART / "values.schema.json").read_text())
    defaults = _schema_defaults(schema)
    assert "<no default>" not in defaults.values(), [k for k, v in defaults.items() if v == "<no default>"]
    assert _values_leaves(values, schema) == defaults
    chart().validate_schema(values)


def test_notes_sample_pool_is_valid_for_the_crd() -> None:
    notes = render()["accelgen/templates/NOTES.txt"]
    block = notes.split("kubectl apply -f pool.yaml`:\n", 1)[1].split("\n3.", 1)[0]
    pool = yaml.safe_load("\n".join(line[5:] for line in block.splitlines()))
    assert pool["kind"] == "InferencePool"
    assert pool["spec"]["engine"]["image"] == "ghcr.io/accelgen/accelgen-engine:0.1.0"
    assert crd_schema.validate_pool(pool) == []
    assert "kubectl apply --server-side -f" in notes  # how to upgrade the CRDs


def test_notes_mention_monitoring_only_when_enabled() -> None:
    assert "4. Monitoring" not in render()["accelgen/templates/NOTES.txt"]
    values = load_values(CHART / "ci" / "monitoring-values.yaml")
    notes = render(values)["accelgen/templates/NOTES.txt"]
    assert "AccelGen: per-tier goodput" in notes and "PodMonitor" in notes
