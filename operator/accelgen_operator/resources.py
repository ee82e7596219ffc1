"""Pure: an InferencePool (its name and spec) → the child manifests the operator applies.

Every builder takes plain dicts and returns a plain dict; nothing here talks to the API.
Images a pool omits come from the operator's defaults (:class:`DefaultImages`, its
``--default-engine-image`` / ``--default-sidecar-image``); with neither, ConfigError.
Owner references are added by the handler (``kopf.adopt``); the spec hash that makes
re-applying idempotent is stamped by :func:`stamp_hash`.

Children of pool ``p``:

    ConfigMap  p-config   tiers.yaml (core format), scheduler.yaml
    Deployment p          pods: engine (vLLM + AccelGen scheduler) + sidecar
    Service    p          port 8000 ("http", the sidecar) only
    PodDisruptionBudget p maxUnavailable 1
    ServiceMonitor p      optional: when monitoring.coreos.com exists
    ...and the gateway's: AccelGen's endpoint picker when asked (p-epp, p-pods), the
    inference.networking.k8s.io/v1 InferencePool p when asked and present
    (:mod:`accelgen_operator.gateway`)
"""

from __future__ import annotations

import copy
import hashlib
import json
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import yaml

from accelgen.core.errors import ConfigError
from accelgen.wire import SCHEDULER_CLS
from accelgen_operator.gateway import gateway_children
from accelgen_operator.tierconfig import scheduler_config, tiers_config

CONFIG_DIR = "/etc/accelgen"
TIERS_PATH = f"{CONFIG_DIR}/tiers.yaml"
SCHEDULER_PATH = f"{CONFIG_DIR}/scheduler.yaml"
KEYS_PATH = f"{CONFIG_DIR}/keys/keys.yaml"
# The engine's in-engine stats file (accelgen.vllm's side channel, ACCELGEN_STATS_FILE),
# on an emptyDir both containers mount: the sidecar reads it (`--engine-stats`).
RUN_DIR = "/var/run/accelgen"
ENGINE_STATS_PATH = f"{RUN_DIR}/engine-stats.json"
RUN_VOLUME = "run"
ENGINE_PORT = 8001
SIDECAR_PORT = 8000

POOL_LABEL = "accelgen.dev/pool"
SPEC_HASH_ANNOTATION = "accelgen.dev/spec-hash"
CONFIG_HASH_ANNOTATION = "accelgen.dev/config-hash"
MANAGED_BY = "accelgen-operator"

SERVICE_MONITOR_API = ("monitoring.coreos.com", "v1", "servicemonitors")

_SIDECAR_RESOURCES = {"requests": {"cpu": "500m", "memory": "512Mi"}, "limits": {"memory": "1Gi"}}
_NONROOT_UID = 65532


@dataclass(frozen=True, slots=True)
class DefaultImages:
    """The operator's images for pools that name none (``None``: no default)."""

    engine: str | None = None
    sidecar: str | None = None


_IMAGE_FLAGS = {
    "engine": "--default-engine-image / ACCELGEN_DEFAULT_ENGINE_IMAGE",
    "sidecar": "--default-sidecar-image / ACCELGEN_DEFAULT_SIDECAR_IMAGE",
}


def resolve_images(spec: Mapping[str, Any], defaults: DefaultImages = DefaultImages()) -> dict[str, Any]:
    """A copy of ``spec`` whose ``engine.image`` and ``sidecar.image`` are set.

    A pool's own image wins; an omitted (or empty) one takes the operator's default.

    Raises:
        ConfigError: an image is neither in the spec nor defaulted by the operator.
    """
    out = dict(spec)
    missing = []
    for part, default in (("engine", defaults.engine), ("sidecar", defaults.sidecar)):
        section = dict(spec.get(part) or {})
        if not section.get("image"):
            if not default:
                missing.append(f"spec.{part}.image is not set and the operator has no default ({_IMAGE_FLAGS[part]})")
                continue
            section["image"] = default
        out[part] = section
    if missing:
        raise ConfigError("; ".join(missing) + ": set the image in the pool or give the operator a default")
    return out


