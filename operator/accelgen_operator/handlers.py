"""The kopf handlers: thin, they translate between kopf and the pure modules.

``build_registry(cfg)`` makes a fresh registry per operator run (the CLI, each test and
the benchmark get their own), so handler settings such as the stats interval come from
:class:`OperatorConfig` rather than module globals.

    create / update / resume ──► reconcile: spec → children (resources) → apply (kube)
    timer (every stats interval) ──► observe: pods' /stats → status (observe), autoscaling
    delete ──► nothing to do: owner references let Kubernetes collect the children

Each handler registered in :func:`build_registry` only passes kopf's arguments on to a
module-level step; the registered names stay the handlers' ids (kopf keys its progress
annotations by them).
"""

from __future__ import annotations

import datetime
import logging
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import aiohttp
import kopf

from accelgen.core.errors import ConfigError
from accelgen.core.tiers import TierSet
from accelgen_operator import GROUP, PLURAL, VERSION
from accelgen_operator.apply import ApplyReport, ensure_all
from accelgen_operator.kube import KubeClient, KubeError
from accelgen_operator.observe import (
    autoscale_step,
    failure_status,
    is_reconciled,
    observed_status,
    reconciled_status,
)
from accelgen_operator.resources import (
    GATEWAY_POOL_API,
    SERVICE_MONITOR_API,
    DefaultImages,
    build_children,
    selector_labels,
    stamp_hash,
)
from accelgen_operator.scrape import scrape
from accelgen_operator.status import Condition, PoolStats, aggregate, status_delta
from accelgen_operator.tierconfig import parse_checked, tiers_config

PREFIX = "accelgen.dev"


@dataclass(frozen=True, slots=True)
class OperatorConfig:
    """Settings of one operator run (CLI flags; tests and the benchmark shorten the times)."""

    api_url: str | None = None  # None: in-cluster or kubeconfig credentials
    stats_interval_s: float = 15.0
    stats_timeout_s: float = 2.0
    retry_base_s: float = 5.0
    retry_max_s: float = 300.0
    # Images for pools that omit spec.engine.image / spec.sidecar.image (None: no default).
    default_engine_image: str | None = None
    default_sidecar_image: str | None = None

    @property
    def images(self) -> DefaultImages:
        return DefaultImages(engine=self.default_engine_image, sidecar=self.default_sidecar_image)


def backoff_s(cfg: OperatorConfig, retry: int) -> float:
    """Exponential retry delay: base · 2^retry, capped."""
    return float(min(cfg.retry_max_s, cfg.retry_base_s * 2 ** min(retry, 16)))


def _now() -> str:
    return datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _write_status(patch: kopf.Patch, status: Mapping[str, Any], desired: Mapping[str, Any]) -> None:
    for key, value in status_delta(status, desired).items():
        patch.status[key] = value


async def _apply(kube: KubeClient, body: kopf.Body, children: list[dict[str, Any]]) -> ApplyReport:
    """Own the children (owner references) and make each match its stamped hash."""
    kopf.adopt(children, owner=body)
    return await ensure_all(kube, [stamp_hash(c) for c in children])


async def _optional_crds(kube: KubeClient, spec: Mapping[str, Any]) -> dict[str, bool]:
    """Which optional children can be made: asked for by the spec and their CRD served."""
    wants_monitor = bool((spec.get("metrics") or {}).get("serviceMonitor", True))
    wants_gateway = bool((spec.get("gateway") or {}).get("enabled", False))
    monitor_group, monitor_version, monitor_plural = SERVICE_MONITOR_API
    gateway_group, gateway_version, gateway_plural = GATEWAY_POOL_API
    return {
        "has_service_monitor_crd": wants_monitor
        and await kube.has_resource(f"{monitor_group}/{monitor_version}", monitor_plural),
        "has_gateway_crd": wants_gateway
        and await kube.has_resource(f"{gateway_group}/{gateway_version}", gateway_plural),
    }


async def _children(cfg: OperatorConfig, kube: KubeClient, name: str, namespace: str, spec: kopf.Spec) -> list[Any]:
    """The pool's child manifests, with the optional ones whose CRD the cluster serves."""
    return build_children(name, namespace, spec, images=cfg.images, **await _optional_crds(kube, spec))


def _record_failure(
    body: kopf.Body, patch: kopf.Patch, status: Mapping[str, Any], cond: Condition, generation: int | None
) -> None:
    """A failed reconcile: Degraded in the status and a Warning Event with the reason."""
    _write_status(patch, status, failure_status(status, cond, now=_now(), generation=generation))
    kopf.warn(body, reason=cond.reason, message=cond.message)


