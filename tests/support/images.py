"""The Dockerfile's images, built with ``scripts/build-images.sh`` and run as their pods run them.

:func:`build_images` builds from a clean tree (``git archive HEAD``: what is committed,
nothing else) with the repository's cache (``build/images``: base images, wheelhouse).
:class:`Container` runs one image's process the way Kubernetes would with the pod specs
of ``accelgen_operator.resources`` and the chart:

* the image's own root file system (a ``buildah mount`` of a fresh container), bound
  read-only, with the pod's volumes bound over it (read-only where the pod says so; an
  emptyDir is a host directory the pod's user owns, ``medium: Memory`` a tmpfs);
* the image's environment, working directory and entrypoint, plus the pod's env;
* UID/GID 65532 (``chroot --userspec``: a real non-root process, no capabilities);
* the host's network (so a server on 127.0.0.1 answers the test).

``buildah run`` has no read-only root (podman's ``--read-only`` is not in buildah), hence
the private mount namespace (``unshare --mount``) and ``chroot`` here.
"""

from __future__ import annotations

import json
import os
import shlex
import subprocess
import tarfile
import tempfile
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath

from accelgen.process import ChildProcess
from tests.support.deploy import ROOT

BUILD_SCRIPT = ROOT / "scripts" / "build-images.sh"
CACHE_DIR = ROOT / "build" / "images"
TAG = "0.1.0"
IMAGES = {t: f"ghcr.io/accelgen/accelgen-{t}:{TAG}" for t in ("operator", "sidecar", "engine")}
NONROOT = "65532:65532"
# The build script's store (vfs), which its storage.conf in the cache selects.
_ENV = {**os.environ, "CONTAINERS_STORAGE_CONF": str(CACHE_DIR / "storage.conf"), "BUILDAH_ISOLATION": "chroot"}


@dataclass(frozen=True)
class BuildResult:
    returncode: int
    output: str

    @property
    def error(self) -> str | None:
        """The script's one-line error (``build-images: error: ...``), if it failed."""
        lines = [ln for ln in self.output.splitlines() if ln.startswith("build-images: error:")]
        return lines[-1] if lines else (None if self.returncode == 0 else self.output[-2000:])


def clean_tree(dest: Path) -> Path:
    """HEAD's committed files in ``dest`` (uncommitted and ignored files stay out)."""
    archive = dest / "head.tar"
    subprocess.run(["git", "-C", str(ROOT), "archive", "--format=tar", "-o", str(archive), "HEAD"], check=True)
    tree = dest / "tree"
    with tarfile.open(archive) as tar:
        tar.extractall(tree, filter="tar")
    archive.unlink()
    return tree


def build_images(tree: Path, *targets: str, cache: Path = CACHE_DIR, timeout_s: float = 3600) -> BuildResult:
    """Run the build script on ``tree`` (its own copy of the script), by default with the shared cache."""
    cmd = ["bash", str(tree / "scripts" / "build-images.sh"), "--context", str(tree), "--cache", str(cache)]
    env = {**_ENV, "HOST_PYTHON": str(ROOT / ".venv" / "bin" / "python")}
    proc = subprocess.run([*cmd, *targets], env=env, capture_output=True, text=True, timeout=timeout_s, check=False)
    return BuildResult(proc.returncode, proc.stdout + proc.stderr)


def buildah(*args: str) -> str:
    out = subprocess.run(["buildah", *args], env=_ENV, capture_output=True, text=True, check=False)
    if out.returncode != 0:
        raise RuntimeError(f"buildah {' '.join(args)}: {out.stderr.strip()}")
    return out.stdout.strip()


def image_config(image: str) -> dict[str, object]:
    """The image's OCI config (User, Env, Entrypoint, Cmd, WorkingDir, ...)."""
    # buildah 1.28's --format has no `json` function: the whole document, parsed here.
    config: dict[str, object] = json.loads(buildah("inspect", "--type", "image", image))["OCIv1"]["config"]
    return config


@dataclass(frozen=True)
class Mount:
    """A pod volume: a host directory bound at ``target`` (``None``: a fresh tmpfs)."""

    target: str
    source: Path | None = None
    read_only: bool = False


