"""docs/kubernetes.md's quick start, command by command, as far as a machine without a cluster allows."""

from __future__ import annotations

import shlex
from typing import Any

import helm_python as helm
import kubernetes_validate
import yaml

from tests.support import crd_schema
from tests.support.deploy import CHART, K8S_VERSION, ROOT, chart, objects

DOC = ROOT / "docs" / "kubernetes.md"


def quick_start() -> list[list[str]]:
    section = DOC.read_text().split("## Quick start", 1)[1]
    block = section.split("```bash\n", 1)[1].split("```", 1)[0]
    return [shlex.split(line) for line in block.splitlines() if line.strip()]


def _helm_install(argv: list[str]) -> tuple[str, str, str, dict[str, Any]]:
    """(release, chart path, namespace, values) of a `helm install` command line."""
    assert argv[:2] == ["helm", "install"]
    positional: list[str] = []
    namespace = "default"
    values: dict[str, Any] = {}
    args = iter(argv[2:])
    for arg in args:
        if arg in ("--namespace", "-n"):
            namespace = next(args)
        elif arg == "--create-namespace":
            pass
        elif arg == "--set":
            values = _merge(values, helm.parse_set_string(next(args)))
        elif arg in ("-f", "--values"):
            values = _merge(values, yaml.safe_load((ROOT / next(args)).read_text()))
        else:
            assert not arg.startswith("-"), f"flag the test does not know: {arg}"
            positional.append(arg)
    release, chart_path = positional
    return release, chart_path, namespace, values


def _merge(a: dict[str, Any], b: dict[str, Any]) -> dict[str, Any]:
    out = dict(a)
    for key, value in b.items():
        out[key] = _merge(out[key], value) if isinstance(value, dict) and isinstance(out.get(key), dict) else value
    return out


def test_quick_start_commands_run_as_far_as_possible() -> None:
    commands = quick_start()
    kinds = {c[0] for c in commands}
    assert kinds <= {"helm", "kubectl"}
    installs = [c for c in commands if c[:2] == ["helm", "install"]]
    assert len(installs) >= 2
    for argv in installs:
        release, chart_path, namespace, values = _helm_install(argv)
        assert (ROOT / chart_path).resolve() == CHART.resolve()
        helm.validate_release_name(release)
        chart().validate_schema(values)
        rendered = chart().render(values, name=release, namespace=namespace, is_install=True)
        for obj in objects(rendered):
            if obj["kind"] not in {"PodMonitor", "PrometheusRule", "ClusterKopfPeering"}:
                kubernetes_validate.validate(obj, K8S_VERSION, strict=True)
        if "monitoring.dashboard.enabled=true" in " ".join(argv):
            assert {"PodMonitor", "PrometheusRule", "ConfigMap"} <= {o["kind"] for o in objects(rendered)}
    applied = [c[c.index("-f") + 1] for c in commands if c[:2] == ["kubectl", "apply"]]
    assert applied
    names = set()
    for path in applied:
        for doc in yaml.safe_load_all((ROOT / path).read_text()):
            if doc and doc.get("kind") == "InferencePool":
                assert crd_schema.validate_pool(doc) == [], path
                names.add(doc["metadata"]["name"])
    for argv in commands:
        if argv[:2] == ["kubectl", "get"]:
            resource, name = argv[2], argv[3]
            assert resource == "inferencepools.accelgen.dev" and name in names


def test_doc_links_the_picture() -> None:
    assert "](dashboard.png)" in DOC.read_text()
    assert (ROOT / "docs" / "dashboard.png").read_bytes()[:4] == b"\x89PNG"


def test_readme_kubernetes_commands_are_the_tested_ones() -> None:
    """README's Kubernetes quick start uses only commands exercised above."""
    readme = (ROOT / "README.md").read_text()
    lines = [line.strip() for line in readme.splitlines() if line.strip().startswith(("helm ", "kubectl "))]
    assert lines, "README lost its Kubernetes quick start"
    tested = quick_start()
    for line in lines:
        assert shlex.split(line) in tested, line
