"""Pure: a pool's ``spec.gateway`` → the endpoint picker's manifests and the gateway's InferencePool.

``spec.gateway.endpointPicker`` names the picker the gateway asks where to send each
request: ``{type: accelgen}`` runs AccelGen's own (``accelgen picker``, from the sidecar
image) beside the pool; ``{type: external, service: NAME, port: N}`` points at one that
runs already (``name`` is the older spelling of ``service``). Either way the gateway API's
``InferencePool`` (``inference.networking.k8s.io/v1``) selects the pool's pods on the
sidecar's port, its ``endpointPickerRef`` naming the picker's Service.

Children of pool ``p`` for ``type: accelgen``::

    Deployment p-epp    accelgen picker --listen 0.0.0.0:9002 --health-port 9003 ...
                        (ACCELGEN_TIERS: tiers.yaml of the pool's ConfigMap p-config)
    Service    p-epp    grpc 9002 (ext_proc), grpc-health 9003
    Service    p-pods   headless, over the pool's pods: the picker's --pods-dns
    InferencePool p     (gateway group) endpointPickerRef → p-epp:9002

The picker's pods carry labels of their own: the pool's selector never matches them, so
neither the pool's Service nor the gateway ever routes inference to a picker.

A Service's name is a DNS label (at most 63 characters): where ``p`` plus the suffix is
longer, ``p`` is cut and 8 hex digits of its hash keep the names of two long pools
apart (``child_name``). What the gateway made and the spec no longer asks for (the
picker switched off, or made external) is listed by :func:`stale_gateway_children`, for
the operator to delete.
"""

from __future__ import annotations

import copy
import hashlib
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

GATEWAY_POOL_API = ("inference.networking.k8s.io", "v1", "inferencepools")
PICKER_PORT = 9002  # the Envoy ext_proc gRPC port the gateway dials
PICKER_HEALTH_PORT = 9003  # gRPC health (kubelet's grpc probes)
PICKER_COMPONENT = "endpoint-picker"
PICKER_CONFIG_DIR = "/etc/accelgen"
_PICKER_RESOURCES = {"requests": {"cpu": "250m", "memory": "256Mi"}, "limits": {"memory": "512Mi"}}
_NONROOT_UID = 65532
DNS_LABEL_MAX = 63  # a Service's name, and a label's value


@dataclass(frozen=True, slots=True)
class PickerRef:
    """The picker a pool's gateway pool points at (see the module docstring)."""

    type: str  # accelgen | external
    service: str  # the picker's Service name
    port: int
    failure_mode: str  # FailOpen | FailClose


def gateway_wanted(spec: Mapping[str, Any]) -> bool:
    """Whether the pool asks for the gateway: a ``gateway`` section not ``enabled: false``."""
    gateway = spec.get("gateway") or {}
    return bool(gateway.get("enabled", True)) and bool(gateway.get("endpointPicker"))


def child_name(pool: str, suffix: str) -> str:
    """``pool-suffix``, a DNS label: a long pool name is cut and its hash's 8 hex digits added."""
    name = f"{pool}-{suffix}"
    if len(name) <= DNS_LABEL_MAX:
        return name
    digest = hashlib.sha256(pool.encode()).hexdigest()[:8]
    keep = DNS_LABEL_MAX - len(suffix) - len(digest) - 2
    return f"{pool[:keep].rstrip('-')}-{digest}-{suffix}"


def label_value(pool: str) -> str:
    """``pool`` as a label value (at most 63 characters; cut and hashed as :func:`child_name`)."""
    if len(pool) <= DNS_LABEL_MAX:
        return pool
    digest = hashlib.sha256(pool.encode()).hexdigest()[:8]
    return f"{pool[: DNS_LABEL_MAX - len(digest) - 1].rstrip('-')}-{digest}"


def picker_name(pool: str) -> str:
    return child_name(pool, "epp")


def pods_service_name(pool: str) -> str:
    return child_name(pool, "pods")


def picker_ref(name: str, spec: Mapping[str, Any]) -> PickerRef:
    """The picker of pool ``name`` (the CRD guarantees an external one names its Service)."""
    picker = spec["gateway"]["endpointPicker"]
    failure_mode = str(picker.get("failureMode", "FailClose"))
    service = picker.get("service") or picker.get("name")
    kind = str(picker.get("type") or "external")
    if kind == "accelgen":
        return PickerRef("accelgen", picker_name(name), PICKER_PORT, failure_mode)
    return PickerRef("external", str(service), int(picker.get("port", PICKER_PORT)), failure_mode)


