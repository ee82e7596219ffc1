# syntax=docker/dockerfile:1
# AccelGen images, one target each (the Helm chart's defaults name them):
#
#   docker build --target operator -t ghcr.io/accelgen/accelgen-operator:0.1.0 .
#   docker build --target sidecar  -t ghcr.io/accelgen/accelgen-sidecar:0.1.0 .
#   docker build --target engine   -t ghcr.io/accelgen/accelgen-engine:0.1.0 .
#
# The package is built once, as a wheel, from this repository's pyproject.toml; the final
# stages install that wheel only (no compiler, no sources) and run as UID 65532, the user
# the operator's pod spec and the chart's securityContext expect.

ARG PYTHON_IMAGE=python:3.11-slim-bookworm
# vLLM pinned as in pyproject.toml (vllm==0.32.0); tests/deploy checks they agree.
ARG VLLM_IMAGE=vllm/vllm-openai:v0.32.0
# Offline builds (scripts/build-images.sh) set PIP_NO_INDEX=1 and PIP_FIND_LINKS to a
# wheelhouse mounted into every RUN; unset, as in a plain `docker build`, pip uses its index.
# Each stage that runs pip declares them (an ARG's scope is one stage). SOURCES_KEY, a hash
# of the sources that script passes, keys buildah's layer cache of the final stages' RUN
# (buildah 1.28 does not key it on the build stage it mounts), and BUILD_NONCE, new on each
# buildah call, rebuilds the build stage (buildah 1.28 cannot bind-mount a cached stage).
# Docker needs none of them.

# ---------------------------------------------------------------------------- build
FROM ${PYTHON_IMAGE} AS build
ARG PIP_NO_INDEX
ARG PIP_FIND_LINKS
ARG BUILD_NONCE
WORKDIR /src
COPY pyproject.toml README.md ./
COPY sidecar/ sidecar/
COPY operator/ operator/
RUN pip wheel --no-cache-dir --no-deps --wheel-dir /wheels .

# ----------------------------------------------------------------- python runtime
FROM ${PYTHON_IMAGE} AS runtime
ENV PYTHONUNBUFFERED=1 PYTHONDONTWRITEBYTECODE=1 PIP_DISABLE_PIP_VERSION_CHECK=1
# UID 65532 (the pods' runAsUser) gets a name: getpass.getuser() (kopf's peering
# identity) and anything else that asks getpwuid() fails for a UID /etc/passwd lacks.
RUN useradd --uid 65532 --user-group --no-create-home --no-log-init --home-dir / --shell /usr/sbin/nologin accelgen

# ------------------------------------------------------------------------- operator
FROM runtime AS operator
ARG PIP_NO_INDEX
ARG PIP_FIND_LINKS
ARG SOURCES_KEY
RUN --mount=type=bind,from=build,source=/wheels,target=/wheels \
    pip install --no-cache-dir "$(ls /wheels/accelgen-*.whl)[operator]"
USER 65532:65532
EXPOSE 8080
ENTRYPOINT ["accelgen-operator"]
CMD ["run"]

# -------------------------------------------------------------------------- sidecar
FROM runtime AS sidecar
ARG PIP_NO_INDEX
ARG PIP_FIND_LINKS
ARG SOURCES_KEY
RUN --mount=type=bind,from=build,source=/wheels,target=/wheels \
    pip install --no-cache-dir "$(ls /wheels/accelgen-*.whl)[server,gateway]"
USER 65532:65532
EXPOSE 8000
ENTRYPOINT ["accelgen"]
CMD ["serve", "--engine-url", "http://127.0.0.1:8001"]

# --------------------------------------------------------------------------- engine
# vLLM's own image with the accelgen package added, so that
# `--scheduler-cls accelgen.vllm.AccelGenScheduler` resolves; vLLM and its CUDA stack
# stay exactly as shipped (the wheel's own dependencies are already there or pure Python).
FROM ${VLLM_IMAGE} AS engine
ENV PYTHONUNBUFFERED=1 PIP_DISABLE_PIP_VERSION_CHECK=1 HOME=/home/accelgen
ARG PIP_NO_INDEX
ARG PIP_FIND_LINKS
ARG SOURCES_KEY
RUN --mount=type=bind,from=build,source=/wheels,target=/wheels \
    python3 -m pip install --no-cache-dir "$(ls /wheels/accelgen-*.whl)" \
    && python3 -c "import accelgen.vllm, vllm; accelgen.vllm.AccelGenScheduler" \
    && useradd --uid 65532 --user-group --create-home --home-dir /home/accelgen accelgen
USER 65532:65532
EXPOSE 8001
ENTRYPOINT ["python3", "-m", "vllm.entrypoints.openai.api_server"]
CMD ["--host", "127.0.0.1", "--port", "8001", "--scheduler-cls", "accelgen.vllm.AccelGenScheduler"]