@dataclass
class Container:
    """A fresh container of ``image``; :meth:`start` runs a process in it, :meth:`remove` ends all."""

    image: str
    root: Path = field(init=False)
    name: str = field(init=False)
    processes: list[ChildProcess] = field(default_factory=list, init=False)

    def __post_init__(self) -> None:
        self.name = buildah("from", "--pull=never", self.image)
        self.root = Path(buildah("mount", self.name))

    def config(self) -> dict[str, object]:
        return image_config(self.image)

    def command(
        self,
        args: Sequence[str] | None = None,
        *,
        entrypoint: Sequence[str] | None = None,
        mounts: Sequence[Mount] = (),
        env: Mapping[str, str] | None = None,
        user: str = NONROOT,
        read_only_root: bool = True,
    ) -> list[str]:
        """The host command that runs the image's entrypoint (or ``entrypoint``) with ``args``.

        ``None`` args keep the image's CMD, as a pod without ``args`` does.
        """
        cfg = self.config()
        argv = [*(entrypoint or cfg.get("Entrypoint") or []), *(cfg.get("Cmd") or [] if args is None else args)]
        environment = dict(e.split("=", 1) for e in cfg.get("Env") or [])  # type: ignore[union-attr]
        environment.update(env or {})
        # A container runtime (runc) sets HOME from /etc/passwd, or "/" for a user it has no
        # entry for (UID 65532 here), when neither the image nor the pod sets it.
        environment.setdefault("HOME", "/")
        workdir = str(cfg.get("WorkingDir") or "/")
        root = shlex.quote(str(self.root))
        lines = ["set -e", f"mount --bind {root} {root}", f"mount -t proc proc {root}/proc"]
        lines += [f"mount --rbind /dev {root}/dev", f"mount --rbind -o ro /sys {root}/sys"]
        for m in mounts:
            target = shlex.quote(str(in_root(self.root, m.target)))
            # The mount point is made in this container's own copy, as a runtime does.
            lines.append(f"mkdir -p {target}")
            if m.source is None:
                lines.append(f"mount -t tmpfs -o mode=1777 tmpfs {target}")
            else:
                lines.append(f"mount --bind {shlex.quote(str(m.source))} {target}")
                if m.read_only:
                    lines.append(f"mount -o remount,bind,ro {target}")
        if read_only_root:
            lines.append(f"mount -o remount,bind,ro {root}")
        inner = ["/usr/bin/env", "-i", f"--chdir={workdir}", *(f"{k}={v}" for k, v in environment.items()), *argv]
        lines.append(f"exec chroot --userspec={user} {root} " + shlex.join(inner))
        return ["unshare", "--mount", "--propagation", "private", "sh", "-c", "\n".join(lines)]

    def start(self, args: Sequence[str] | None = None, *, log_file: Path, **kwargs: object) -> ChildProcess:
        """Start the process (see :meth:`command`); its output goes to ``log_file``."""
        cmd = self.command(args, **kwargs)  # type: ignore[arg-type]
        proc = ChildProcess(cmd, name=f"{self.image} entrypoint", env=_ENV, log_file=log_file, stop_grace_s=20.0)
        self.processes.append(proc)
        return proc

    def run(self, argv: Sequence[str], **kwargs: object) -> subprocess.CompletedProcess[str]:
        """Run ``argv`` (instead of the entrypoint) to completion, as the pod's user."""
        cmd = self.command(list(argv[1:]), entrypoint=[argv[0]], **kwargs)  # type: ignore[arg-type]
        return subprocess.run(cmd, env=_ENV, capture_output=True, text=True, timeout=120, check=False)

    def remove(self) -> None:
        for proc in self.processes:
            proc.stop()
        subprocess.run(["buildah", "umount", self.name], env=_ENV, capture_output=True, check=False)
        subprocess.run(["buildah", "rm", self.name], env=_ENV, capture_output=True, check=False)


def scratch_dir(parent: Path, name: str) -> Path:
    """A directory the pod's user (65532) can write, as an emptyDir is."""
    path = Path(tempfile.mkdtemp(prefix=f"{name}-", dir=parent))
    os.chown(path, 65532, 65532)
    return path


def in_root(root: Path, path: str) -> Path:
    """Where ``path`` of the container is on the host: its symlinks resolved inside the
    container's root, as a runtime resolves a mount point (runc's securejoin). Joined
    naively, ``/var/run/x`` in a Debian image follows ``var/run -> /run`` to the host's
    ``/run/x``."""
    parts = list(PurePosixPath(path).parts[1:])
    inside = PurePosixPath("/")
    hops = 0
    while parts:
        part = parts.pop(0)
        if part == "..":
            inside = inside.parent
            continue
        here = root / (inside / part).relative_to("/")
        if here.is_symlink():
            hops += 1
            if hops > 40:
                raise OSError(f"{path}: too many symlinks inside {root}")
            link = PurePosixPath(os.readlink(here))
            parts = list((link if link.is_absolute() else inside / link).parts[1:]) + parts
            inside = PurePosixPath("/")
            continue
        inside = inside / part
    return root / inside.relative_to("/")


def pod_mounts(container: Mapping[str, object], sources: Mapping[str, Path | None]) -> list[Mount]:
    """A pod container's ``volumeMounts``, each volume's host side from ``sources`` (None: tmpfs)."""
    mounts = container.get("volumeMounts") or []
    return [Mount(m["mountPath"], sources[m["name"]], bool(m.get("readOnly"))) for m in mounts]  # type: ignore[union-attr, index]


def pool_spec(
    *, model: str = "meta-llama/Llama-3.1-8B-Instruct", engine: Mapping[str, object] | None = None
) -> dict[str, object]:
    """An InferencePool spec with the chart's default images and three tiers."""
    return {
        "model": model,
        "replicas": 1,
        "engine": {"image": IMAGES["engine"], "gpus": 1, **(engine or {})},
        "sidecar": {"image": IMAGES["sidecar"]},
        "tiers": [
            {"name": "interactive", "ttftMs": 500, "tbtMs": 100, "attainmentTarget": 0.95},
            {"name": "standard", "ttftMs": 2000, "tbtMs": 250},
            {"name": "batch", "deadlineSeconds": 3600, "priority": 2},
        ],
        "defaultTier": "standard",
    }


def config_volume(parent: Path, name: str, spec: Mapping[str, object]) -> Path:
    """The pool's ConfigMap (tiers.yaml, scheduler.yaml) as the pod's config volume shows it."""
    from accelgen_operator.resources import build_config_map

    path = scratch_dir(parent, "config")
    for key, text in build_config_map(name, "images", spec)["data"].items():
        (path / key).write_text(text)
        (path / key).chmod(0o644)
    return path