def picker_labels(pool: str) -> dict[str, str]:
    """The picker pods' labels: not the pool's selector (``app.kubernetes.io/name`` differs)."""
    return {"app.kubernetes.io/name": "accelgen-picker", "accelgen.dev/picker": label_value(pool)}


def _picker_meta(pool: str, name: str, namespace: str, managed_by: str) -> dict[str, Any]:
    labels = {
        **picker_labels(pool),
        "app.kubernetes.io/instance": label_value(pool),
        "app.kubernetes.io/component": PICKER_COMPONENT,
        "app.kubernetes.io/managed-by": managed_by,
    }
    return {"name": name, "namespace": namespace, "labels": labels}


def picker_args(name: str, namespace: str, spec: Mapping[str, Any], *, pod_port: int) -> list[str]:
    """``accelgen picker ...``: listen, health, AccelGen routing, the pods' headless DNS name."""
    picker = spec["gateway"]["endpointPicker"]
    args = [
        "picker",
        "--listen", f"0.0.0.0:{PICKER_PORT}",
        "--health-port", str(PICKER_HEALTH_PORT),
        "--routing", "accelgen",
        "--pods-dns", f"{pods_service_name(name)}.{namespace}.svc:{pod_port}",
    ]  # fmt: skip
    if picker.get("refreshSeconds") is not None:
        args += ["--refresh-s", f"{float(picker['refreshSeconds']):g}"]
    return args


def _picker_container(
    name: str, namespace: str, spec: Mapping[str, Any], *, image: str, pod_port: int
) -> dict[str, Any]:
    picker = spec["gateway"]["endpointPicker"]
    probe = {"grpc": {"port": PICKER_HEALTH_PORT}, "periodSeconds": 5, "timeoutSeconds": 2}
    return {
        "name": "picker",
        "image": picker.get("image") or image,
        "command": ["accelgen"],
        "args": picker_args(name, namespace, spec, pod_port=pod_port),
        "ports": [
            {"name": "grpc", "containerPort": PICKER_PORT, "protocol": "TCP"},
            {"name": "grpc-health", "containerPort": PICKER_HEALTH_PORT, "protocol": "TCP"},
        ],
        # The pool's tiers, from the pool's ConfigMap: the picker places by them.
        "env": [
            {"name": "PYTHONUNBUFFERED", "value": "1"},
            {"name": "ACCELGEN_TIERS", "value": f"{PICKER_CONFIG_DIR}/tiers.yaml"},
        ],
        "volumeMounts": [
            {"name": "config", "mountPath": PICKER_CONFIG_DIR, "readOnly": True},
            {"name": "tmp", "mountPath": "/tmp"},
        ],
        "resources": copy.deepcopy(dict(picker.get("resources") or _PICKER_RESOURCES)),
        "readinessProbe": {**probe, "failureThreshold": 3},
        "livenessProbe": {**probe, "failureThreshold": 6},
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


def build_picker_deployment(
    name: str,
    namespace: str,
    spec: Mapping[str, Any],
    *,
    image: str,
    pod_port: int,
    managed_by: str,
    config_map: str,
) -> dict[str, Any]:
    """The Deployment of AccelGen's picker (``image``: the sidecar's, unless the picker names
    one; ``config_map``: the pool's, whose ``tiers.yaml`` it reads)."""
    picker = spec["gateway"]["endpointPicker"]
    meta = _picker_meta(name, picker_name(name), namespace, managed_by)
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": meta,
        "spec": {
            "replicas": int(picker.get("replicas", 1)),
            "revisionHistoryLimit": 3,
            "selector": {"matchLabels": picker_labels(name)},
            "template": {
                "metadata": {"labels": dict(meta["labels"])},
                "spec": {
                    # It reads the pods' sidecars over DNS and HTTP: no API access at all.
                    "automountServiceAccountToken": False,
                    "enableServiceLinks": False,
                    "securityContext": {"seccompProfile": {"type": "RuntimeDefault"}},
                    "containers": [_picker_container(name, namespace, spec, image=image, pod_port=pod_port)],
                    "volumes": [
                        {
                            "name": "config",
                            "configMap": {"name": config_map, "items": [{"key": "tiers.yaml", "path": "tiers.yaml"}]},
                        },
                        {"name": "tmp", "emptyDir": {"sizeLimit": "64Mi"}},
                    ],
                },
            },
        },
    }