async def _check_secret(kube: KubeClient, namespace: str, spec: Mapping[str, Any]) -> Condition | None:
    """A Degraded condition when the tenant-keys Secret or its key is missing, else None."""
    auth = spec.get("auth")
    if not auth:
        return None
    secret = await kube.get("v1", "secrets", namespace, auth["secretName"])
    key = auth.get("key", "keys.yaml")
    if secret is None:
        return Condition("Degraded", "True", "SecretNotFound", f"Secret {auth['secretName']!r} not found")
    if key not in (secret.get("data") or {}) and key not in (secret.get("stringData") or {}):
        return Condition(
            "Degraded",
            "True",
            "SecretKeyMissing",
            f"Secret {auth['secretName']!r} has no key {key!r}",
        )
    return None


async def _startup(cfg: OperatorConfig, *, settings: kopf.OperatorSettings, memo: kopf.Memo, **_: Any) -> None:
    """Persist kopf's state under our prefix, post only warnings, open the API and HTTP clients."""
    settings.persistence.finalizer = f"{PREFIX}/finalizer"
    settings.persistence.progress_storage = kopf.AnnotationsProgressStorage(prefix=PREFIX)
    settings.persistence.diffbase_storage = kopf.AnnotationsDiffBaseStorage(prefix=PREFIX)
    # Only our explicit Events and real warnings become Events, not every "handler succeeded".
    settings.posting.level = logging.WARNING
    memo.kube = await KubeClient.connect(url=cfg.api_url)
    memo.http = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=cfg.stats_timeout_s))


async def _cleanup(*, memo: kopf.Memo, **_: Any) -> None:
    """Close the clients :func:`_startup` opened."""
    if getattr(memo, "http", None) is not None:
        await memo.http.close()
    if getattr(memo, "kube", None) is not None:
        await memo.kube.close()


def _login(cfg: OperatorConfig, **kwargs: Any) -> kopf.ConnectionInfo | None:
    """The configured API URL, else the service account's or the kubeconfig's credentials."""
    if cfg.api_url:
        return kopf.ConnectionInfo(server=cfg.api_url.rstrip("/"), insecure=True)
    return kopf.login_with_service_account(**kwargs) or kopf.login_with_kubeconfig(**kwargs)


async def _reconcile(
    cfg: OperatorConfig,
    *,
    body: kopf.Body,
    spec: kopf.Spec,
    status: kopf.Status,
    name: str,
    namespace: str | None,
    meta: kopf.Meta,
    patch: kopf.Patch,
    memo: kopf.Memo,
    retry: int,
    **_: Any,
) -> None:
    """Build the children, check the Secret, apply; status and an Event say how it went."""
    kube: KubeClient = memo.kube
    namespace = str(namespace)  # InferencePools are namespaced
    generation = meta.get("generation")
    try:
        children = await _children(cfg, kube, name, namespace, spec)
        problem = await _check_secret(kube, namespace, spec)
        if problem is None:
            report = await _apply(kube, body, children)
    except ConfigError as err:
        # The schema let it through but the core refuses it, or no image is known
        # (neither in the spec nor an operator default): only a new spec helps.
        _record_failure(body, patch, status, Condition("Degraded", "True", "InvalidSpec", str(err)), generation)
        raise kopf.PermanentError(str(err)) from None
    except KubeError as err:
        problem = Condition("Degraded", "True", "ApplyFailed", str(err))
    if problem is not None:
        _record_failure(body, patch, status, problem, generation)
        raise kopf.TemporaryError(problem.message, delay=backoff_s(cfg, retry))
    _write_status(patch, status, reconciled_status(name, children, status, now=_now(), generation=generation))
    if report.changed:
        kopf.event(body, type="Normal", reason="Reconciled", message="applied " + ", ".join(report.changed))


