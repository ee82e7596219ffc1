"""Pure: spec → child manifests; each validated against the Kubernetes OpenAPI schemas."""

from __future__ import annotations

import copy
from typing import Any

import kubernetes_validate
import pytest

from accelgen.core.errors import ConfigError
from accelgen.wire import SCHEDULER_CLS
from accelgen_operator.resources import (
    CONFIG_HASH_ANNOTATION,
    SPEC_HASH_ANNOTATION,
    DefaultImages,
    build_children,
    build_deployment,
    effective_replicas,
    resolve_images,
    stamp_hash,
)
from tests.support.crd_schema import EXAMPLES, apply_defaults, example_documents, pool_schema
from tests.support.operator_cluster import make_spec

K8S_VERSION = "1.30"


def _children(spec: dict[str, Any], **kw: Any) -> dict[str, dict[str, Any]]:
    return {c["kind"]: c for c in build_children("llama", "serving", spec, **kw)}


def _container(deployment: dict[str, Any], name: str) -> dict[str, Any]:
    (found,) = [c for c in deployment["spec"]["template"]["spec"]["containers"] if c["name"] == name]
    return found


def _example_specs() -> list[tuple[str, dict[str, Any]]]:
    schema = pool_schema()
    out = []
    for path in sorted(EXAMPLES.glob("*.yaml")):
        for doc in example_documents(path):
            if doc["kind"] == "InferencePool":
                out.append((path.name, apply_defaults(schema, doc)["spec"]))
    return out


@pytest.mark.parametrize(("name", "spec"), _example_specs(), ids=[n for n, _ in _example_specs()])
def test_every_built_manifest_validates_against_kubernetes_schemas(name: str, spec: dict[str, Any]) -> None:
    # An example may leave its images to the operator's defaults (gateway-picker.yaml).
    images = DefaultImages(engine="engine:1", sidecar="sidecar:1")
    children = build_children(
        "pool", "serving", spec, has_service_monitor_crd=True, has_gateway_crd=True, images=images
    )
    builtin = [c for c in children if c["apiVersion"] in ("v1", "apps/v1", "policy/v1")]
    assert {c["kind"] for c in builtin} == {
        "ConfigMap",
        "Deployment",
        "Service",
        "PodDisruptionBudget",
    }
    for manifest in builtin:
        kubernetes_validate.validate(stamp_hash(manifest), K8S_VERSION, strict=True)


def test_a_broken_manifest_is_caught_by_the_validator() -> None:
    deployment = build_deployment("llama", "serving", make_spec())
    deployment["spec"]["template"]["spec"]["containers"][0]["imagePullPolicy"] = 7
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(deployment, K8S_VERSION, strict=True)


def test_engine_container_runs_vllm_with_accelgen_scheduler() -> None:
    spec = make_spec(
        engine={
            "image": "engine:1",
            "gpus": 4,
            "tensorParallelSize": 4,
            "maxModelLen": 8192,
            "args": ["--enforce-eager"],
        }
    )
    engine = _container(_children(spec)["Deployment"], "engine")
    assert engine["command"] == ["python", "-m", "vllm.entrypoints.openai.api_server"]
    assert engine["args"] == [
        "--model",
        "meta-llama/Llama-3.1-8B-Instruct",
        "--host",
        "127.0.0.1",
        "--port",
        "8001",
        "--scheduler-cls",
        SCHEDULER_CLS,
        "--tensor-parallel-size",
        "4",
        "--max-model-len",
        "8192",
        "--enforce-eager",
    ]
    env = {e["name"]: e["value"] for e in engine["env"]}
    assert env["ACCELGEN_TIERS"] == "/etc/accelgen/tiers.yaml"
    assert env["ACCELGEN_SCHEDULER_CONFIG"] == "/etc/accelgen/scheduler.yaml"
    assert env["ACCELGEN_STATS_FILE"] == "/var/run/accelgen/engine-stats.json"
    assert engine["resources"]["limits"]["nvidia.com/gpu"] == 4
    mounts = {m["mountPath"]: m["name"] for m in engine["volumeMounts"]}
    assert mounts == {"/etc/accelgen": "config", "/dev/shm": "dshm", "/var/run/accelgen": "run"}
    for probe in ("startupProbe", "readinessProbe"):
        assert "127.0.0.1:8001/health" in " ".join(engine[probe]["exec"]["command"])


