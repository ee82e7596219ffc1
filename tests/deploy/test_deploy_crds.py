"""crds/ stays the single source of truth: the chart links to it, and a packaged chart carries it."""

from __future__ import annotations

from pathlib import Path

import helm_python as helm
import kubernetes_validate
import yaml

from tests.support.deploy import CHART, K8S_VERSION, ROOT, chart, objects, one, render

CRD = ROOT / "crds" / "accelgen.dev_inferencepools.yaml"
PEERING = ROOT / "crds" / "kopf-peering.yaml"


def test_chart_crd_is_a_link_to_crds() -> None:
    link = CHART / "crds" / CRD.name
    assert link.is_symlink()
    assert link.resolve() == CRD.resolve()


def test_loaded_chart_carries_the_crds() -> None:
    crds = {c["name"]: c["data"] for c in chart().crds}
    assert crds[f"crds/{CRD.name}"] == CRD.read_text()
    peering_docs = list(yaml.safe_load_all(PEERING.read_text()))
    chart_peering = list(yaml.safe_load_all(crds["crds/kopf-peering-crds.yaml"]))
    # The two CRDs of crds/kopf-peering.yaml; its third document (the peering object) is a template.
    assert chart_peering == peering_docs[:2]
    assert [d["kind"] for d in peering_docs] == ["CustomResourceDefinition"] * 2 + ["ClusterKopfPeering"]
    rendered = one(objects(render()), "ClusterKopfPeering")
    assert (rendered["apiVersion"], rendered["metadata"]["name"]) == (
        peering_docs[2]["apiVersion"],
        peering_docs[2]["metadata"]["name"],
    )
    for crd in [*chart_peering, yaml.safe_load(CRD.read_text())]:
        kubernetes_validate.validate(crd, K8S_VERSION, strict=True)


def test_packaged_chart_resolves_the_links(tmp_path: Path) -> None:
    """`helm package` writes the linked files' contents: the archive needs no repository."""
    archive = helm.package(CHART, destination=tmp_path)
    packaged = helm.Chart.load_archive(Path(archive).read_bytes())
    crds = {c["name"]: c["data"] for c in packaged.crds}
    assert crds[f"crds/{CRD.name}"] == CRD.read_text()
    files = {f["name"]: f["data"] for f in packaged.files}
    assert files["files/rules.yaml"] == (ROOT / "monitoring" / "rules.yaml").read_text()
    assert files["files/dashboard.json"] == (ROOT / "monitoring" / "dashboard.json").read_text()
    values = {"monitoring": {"prometheusRule": {"enabled": True}, "dashboard": {"enabled": True}}}
    rendered = packaged.render(values, name="ag", namespace="ns")
    assert {"accelgen/templates/prometheusrule.yaml", "accelgen/templates/dashboard.yaml"} <= set(rendered)


def test_crd_upgrade_note_is_in_the_chart() -> None:
    assert chart().metadata["annotations"]["accelgen.dev/crd-upgrades"] == "manual"
    assert "never upgrades it" in render()["accelgen/templates/NOTES.txt"]
