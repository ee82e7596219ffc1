"""build-images.sh on bad input: one line naming what is wrong, a non-zero exit."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.support.deploy import ROOT
from tests.support.images import BuildResult, build_images, clean_tree, in_root

SCRIPT = ROOT / "scripts" / "build-images.sh"


def _run(*args: str, path: str | None = None) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "HOST_PYTHON": sys.executable}
    if path is not None:
        env["PATH"] = path
    return subprocess.run(
        ["/bin/bash", str(SCRIPT), *args], env=env, capture_output=True, text=True, timeout=120, check=False
    )


def _error_line(out: subprocess.CompletedProcess[str] | BuildResult) -> str:
    text = out.stderr if isinstance(out, subprocess.CompletedProcess) else out.output
    lines = [ln for ln in text.splitlines() if "error" in ln]
    assert len(lines) == 1, text
    return lines[0]


def test_no_buildah_and_no_apt_get(tmp_path: Path) -> None:
    # A PATH with what the script needs before buildah, but neither buildah nor apt-get.
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    for tool in ("dirname", "mkdir", "cat", "sed", "sha256sum", "cut"):
        found = shutil.which(tool)
        assert found, tool
        (bin_dir / tool).symlink_to(found)
    out = _run("--cache", str(tmp_path / "cache"), path=str(bin_dir))
    assert out.returncode == 1
    assert _error_line(out) == (
        "build-images: error: buildah is not installed and there is no apt-get to install it (install buildah)"
    )


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["webapp"], "unknown argument 'webapp' (targets: operator, sidecar, engine)"),
        (["--tag"], "--tag needs a value"),
        (["--context", "/nonexistent"], "--context /nonexistent has no Dockerfile and pyproject.toml"),
    ],
)
def test_bad_usage(args: list[str], message: str) -> None:
    out = _run(*args)
    assert out.returncode == 2
    assert _error_line(out) == f"build-images: usage error: {message}"


def test_mount_points_resolve_symlinks_inside_the_container_root(tmp_path: Path) -> None:
    """A Debian image's /var/run is a link to /run: the pod's /var/run/accelgen mount must
    land in the image's /run, never the host's (as the engine image's test once did)."""
    root = tmp_path / "root"
    (root / "run").mkdir(parents=True)
    (root / "var").mkdir()
    (root / "var" / "run").symlink_to("/run")
    (root / "opt").mkdir()
    (root / "opt" / "up").symlink_to("../run")
    assert in_root(root, "/var/run/accelgen") == root / "run" / "accelgen"
    assert in_root(root, "/opt/up/x") == root / "run" / "x"
    assert in_root(root, "/etc/accelgen") == root / "etc" / "accelgen"
    assert in_root(root, "/../../var/run") == root / "run"  # never above the root
    (root / "loop").symlink_to("/loop")
    with pytest.raises(OSError, match="too many symlinks"):
        in_root(root, "/loop/x")


@pytest.mark.images
@pytest.mark.slow
def test_missing_base_image(images: dict[str, str], tmp_path: Path) -> None:
    out = _run("--python-image", "localhost/accelgen-no-such-base:1", "--cache", str(tmp_path), "operator")
    assert out.returncode == 1
    assert _error_line(out) == (
        "build-images: error: base image localhost/accelgen-no-such-base:1 (--python-image)"
        " is not in buildah's local storage"
    )


@pytest.mark.images
@pytest.mark.slow
def test_a_failed_step_is_named(images: dict[str, str], tmp_path: Path) -> None:
    tree = clean_tree(tmp_path)
    # Its own cache (logs, wheelhouse); the base images are the shared ones in buildah's storage.
    dockerfile = tree / "Dockerfile"
    text = dockerfile.read_text()
    dockerfile.write_text(text.replace("FROM runtime AS operator\n", "FROM runtime AS operator\nRUN exit 3\n"))
    out = build_images(tree, "operator", cache=tmp_path / "cache", timeout_s=900)
    assert out.returncode == 1
    line = _error_line(out)
    assert line.startswith("build-images: error: step 'build operator' failed (exit "), line
    assert "log: " in line and "exit 3" in Path(line.rsplit("log: ", 1)[1].rstrip(")")).read_text()