def test_pod_volumes_shm_in_memory_and_gpu_toleration() -> None:
    pod = _children(make_spec())["Deployment"]["spec"]["template"]["spec"]
    volumes = {v["name"]: v for v in pod["volumes"]}
    assert volumes["dshm"]["emptyDir"]["medium"] == "Memory"
    assert volumes["config"]["projected"]["sources"] == [{"configMap": {"name": "llama-config"}}]
    assert {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"} in pod["tolerations"]


def test_cpu_only_pool_has_no_gpu_limit_or_toleration() -> None:
    pod = _children(make_spec(engine={"image": "e", "gpus": 0}))["Deployment"]["spec"]["template"]["spec"]
    assert "nvidia.com/gpu" not in (pod["containers"][0]["resources"].get("limits") or {})
    assert "tolerations" not in pod


def test_sidecar_is_the_only_exposed_port_and_is_hardened() -> None:
    children = _children(make_spec())
    sidecar = _container(children["Deployment"], "sidecar")
    assert sidecar["args"] == [
        "serve",
        "--engine-url",
        "http://127.0.0.1:8001",
        "--host",
        "0.0.0.0",
        "--port",
        "8000",
        "--tiers",
        "/etc/accelgen/tiers.yaml",
        "--engine-stats",
        "/var/run/accelgen/engine-stats.json",
        "--pool",
        "llama",
    ]
    assert sidecar["ports"] == [{"name": "http", "containerPort": 8000, "protocol": "TCP"}]
    assert sidecar["readinessProbe"]["httpGet"]["path"] == "/readyz"
    assert sidecar["livenessProbe"]["httpGet"]["path"] == "/healthz"
    ctx = sidecar["securityContext"]
    assert ctx["runAsNonRoot"] and ctx["readOnlyRootFilesystem"]
    assert not ctx["allowPrivilegeEscalation"] and ctx["capabilities"] == {"drop": ["ALL"]}
    assert "ports" not in _container(children["Deployment"], "engine")
    assert children["Service"]["spec"]["ports"] == [
        {"name": "http", "port": 8000, "targetPort": "http", "protocol": "TCP"}
    ]


def test_auth_secret_projected_at_keys_path_and_passed_to_sidecar() -> None:
    children = _children(make_spec(auth={"secretName": "tenants"}))
    sidecar = _container(children["Deployment"], "sidecar")
    assert sidecar["args"][-5:] == ["--keys", "/etc/accelgen/keys/keys.yaml", "--open-stats", "--pool", "llama"]
    sources = children["Deployment"]["spec"]["template"]["spec"]["volumes"][0]["projected"]["sources"]
    assert sources[1] == {"secret": {"name": "tenants", "items": [{"key": "keys.yaml", "path": "keys/keys.yaml"}]}}


def test_model_cache_and_scheduling_fields() -> None:
    engine = {
        "image": "e",
        "gpus": 1,
        "nodeSelector": {"gpu": "h100"},
        "runtimeClassName": "nvidia",
        "affinity": {"nodeAffinity": {}},
        "modelCache": {"claimName": "models", "mountPath": "/models"},
    }
    pod = _children(make_spec(engine=engine))["Deployment"]["spec"]["template"]["spec"]
    assert pod["nodeSelector"] == {"gpu": "h100"} and pod["runtimeClassName"] == "nvidia"
    assert {
        "name": "model-cache",
        "persistentVolumeClaim": {"claimName": "models", "readOnly": False},
    } in pod["volumes"]
    env = {e["name"]: e["value"] for e in pod["containers"][0]["env"]}
    assert env["HF_HOME"] == "/models"


def test_optional_children_only_when_crd_exists_and_asked() -> None:
    gateway = {"enabled": True, "endpointPicker": {"name": "epp"}}
    assert set(_children(make_spec(gateway=gateway))) == {
        "ConfigMap",
        "Deployment",
        "Service",
        "PodDisruptionBudget",
    }
    both = _children(make_spec(gateway=gateway), has_service_monitor_crd=True, has_gateway_crd=True)
    assert both["ServiceMonitor"]["spec"]["endpoints"][0]["port"] == "http"
    children = build_children("llama", "serving", make_spec(gateway=gateway), has_gateway_crd=True)
    pool = next(c for c in children if c["apiVersion"] == "inference.networking.k8s.io/v1")
    assert pool["spec"]["targetPorts"] == [{"number": 8000}]
    assert pool["spec"]["endpointPickerRef"] == {
        "name": "epp",
        "port": {"number": 9002},
        "failureMode": "FailClose",
    }
    assert "ServiceMonitor" not in _children(make_spec(metrics={"serviceMonitor": False}), has_service_monitor_crd=True)


def _pod_hash(spec: dict[str, Any]) -> str:
    return str(
        build_deployment("llama", "serving", spec)["spec"]["template"]["metadata"]["annotations"][
            CONFIG_HASH_ANNOTATION
        ]
    )


def test_config_hash_rolls_pods_on_engine_or_scheduler_change_only() -> None:
    base = _pod_hash(make_spec())
    assert _pod_hash(make_spec()) == base  # stable
    assert _pod_hash(make_spec(engine={"image": "engine:2", "gpus": 1})) != base
    assert _pod_hash(make_spec(scheduler={"policy": "edf"})) != base
    tiers = make_spec()["tiers"]
    tiers[0]["ttftMs"] = 300
    assert _pod_hash(make_spec(tiers=tiers)) == base  # tiers reload in place


def test_stamp_hash_is_stable_and_tracks_content() -> None:
    deployment = build_deployment("llama", "serving", make_spec())
    once = stamp_hash(deployment)
    assert stamp_hash(once) == once
    changed = build_deployment("llama", "serving", make_spec(replicas=3))
    h = once["metadata"]["annotations"][SPEC_HASH_ANNOTATION]
    assert stamp_hash(changed)["metadata"]["annotations"][SPEC_HASH_ANNOTATION] != h


def test_replicas_clamped_to_autoscaling_bounds() -> None:
    assert effective_replicas(make_spec(replicas=3)) == 3
    assert effective_replicas(make_spec(replicas=1, autoscaling={"minReplicas": 2, "maxReplicas": 4})) == 2
    assert effective_replicas(make_spec(replicas=9, autoscaling={"minReplicas": 2, "maxReplicas": 4})) == 4


def _mount(container: dict[str, Any], volume: str) -> dict[str, Any]:
    (found,) = [m for m in container["volumeMounts"] if m["name"] == volume]
    return dict(found)


@pytest.mark.parametrize("auth", [None, {"secretName": "tenants"}], ids=["no-auth", "auth"])
def test_engine_stats_reach_the_sidecar_through_a_shared_empty_dir(auth: dict[str, Any] | None) -> None:
    spec = make_spec(auth=auth) if auth else make_spec()
    deployment = _children(spec)["Deployment"]
    pod = deployment["spec"]["template"]["spec"]
    engine, sidecar = _container(deployment, "engine"), _container(deployment, "sidecar")
    # The engine writes the file it is told to (accelgen.vllm's ACCELGEN_STATS_FILE)...
    (stats_file,) = [e["value"] for e in engine["env"] if e["name"] == "ACCELGEN_STATS_FILE"]
    assert stats_file == "/var/run/accelgen/engine-stats.json"
    # ...the sidecar reads that same file...
    at = sidecar["args"].index("--engine-stats")
    assert sidecar["args"][at + 1] == stats_file
    assert sidecar["args"][-2:] == ["--pool", "llama"]
    # ...through one emptyDir mounted in both at the file's directory: the engine writes
    # it (temp file + rename in that directory), the sidecar only reads.
    (volume,) = [v for v in pod["volumes"] if v["name"] == "run"]
    assert set(volume) == {"name", "emptyDir"} and volume["emptyDir"].get("medium") is None
    assert _mount(engine, "run") == {"name": "run", "mountPath": "/var/run/accelgen"}
    assert _mount(sidecar, "run") == {"name": "run", "mountPath": "/var/run/accelgen", "readOnly": True}
    assert stats_file.rsplit("/", 1)[0] == "/var/run/accelgen"
    # Every mount names a volume of the pod, and no two mounts of a container share a path.
    names = {v["name"] for v in pod["volumes"]}
    for container in (engine, sidecar):
        assert {m["name"] for m in container["volumeMounts"]} <= names
        paths = [m["mountPath"] for m in container["volumeMounts"]]
        assert len(paths) == len(set(paths))


def _without_images(**overrides: Any) -> dict[str, Any]:
    spec = make_spec(**overrides)
    spec["engine"] = {k: v for k, v in spec["engine"].items() if k != "image"}
    spec["sidecar"] = {k: v for k, v in spec["sidecar"].items() if k != "image"}
    return spec


DEFAULTS = DefaultImages(engine="registry.example/engine:9", sidecar="registry.example/sidecar:9")
NO_DEFAULTS = DefaultImages()


def _images(spec: dict[str, Any], images: DefaultImages = NO_DEFAULTS) -> tuple[str, str]:
    deployment = _children(spec, images=images)["Deployment"]
    return _container(deployment, "engine")["image"], _container(deployment, "sidecar")["image"]


def test_a_pool_without_images_gets_the_operators_defaults() -> None:
    assert _images(_without_images(), DEFAULTS) == ("registry.example/engine:9", "registry.example/sidecar:9")
    # An empty image is as good as none (the CRD forbids it; a cluster without validation may not).
    spec = make_spec(engine={"image": "", "gpus": 1}, sidecar={"image": ""})
    assert _images(spec, DEFAULTS) == ("registry.example/engine:9", "registry.example/sidecar:9")
    # No engine/sidecar section at all: the defaults still apply, the engine keeps its 1 GPU.
    bare = {k: v for k, v in make_spec().items() if k not in ("engine", "sidecar")}
    deployment = _children(bare, images=DEFAULTS)["Deployment"]
    assert _container(deployment, "engine")["image"] == "registry.example/engine:9"
    assert _container(deployment, "engine")["resources"]["limits"]["nvidia.com/gpu"] == 1


def test_a_pools_own_images_win_over_the_defaults() -> None:
    assert _images(make_spec(), DEFAULTS) == ("engine:1", "sidecar:1")
    # Each image on its own: one set in the pool, the other defaulted.
    spec = make_spec(sidecar={})
    assert _images(spec, DEFAULTS) == ("engine:1", "registry.example/sidecar:9")
    assert _images(spec, DefaultImages(sidecar="s:2")) == ("engine:1", "s:2")


def test_resolving_images_does_not_touch_the_spec() -> None:
    spec = _without_images()
    before = copy.deepcopy(spec)
    resolved = resolve_images(spec, DEFAULTS)
    assert spec == before
    assert resolved["engine"] == {"gpus": 1, "image": "registry.example/engine:9"}
    assert resolved["sidecar"] == {"image": "registry.example/sidecar:9"}


@pytest.mark.parametrize(
    ("spec", "images", "missing"),
    [
        (_without_images(), DefaultImages(), ["spec.engine.image", "spec.sidecar.image"]),
        (_without_images(), DefaultImages(engine="e:1"), ["spec.sidecar.image"]),
        (_without_images(), DefaultImages(sidecar="s:1"), ["spec.engine.image"]),
        (make_spec(sidecar={}), DefaultImages(engine="e:1"), ["spec.sidecar.image"]),
        (_without_images(), DefaultImages(engine="", sidecar=""), ["spec.engine.image", "spec.sidecar.image"]),
    ],
    ids=["neither", "no-sidecar-default", "no-engine-default", "engine-set-sidecar-not", "empty-defaults"],
)
def test_no_image_and_no_default_is_a_config_error_naming_what_is_missing(
    spec: dict[str, Any], images: DefaultImages, missing: list[str]
) -> None:
    with pytest.raises(ConfigError) as err:
        build_children("llama", "serving", spec, images=images)
    message = str(err.value)
    for field in ("spec.engine.image", "spec.sidecar.image"):
        assert (field in message) == (field in missing), message
    if "spec.engine.image" in missing:
        assert "--default-engine-image" in message and "ACCELGEN_DEFAULT_ENGINE_IMAGE" in message
    if "spec.sidecar.image" in missing:
        assert "--default-sidecar-image" in message and "ACCELGEN_DEFAULT_SIDECAR_IMAGE" in message


def test_a_new_default_rolls_only_the_pools_that_use_it() -> None:
    defaulted, pinned = _without_images(), make_spec()
    old, new = DefaultImages(engine="e:1", sidecar="s:1"), DefaultImages(engine="e:2", sidecar="s:1")

    def pod_hash(spec: dict[str, Any], images: DefaultImages) -> str:
        template = build_deployment("llama", "serving", spec, images)["spec"]["template"]
        return str(template["metadata"]["annotations"][CONFIG_HASH_ANNOTATION])

    assert pod_hash(defaulted, old) != pod_hash(defaulted, new)
    assert pod_hash(pinned, old) == pod_hash(pinned, new) == pod_hash(pinned, DefaultImages())


def test_defaulted_manifests_validate_against_kubernetes_schemas() -> None:
    children = build_children("pool", "serving", _without_images(), images=DEFAULTS)
    for manifest in children:
        kubernetes_validate.validate(stamp_hash(manifest), K8S_VERSION, strict=True)