def build_picker_service(name: str, namespace: str, *, managed_by: str) -> dict[str, Any]:
    """The picker's Service: ext_proc gRPC (what ``endpointPickerRef`` names) and gRPC health."""
    return {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": _picker_meta(name, picker_name(name), namespace, managed_by),
        "spec": {
            "type": "ClusterIP",
            "selector": picker_labels(name),
            "ports": [
                {
                    "name": "grpc",
                    "port": PICKER_PORT,
                    "targetPort": "grpc",
                    "protocol": "TCP",
                    "appProtocol": "kubernetes.io/h2c",
                },
                {"name": "grpc-health", "port": PICKER_HEALTH_PORT, "targetPort": "grpc-health", "protocol": "TCP"},
            ],
        },
    }


def build_pods_service(
    name: str, namespace: str, *, selector: Mapping[str, str], pod_port: int, managed_by: str
) -> dict[str, Any]:
    """A headless Service over the pool's pods: its DNS name resolves to every ready pod's IP.

    Labelled as the picker's, not the pool's: a ServiceMonitor selecting the pool's
    Service must not scrape every pod a second time through this one.
    """
    return {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": _picker_meta(name, pods_service_name(name), namespace, managed_by),
        "spec": {
            "clusterIP": "None",
            "selector": dict(selector),
            "ports": [{"name": "http", "port": pod_port, "targetPort": "http", "protocol": "TCP"}],
        },
    }


def build_gateway_pool(
    name: str,
    namespace: str,
    spec: Mapping[str, Any],
    *,
    selector: Mapping[str, str],
    labels: Mapping[str, str],
    pod_port: int,
) -> dict[str, Any]:
    """The gateway's InferencePool over the pool's pods, its picker the one the spec names."""
    ref = picker_ref(name, spec)
    return {
        "apiVersion": f"{GATEWAY_POOL_API[0]}/{GATEWAY_POOL_API[1]}",
        "kind": "InferencePool",
        "metadata": {"name": name, "namespace": namespace, "labels": dict(labels)},
        "spec": {
            "selector": {"matchLabels": dict(selector)},
            "targetPorts": [{"number": pod_port}],
            "endpointPickerRef": {  # kind defaults to Service
                "name": ref.service,
                "port": {"number": ref.port},
                "failureMode": ref.failure_mode,
            },
        },
    }


def gateway_children(
    name: str,
    namespace: str,
    spec: Mapping[str, Any],
    *,
    selector: Mapping[str, str],
    labels: Mapping[str, str],
    pod_port: int,
    image: str,
    managed_by: str,
    config_map: str,
    has_gateway_crd: bool,
) -> list[dict[str, Any]]:
    """The gateway's children of a pool (none unless it asks), the InferencePool last.

    The picker and its Services are made even when the gateway CRD is not served (the
    caller reports that as Degraded): they need no CRD, and are ready when it comes.
    """
    if not gateway_wanted(spec):
        return []
    children: list[dict[str, Any]] = []
    if picker_ref(name, spec).type == "accelgen":
        children += [
            build_picker_deployment(
                name, namespace, spec, image=image, pod_port=pod_port, managed_by=managed_by, config_map=config_map
            ),
            build_picker_service(name, namespace, managed_by=managed_by),
            build_pods_service(name, namespace, selector=selector, pod_port=pod_port, managed_by=managed_by),
        ]
    if has_gateway_crd:
        children.append(build_gateway_pool(name, namespace, spec, selector=selector, labels=labels, pod_port=pod_port))
    return children


#: What a gateway child is, for deleting it: (apiVersion, plural, name).
ChildRef = tuple[str, str, str]


def gateway_child_refs(name: str) -> list[ChildRef]:
    """Every object the gateway can make for pool ``name``, the InferencePool last."""
    group, version, plural = GATEWAY_POOL_API
    return [
        ("apps/v1", "deployments", picker_name(name)),
        ("v1", "services", picker_name(name)),
        ("v1", "services", pods_service_name(name)),
        (f"{group}/{version}", plural, name),
    ]


def stale_gateway_children(name: str, children: list[dict[str, Any]]) -> list[ChildRef]:
    """The gateway's objects of pool ``name`` that ``children`` (what the spec asks for) lack.

    The operator deletes each that exists and the pool owns: switching the picker off or
    to an external one leaves neither a picker running nor a gateway pool pointing at it.
    The gateway InferencePool is listed too when its CRD is not served (the caller skips
    an API the cluster does not serve: there is nothing of it to delete).
    """
    plurals = {"Deployment": "deployments", "Service": "services", "InferencePool": GATEWAY_POOL_API[2]}
    made = {(str(c["apiVersion"]), plurals.get(str(c["kind"]), ""), str(c["metadata"]["name"])) for c in children}
    return [ref for ref in gateway_child_refs(name) if ref not in made]