def content_hash(obj: Any) -> str:
    """A short, stable hash of a JSON-able value (sorted keys)."""
    raw = json.dumps(obj, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(raw.encode()).hexdigest()[:16]


def selector_labels(name: str) -> dict[str, str]:
    """Labels that select a pool's pods (Deployment, Service, PDB, gateway pool)."""
    return {"app.kubernetes.io/name": "accelgen", POOL_LABEL: name}


def common_labels(name: str) -> dict[str, str]:
    """Labels on every child."""
    return {
        **selector_labels(name),
        "app.kubernetes.io/instance": name,
        "app.kubernetes.io/component": "inference",
        "app.kubernetes.io/managed-by": MANAGED_BY,
    }


def config_map_name(name: str) -> str:
    return f"{name}-config"


def effective_replicas(spec: Mapping[str, Any]) -> int:
    """``spec.replicas`` clamped to the autoscaling bounds when autoscaling is set."""
    replicas = int(spec.get("replicas", 1))
    scaling = spec.get("autoscaling")
    if scaling:
        low = int(scaling.get("minReplicas", 1))
        high = int(scaling.get("maxReplicas", max(low, replicas)))
        replicas = min(max(replicas, low), high)
    return replicas


def _meta(name: str, namespace: str, *, labels: Mapping[str, str] | None = None) -> dict[str, Any]:
    return {"name": name, "namespace": namespace, "labels": dict(labels or common_labels(name))}


def build_config_map(name: str, namespace: str, spec: Mapping[str, Any]) -> dict[str, Any]:
    """The ConfigMap with ``tiers.yaml`` and ``scheduler.yaml``; ConfigError on bad tiers."""
    return {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": _meta(config_map_name(name), namespace, labels=common_labels(name)),
        "data": {
            "tiers.yaml": yaml.safe_dump(tiers_config(spec), sort_keys=False),
            "scheduler.yaml": yaml.safe_dump(scheduler_config(spec), sort_keys=False),
        },
    }


def engine_args(spec: Mapping[str, Any]) -> list[str]:
    """The vLLM server arguments: model, loopback bind, AccelGen's scheduler, then the user's."""
    engine = spec.get("engine") or {}
    args = [
        "--model", str(spec["model"]),
        "--host", "127.0.0.1",
        "--port", str(ENGINE_PORT),
        "--scheduler-cls", SCHEDULER_CLS,
    ]  # fmt: skip
    if engine.get("tensorParallelSize"):
        args += ["--tensor-parallel-size", str(engine["tensorParallelSize"])]
    if engine.get("maxModelLen"):
        args += ["--max-model-len", str(engine["maxModelLen"])]
    return args + [str(a) for a in engine.get("args", [])]


def _engine_probe(*, period_s: int, failures: int) -> dict[str, Any]:
    # NOTE: the engine listens on 127.0.0.1 only, and kubelet's httpGet probes dial the pod
    # IP; so the probe runs inside the container, with the engine image's own Python.
    url = f"http://127.0.0.1:{ENGINE_PORT}/health"
    check = f"import urllib.request; urllib.request.urlopen('{url}', timeout=3)"
    return {
        "exec": {"command": ["python", "-c", check]},
        "periodSeconds": period_s,
        "timeoutSeconds": 5,
        "failureThreshold": failures,
    }


def _engine_resources(engine: Mapping[str, Any]) -> dict[str, Any]:
    resources = copy.deepcopy(dict(engine.get("resources") or {}))
    gpus = int(engine.get("gpus", 1))
    if gpus > 0:
        resources.setdefault("limits", {})["nvidia.com/gpu"] = gpus
    return resources


def _engine_container(spec: Mapping[str, Any]) -> dict[str, Any]:
    engine = spec.get("engine") or {}
    env = [
        {"name": "ACCELGEN_TIERS", "value": TIERS_PATH},
        {"name": "ACCELGEN_SCHEDULER_CONFIG", "value": SCHEDULER_PATH},
        {"name": "ACCELGEN_STATS_FILE", "value": ENGINE_STATS_PATH},
    ]
    mounts = [
        {"name": "config", "mountPath": CONFIG_DIR, "readOnly": True},
        {"name": "dshm", "mountPath": "/dev/shm"},
        {"name": RUN_VOLUME, "mountPath": RUN_DIR},
    ]
    cache = engine.get("modelCache")
    if cache:
        cache_path = cache.get("mountPath", "/models")
        env.append({"name": "HF_HOME", "value": cache_path})
        mounts.append(
            {
                "name": "model-cache",
                "mountPath": cache_path,
                "readOnly": bool(cache.get("readOnly", False)),
            }
        )
    container: dict[str, Any] = {
        "name": "engine",
        "image": engine["image"],
        "command": ["python", "-m", "vllm.entrypoints.openai.api_server"],
        "args": engine_args(spec),
        "env": env,
        "resources": _engine_resources(engine),
        "volumeMounts": mounts,
        # Model download and load can take many minutes: startup allows 20 of them.
        "startupProbe": _engine_probe(period_s=10, failures=120),
        "readinessProbe": _engine_probe(period_s=10, failures=3),
        "livenessProbe": _engine_probe(period_s=20, failures=6),
        "securityContext": {"allowPrivilegeEscalation": False, "capabilities": {"drop": ["ALL"]}},
    }
    if engine.get("imagePullPolicy"):
        container["imagePullPolicy"] = engine["imagePullPolicy"]
    return container


def sidecar_args(name: str, spec: Mapping[str, Any]) -> list[str]:
    """The ``accelgen serve`` arguments of the sidecar."""
    args = [
        "serve",
        "--engine-url", f"http://127.0.0.1:{ENGINE_PORT}",
        "--host", "0.0.0.0",
        "--port", str(SIDECAR_PORT),
        "--tiers", TIERS_PATH,
        "--engine-stats", ENGINE_STATS_PATH,
    ]  # fmt: skip
    if spec.get("auth"):
        # The operator reads /stats without a key: keys guard the generation routes.
        args += ["--keys", KEYS_PATH, "--open-stats"]
    return [*args, "--pool", name]


def _sidecar_container(name: str, spec: Mapping[str, Any]) -> dict[str, Any]:
    sidecar = spec.get("sidecar") or {}
    probe = {"periodSeconds": 5, "timeoutSeconds": 2, "failureThreshold": 3}
    container: dict[str, Any] = {
        "name": "sidecar",
        "image": sidecar["image"],
        "command": ["accelgen"],
        "args": sidecar_args(name, spec),
        "ports": [{"name": "http", "containerPort": SIDECAR_PORT, "protocol": "TCP"}],
        "env": [{"name": "PYTHONUNBUFFERED", "value": "1"}],
        "resources": copy.deepcopy(dict(sidecar.get("resources") or _SIDECAR_RESOURCES)),
        "volumeMounts": [
            {"name": "config", "mountPath": CONFIG_DIR, "readOnly": True},
            {"name": "tmp", "mountPath": "/tmp"},
            {"name": RUN_VOLUME, "mountPath": RUN_DIR, "readOnly": True},
        ],
        "readinessProbe": {"httpGet": {"path": "/readyz", "port": "http"}, **probe},
        "livenessProbe": {
            "httpGet": {"path": "/healthz", "port": "http"},
            **probe,
            "failureThreshold": 6,
        },
        "securityContext": {
            "runAsNonRoot": True,
            "runAsUser": _NONROOT_UID,
            "runAsGroup": _NONROOT_UID,
            "readOnlyRootFilesystem": True,
            "allowPrivilegeEscalation": False,
            "capabilities": {"drop": ["ALL"]},
            "seccompProfile": {"type": "RuntimeDefault"},
        },
    }
    if sidecar.get("imagePullPolicy"):
        container["imagePullPolicy"] = sidecar["imagePullPolicy"]
    return container


def _volumes(name: str, spec: Mapping[str, Any]) -> list[dict[str, Any]]:
    engine = spec.get("engine") or {}
    # One projected volume: the config and the tenant keys update in place (no subPath),
    # and the keys land at /etc/accelgen/keys/keys.yaml without a nested mount.
    sources: list[dict[str, Any]] = [{"configMap": {"name": config_map_name(name)}}]
    auth = spec.get("auth")
    if auth:
        key = auth.get("key", "keys.yaml")
        sources.append(
            {
                "secret": {
                    "name": auth["secretName"],
                    "items": [{"key": key, "path": "keys/keys.yaml"}],
                }
            }
        )
    volumes: list[dict[str, Any]] = [
        {"name": "config", "projected": {"sources": sources}},
        {
            "name": "dshm",
            "emptyDir": {"medium": "Memory", "sizeLimit": engine.get("shmSize", "8Gi")},
        },
        {"name": "tmp", "emptyDir": {"sizeLimit": "256Mi"}},
        # The engine writes its stats snapshot here (a few KiB), the sidecar reads it.
        {"name": RUN_VOLUME, "emptyDir": {"sizeLimit": "16Mi"}},
    ]
    cache = engine.get("modelCache")
    if cache:
        claim = {"claimName": cache["claimName"], "readOnly": bool(cache.get("readOnly", False))}
        volumes.append({"name": "model-cache", "persistentVolumeClaim": claim})
    return volumes


def _scheduling(engine: Mapping[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    tolerations = list(engine.get("tolerations") or [])
    if int(engine.get("gpus", 1)) > 0:
        # GPU nodes are commonly tainted nvidia.com/gpu:NoSchedule.
        tolerations.insert(0, {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"})
    if tolerations:
        out["tolerations"] = tolerations
    for field in ("nodeSelector", "affinity", "runtimeClassName"):
        if engine.get(field):
            out[field] = copy.deepcopy(engine[field])
    return out


def pod_template(name: str, spec: Mapping[str, Any], images: DefaultImages = DefaultImages()) -> dict[str, Any]:
    """The pod template; its config-hash annotation changes whenever a restart is needed.

    The hash covers the pod spec and ``scheduler.yaml`` but not ``tiers.yaml``: tier
    targets reload in place (the sidecar watches the mounted file; the engine receives
    each request's targets from the sidecar), so a tier-only change rolls nothing. A
    defaulted image is part of the pod spec: a new operator default rolls those pools.

    Raises:
        ConfigError: an image is neither in the spec nor in ``images``.
    """
    spec = resolve_images(spec, images)
    pod_spec: dict[str, Any] = {
        "enableServiceLinks": False,
        "terminationGracePeriodSeconds": 60,
        "securityContext": {"seccompProfile": {"type": "RuntimeDefault"}},
        "containers": [_engine_container(spec), _sidecar_container(name, spec)],
        "volumes": _volumes(name, spec),
        **_scheduling(spec.get("engine") or {}),
    }
    config_hash = content_hash({"pod": pod_spec, "scheduler": scheduler_config(spec)})
    return {
        "metadata": {
            "labels": common_labels(name),
            "annotations": {CONFIG_HASH_ANNOTATION: config_hash},
        },
        "spec": pod_spec,
    }


def build_deployment(
    name: str, namespace: str, spec: Mapping[str, Any], images: DefaultImages = DefaultImages()
) -> dict[str, Any]:
    """The Deployment running engine + sidecar pods (ConfigError: no image, see pod_template)."""
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": _meta(name, namespace),
        "spec": {
            "replicas": effective_replicas(spec),
            "revisionHistoryLimit": 3,
            "selector": {"matchLabels": selector_labels(name)},
            # GPUs are scarce: replace pods one at a time instead of surging an extra one.
            "strategy": {
                "type": "RollingUpdate",
                "rollingUpdate": {"maxSurge": 0, "maxUnavailable": 1},
            },
            "template": pod_template(name, spec, images),
        },
    }


def build_service(name: str, namespace: str) -> dict[str, Any]:
    """The Service: the sidecar's port only (the engine is never exposed)."""
    return {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": _meta(name, namespace),
        "spec": {
            "type": "ClusterIP",
            "selector": selector_labels(name),
            "ports": [{"name": "http", "port": SIDECAR_PORT, "targetPort": "http", "protocol": "TCP"}],
        },
    }


def build_pdb(name: str, namespace: str) -> dict[str, Any]:
    """At most one pod of the pool voluntarily disrupted at a time."""
    return {
        "apiVersion": "policy/v1",
        "kind": "PodDisruptionBudget",
        "metadata": _meta(name, namespace),
        "spec": {"maxUnavailable": 1, "selector": {"matchLabels": selector_labels(name)}},
    }


def build_service_monitor(name: str, namespace: str, spec: Mapping[str, Any]) -> dict[str, Any]:
    """A Prometheus-operator ServiceMonitor scraping the sidecar's /metrics."""
    metrics = spec.get("metrics") or {}
    return {
        "apiVersion": "monitoring.coreos.com/v1",
        "kind": "ServiceMonitor",
        "metadata": _meta(name, namespace),
        "spec": {
            "selector": {"matchLabels": selector_labels(name)},
            "endpoints": [{"port": "http", "path": "/metrics", "interval": metrics.get("interval", "30s")}],
        },
    }


def build_children(
    name: str,
    namespace: str,
    spec: Mapping[str, Any],
    *,
    has_service_monitor_crd: bool = False,
    has_gateway_crd: bool = False,
    images: DefaultImages = DefaultImages(),
) -> list[dict[str, Any]]:
    """Every child of a pool, in apply order (config first, so pods find it).

    Optional children appear only when their CRD exists and the spec asks for them; the
    endpoint picker (its image the sidecar's) whenever the spec asks for AccelGen's.
    ``images`` fill in the engine and sidecar images the spec omits.

    Raises:
        ConfigError: the spec's tiers are not a valid tier configuration, or an image is
            neither in the spec nor in ``images``.
    """
    children = [
        build_config_map(name, namespace, spec),
        build_deployment(name, namespace, spec, images),
        build_service(name, namespace),
        build_pdb(name, namespace),
    ]
    if has_service_monitor_crd and (spec.get("metrics") or {}).get("serviceMonitor", True):
        children.append(build_service_monitor(name, namespace, spec))
    children += gateway_children(
        name,
        namespace,
        spec,
        selector=selector_labels(name),
        labels=common_labels(name),
        pod_port=SIDECAR_PORT,
        image=resolve_images(spec, images)["sidecar"]["image"],
        managed_by=MANAGED_BY,
        config_map=config_map_name(name),
        has_gateway_crd=has_gateway_crd,
    )
    return children


def stamp_hash(manifest: Mapping[str, Any]) -> dict[str, Any]:
    """A copy with ``accelgen.dev/spec-hash`` = hash of everything else in it."""
    out = copy.deepcopy(dict(manifest))
    annotations = out.setdefault("metadata", {}).setdefault("annotations", {})
    annotations.pop(SPEC_HASH_ANNOTATION, None)
    annotations[SPEC_HASH_ANNOTATION] = content_hash(out)
    return out
