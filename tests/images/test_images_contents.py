"""What is in each final image: its user, no compiler, no sources, no pip cache, and the
mechanism the entrypoint tests rely on (non-root, read-only root) holding."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest

from tests.support.images import IMAGES, NONROOT, BuildResult, Container, Mount, image_config, scratch_dir

pytestmark = [pytest.mark.images, pytest.mark.slow]

TARGETS = ("operator", "sidecar", "engine")
COMPILERS = ("gcc", "cc", "c++", "g++", "clang", "x86_64-linux-gnu-gcc", "tcc")
BIN_DIRS = ("usr/local/bin", "usr/bin", "bin", "usr/sbin", "sbin")


def test_the_build_printed_each_image_with_size_and_time(build: BuildResult) -> None:
    for image in IMAGES.values():
        (line,) = [ln for ln in build.output.splitlines() if ln.startswith(f"build-images: {image}: ")]
        assert " built in " in line and line.split(": ", 2)[2].split(",")[0].strip()


@pytest.mark.parametrize("target", TARGETS)
def test_runs_as_non_root(images: dict[str, str], target: str) -> None:
    assert image_config(images[target]).get("User") == NONROOT


@pytest.mark.parametrize("target", TARGETS)
def test_no_compiler_no_sources_no_pip_cache(container: Callable[[str], Container], target: str) -> None:
    root = container(target).root
    for bin_dir in BIN_DIRS:
        for name in COMPILERS:
            assert not (root / bin_dir / name).exists(), f"{target}: /{bin_dir}/{name}"
        assert not list((root / bin_dir).glob("gcc-*")), f"{target}: /{bin_dir}/gcc-*"
    # No source tree, no wheels the build used: only the installed package.
    for path in ("src", "wheels", "sidecar", "operator", "pyproject.toml"):
        assert not (root / path).exists(), f"{target}: /{path}"
    # buildah leaves the mount point of the wheelhouse volume (`--volume ...:/wheelhouse:ro`)
    # in the image: an empty directory, never a wheel.
    wheelhouse = root / "wheelhouse"
    assert not wheelhouse.exists() or not any(wheelhouse.iterdir()), f"{target}: /wheelhouse holds files"
    installed = [p.relative_to(root) for p in root.glob("usr/**/accelgen/cli.py")]
    assert installed and all("-packages/" in str(p) for p in installed), installed
    assert not list(root.glob("usr/**/__editable__*accelgen*")), "editable install"
    caches = [*root.glob("root/.cache/pip"), *root.glob("home/*/.cache/pip"), *root.glob("tmp/pip-*")]
    assert not caches, caches


@pytest.mark.parametrize("target", TARGETS)
def test_the_pod_user_cannot_write_the_root(container: Callable[[str], Container], target: str, pod_dir: Path) -> None:
    """The run mechanism itself: UID 65532, root read-only, a mounted volume writable."""
    c = container(target)
    script = (
        "import os\n"
        "print(os.getuid(), os.getgid())\n"
        "for path in ('/probe', '/usr/probe', os.path.expanduser('~/probe'), '/vol/probe'):\n"
        "    try:\n"
        "        open(path, 'w').close(); print(path, 'written')\n"
        "    except OSError as err:\n"
        "        print(path, type(err).__name__, err.errno)\n"
    )
    out = c.run(["python3", "-c", script], mounts=[Mount("/vol", scratch_dir(pod_dir, "vol"))])
    assert out.returncode == 0, out.stderr
    lines = out.stdout.splitlines()
    assert lines[0] == "65532 65532"
    assert all("written" not in ln for ln in lines[1:4]), lines  # EROFS (30) or EACCES
    assert lines[4] == "/vol/probe written"
