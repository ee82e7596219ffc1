"""One name and tag per image everywhere a user or the code meets it.

The chart's defaults name the three images (``ghcr.io/accelgen/accelgen-<target>``, tag
the chart's appVersion = pyproject's version); the Dockerfile's and the docs' build
commands, README, examples/, the operator's sample pool, the build script and the image
tests must say the same, and no other accelgen image name may appear.
"""

from __future__ import annotations

import re
import tomllib
from pathlib import Path

import pytest
import yaml

from accelgen_operator.bench import sample_pool
from tests.support.deploy import CHART, ROOT, objects, one, render
from tests.support.images import IMAGES

TARGETS = ("operator", "sidecar", "engine")
# An image reference whose repository's last part starts with "accelgen".
IMAGE_REF = re.compile(r"(?<![\w.\-/])(?:[a-z0-9.\-]+/)+accelgen[a-z0-9\-]*:[\w.\-]+")
BUILD_COMMAND = re.compile(r"--target\s+(\w+)\s+-t\s+(\S+)")
EXAMPLES = sorted((ROOT / "examples").glob("*.yaml"))  # examples/invalid/ use placeholders


def _version() -> str:
    version: str = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["version"]
    return version


def _chart_defaults() -> dict[str, str]:
    values = yaml.safe_load((CHART / "values.yaml").read_text())
    app_version = str(yaml.safe_load((CHART / "Chart.yaml").read_text())["appVersion"])
    images = {
        "operator": values["operator"]["image"],
        "engine": values["defaults"]["engine"]["image"],
        "sidecar": values["defaults"]["sidecar"]["image"],
    }
    return {t: f"{img['repository']}:{img['tag'] or app_version}" for t, img in images.items()}


EXPECTED = {t: f"ghcr.io/accelgen/accelgen-{t}:{_version()}" for t in TARGETS}


def test_chart_defaults_are_the_names() -> None:
    assert _chart_defaults() == EXPECTED
    assert str(yaml.safe_load((CHART / "Chart.yaml").read_text())["appVersion"]) == _version()
    deployment = one(objects(render()), "Deployment")
    (container,) = deployment["spec"]["template"]["spec"]["containers"]
    env = {e["name"]: e["value"] for e in container["env"]}
    assert container["image"] == EXPECTED["operator"]
    assert env["ACCELGEN_DEFAULT_ENGINE_IMAGE"] == EXPECTED["engine"]
    assert env["ACCELGEN_DEFAULT_SIDECAR_IMAGE"] == EXPECTED["sidecar"]


@pytest.mark.parametrize("path", ["Dockerfile", "README.md", "docs/kubernetes.md"], ids=str)
def test_build_commands_tag_each_target_with_its_name(path: str) -> None:
    commands = BUILD_COMMAND.findall((ROOT / path).read_text())
    assert {t for t, _ in commands} == set(TARGETS), path
    for target, image in commands:
        assert image == EXPECTED[target], (path, target)


@pytest.mark.parametrize("path", EXAMPLES, ids=lambda p: p.name)
def test_examples_use_the_names(path: Path) -> None:
    """A pool that names an image names the chart's; one that omits it takes the same default."""
    pools = [d for d in yaml.safe_load_all(path.read_text()) if d and d.get("kind") == "InferencePool"]
    assert pools, path
    for pool in pools:
        for part in ("engine", "sidecar"):
            image = (pool["spec"].get(part) or {}).get("image")
            assert image in (None, EXPECTED[part]), (path.name, part, image)


def test_operator_sample_pool_and_image_tooling_use_the_names() -> None:
    spec = sample_pool("p", "ns")["spec"]
    assert (spec["engine"]["image"], spec["sidecar"]["image"]) == (EXPECTED["engine"], EXPECTED["sidecar"])
    assert IMAGES == EXPECTED
    script = (ROOT / "scripts" / "build-images.sh").read_text()
    assert "REPOSITORY_PREFIX=ghcr.io/accelgen/accelgen-\n" in script
    assert '"${REPOSITORY_PREFIX}$1:$TAG"' in script  # TAG: pyproject's version unless --tag


def test_no_other_accelgen_image_name_anywhere() -> None:
    files = [
        ROOT / "README.md",
        ROOT / "Dockerfile",
        *ROOT.glob("docs/*.md"),
        *EXAMPLES,
        *CHART.glob("*.yaml"),
        *CHART.glob("*.md"),
        *CHART.glob("*.json"),
        *(CHART / "templates").iterdir(),
        *ROOT.glob("operator/**/*.py"),
        *ROOT.glob("sidecar/**/*.py"),
    ]
    found = {(str(f.relative_to(ROOT)), m) for f in files for m in IMAGE_REF.findall(f.read_text())}
    assert found, "no image names found: the pattern is broken"
    # The deployed images, and the two local base images `make images` builds them on.
    script = (ROOT / "scripts/build-images.sh").read_text()
    (vllm_version,) = re.findall(r"^VLLM_CPU_VERSION=(\S+)", script, re.M)
    named = re.findall(r"^(?:PYTHON|VLLM)_BASE=(\S+)", script, re.M)
    bases = {b.replace("$VLLM_CPU_VERSION", vllm_version) for b in named}
    assert len(bases) == 2, bases
    assert {m for _, m in found} <= set(EXPECTED.values()) | bases, sorted(found)