async def _read_pool(
    cfg: OperatorConfig,
    kube: KubeClient,
    *,
    body: kopf.Body,
    spec: kopf.Spec,
    status: kopf.Status,
    name: str,
    namespace: str,
    meta: kopf.Meta,
    logger: kopf.Logger,
) -> tuple[dict[str, Any], list[Any]] | None:
    """The pool's Deployment (``{}``: none) and pods, re-creating deleted children; None: retry later."""
    try:
        deployment = await kube.get("apps/v1", "deployments", namespace, name) or {}
        if not deployment and is_reconciled(status, meta.get("generation")):
            # Deleted by hand since: nothing else would notice (children are not watched).
            report = await _apply(kube, body, await _children(cfg, kube, name, namespace, spec))
            logger.warning(f"re-created missing children: {', '.join(report.changed)}")
        pods = await kube.list("v1", "pods", namespace, labels=selector_labels(name))
    except KubeError as err:
        logger.info(f"cannot read the pool's Deployment or pods, will retry: {err}")
        return None
    except ConfigError as err:  # cannot happen after a successful reconcile; never crash the timer
        logger.warning(f"cannot re-create the pool's children: {err}")
        return None
    return deployment, pods


async def _observe(
    cfg: OperatorConfig,
    *,
    body: kopf.Body,
    spec: kopf.Spec,
    status: kopf.Status,
    name: str,
    namespace: str | None,
    meta: kopf.Meta,
    patch: kopf.Patch,
    memo: kopf.Memo,
    logger: kopf.Logger,
    **_: Any,
) -> None:
    """Read the Deployment and the pods' /stats; write the status, scale when asked to."""
    try:
        tiers = parse_checked(tiers_config(spec))
    except ConfigError:
        return  # reconcile reports the spec as Degraded; nothing to observe
    read = await _read_pool(
        cfg,
        memo.kube,
        body=body,
        spec=spec,
        status=status,
        name=name,
        namespace=str(namespace),
        meta=meta,
        logger=logger,
    )
    if read is None:
        return
    deployment, pods = read
    result = await scrape(memo.http, pods, timeout_s=cfg.stats_timeout_s)
    if result.failures:
        logger.info(f"/stats skipped for {len(result.failures)} pod(s): {result.failures}")
    pool = aggregate(result.stats, num_unreachable=len(result.failures), tier_order=[t.name for t in tiers])
    desired = observed_status(
        spec=spec,
        status=status,
        deployment=deployment,
        pool=pool,
        tiers=tiers,
        now=_now(),
        generation=meta.get("generation"),
    )
    if spec.get("autoscaling"):
        desired["autoscaling"] = _autoscale(body, spec, status, patch, pool, tiers)
    _write_status(patch, status, desired)


def _autoscale(
    body: kopf.Body,
    spec: Mapping[str, Any],
    status: Mapping[str, Any],
    patch: kopf.Patch,
    pool: PoolStats,
    tiers: TierSet,
) -> dict[str, Any]:
    """Run one autoscaling decision; patch ``spec.replicas`` and post an Event on a step."""
    out, decision = autoscale_step(spec, status, pool, tiers, now=datetime.datetime.now(datetime.UTC))
    if decision is not None:
        patch.spec["replicas"] = decision.replicas
        kopf.event(body, type="Normal", reason=decision.reason, message=decision.message)
    return out


def build_registry(cfg: OperatorConfig) -> kopf.OperatorRegistry:
    """A registry with every handler of the operator, configured by ``cfg``."""
    registry = kopf.OperatorRegistry()
    resource = (GROUP, VERSION, PLURAL)

    @kopf.on.startup(registry=registry)
    async def startup(**kwargs: Any) -> None:
        await _startup(cfg, **kwargs)

    @kopf.on.cleanup(registry=registry)
    async def cleanup(**kwargs: Any) -> None:
        await _cleanup(**kwargs)

    @kopf.on.login(registry=registry)
    def login(**kwargs: Any) -> kopf.ConnectionInfo | None:
        return _login(cfg, **kwargs)

    @kopf.on.probe(id="apiCalls", registry=registry)
    def api_calls(memo: kopf.Memo, **_: Any) -> dict[str, int]:
        kube = getattr(memo, "kube", None)
        return dict(kube.calls) if kube is not None else {}

    @kopf.on.resume(*resource, registry=registry)
    @kopf.on.create(*resource, registry=registry)
    @kopf.on.update(*resource, registry=registry)
    async def reconcile(**kwargs: Any) -> None:
        await _reconcile(cfg, **kwargs)

    @kopf.timer(*resource, interval=cfg.stats_interval_s, registry=registry)
    async def observe(**kwargs: Any) -> None:
        await _observe(cfg, **kwargs)

    @kopf.on.delete(*resource, registry=registry)
    async def delete(*, name: str, logger: kopf.Logger, **_: Any) -> None:
        # Children carry owner references: the garbage collector removes them.
        logger.info(f"pool {name} deleted; its children go with it")

    return registry
