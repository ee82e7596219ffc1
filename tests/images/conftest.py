"""The images, built once per session from a clean tree (see tests/support/images.py).

Skipped, with the build script's own one-line reason, only when buildah (or debootstrap) is
missing and cannot be installed; any other build failure fails the tests.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from tests.support.images import IMAGES, BuildResult, Container, build_images, clean_tree


@pytest.fixture(scope="session")
def build(tmp_path_factory: pytest.TempPathFactory) -> BuildResult:
    tree = clean_tree(tmp_path_factory.mktemp("images"))
    result = build_images(tree)
    (tree.parent / "build.log").write_text(result.output)
    if result.returncode != 0:
        if result.error and " is not installed and " in result.error:
            pytest.skip(result.error)
        pytest.fail(f"scripts/build-images.sh failed: {result.error}")
    return result


@pytest.fixture(scope="session")
def images(build: BuildResult) -> dict[str, str]:
    return IMAGES


@pytest.fixture
def container(images: dict[str, str]) -> Iterator[Callable[[str], Container]]:
    """``container("sidecar")``: a fresh container of that image, removed after the test."""
    made: list[Container] = []

    def make(target: str) -> Container:
        made.append(Container(images[target]))
        return made[-1]

    yield make
    for c in made:
        c.remove()


@pytest.fixture
def pod_dir(tmp_path: Path) -> Path:
    tmp_path.chmod(0o755)
    return tmp_path
