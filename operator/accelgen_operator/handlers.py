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
from accelgen_operator.gateway import GATEWAY_POOL_API, gateway_wanted, stale_gateway_children
from accelgen_operator.kube import KubeClient, KubeError
from accelgen_operator.observe import (
    autoscale_step,
    failure_status,
    is_reconciled,
    observed_status,
    reconciled_status,
)
from accelgen_operator.resources import (
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


@dataclass(frozen=True, slots=True)
class _Pool:
    """The InferencePool a resource handler was called for: kopf's arguments about it."""

    body: kopf.Body
    spec: kopf.Spec
    status: kopf.Status
    name: str
    namespace: str
    meta: kopf.Meta
    patch: kopf.Patch
    kube: KubeClient

    @classmethod
    def of(cls, kwargs: Mapping[str, Any]) -> _Pool:
        """From the keyword arguments kopf passes a resource handler."""
        return cls(
            body=kwargs["body"],
            spec=kwargs["spec"],
            status=kwargs["status"],
            name=kwargs["name"],
            namespace=str(kwargs["namespace"]),  # InferencePools are namespaced
            meta=kwargs["meta"],
            patch=kwargs["patch"],
            kube=kwargs["memo"].kube,
        )

    @property
    def generation(self) -> int | None:
        generation: int | None = self.meta.get("generation")
        return generation

    def write_status(self, desired: Mapping[str, Any]) -> None:
        """Patch what differs between the pool's status and ``desired``."""
        for key, value in status_delta(self.status, desired).items():
            self.patch.status[key] = value


def backoff_s(cfg: OperatorConfig, retry: int) -> float:
    """Exponential retry delay: base · 2^retry, capped."""
    return float(min(cfg.retry_max_s, cfg.retry_base_s * 2 ** min(retry, 16)))


def _now() -> str:
    return datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


async def _apply(kube: KubeClient, body: kopf.Body, children: list[dict[str, Any]]) -> ApplyReport:
    """Own the children (owner references) and make each match its stamped hash."""
    kopf.adopt(children, owner=body)
    return await ensure_all(kube, [stamp_hash(c) for c in children])


async def _optional_crds(kube: KubeClient, spec: Mapping[str, Any]) -> dict[str, bool]:
    """Which optional children can be made: asked for by the spec and their CRD served."""
    wants_monitor = bool((spec.get("metrics") or {}).get("serviceMonitor", True))
    wants_gateway = gateway_wanted(spec)
    monitor_group, monitor_version, monitor_plural = SERVICE_MONITOR_API
    gateway_group, gateway_version, gateway_plural = GATEWAY_POOL_API
    return {
        "has_service_monitor_crd": wants_monitor
        and await kube.has_resource(f"{monitor_group}/{monitor_version}", monitor_plural),
        "has_gateway_crd": wants_gateway
        and await kube.has_resource(f"{gateway_group}/{gateway_version}", gateway_plural),
    }


async def _children(cfg: OperatorConfig, pool: _Pool) -> list[Any]:
    """The pool's child manifests, with the optional ones whose CRD the cluster serves."""
    crds = await _optional_crds(pool.kube, pool.spec)
    return build_children(pool.name, pool.namespace, pool.spec, images=cfg.images, **crds)


def _record_failure(pool: _Pool, cond: Condition) -> None:
    """A failed reconcile: Degraded in the status and a Warning Event with the reason."""
    pool.write_status(failure_status(pool.status, cond, now=_now(), generation=pool.generation))
    kopf.warn(pool.body, reason=cond.reason, message=cond.message)


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


async def _prune_gateway(pool: _Pool, children: list[dict[str, Any]]) -> list[str]:
    """Delete the gateway children the spec no longer asks for, where the pool owns them."""
    uid = pool.meta.get("uid")
    deleted = []
    for api_version, plural, name in stale_gateway_children(pool.name, children):
        if not await pool.kube.has_resource(api_version, plural):
            continue
        obj = await pool.kube.get(api_version, plural, pool.namespace, name)
        owners = ((obj or {}).get("metadata") or {}).get("ownerReferences") or []
        if uid and any(o.get("uid") == uid for o in owners):
            await pool.kube.delete(api_version, plural, pool.namespace, name)
            deleted.append(f"{plural}/{name}")
    return deleted


def _gateway_problem(spec: Mapping[str, Any], children: list[Any]) -> Condition | None:
    """Degraded when the pool asks for the gateway but its InferencePool CRD is not served.

    Everything else is applied first: the pool serves through its own Service meanwhile,
    and the retry creates the gateway's InferencePool once the CRD is installed.
    """
    group, version, plural = GATEWAY_POOL_API
    if not gateway_wanted(spec) or any(c.get("apiVersion") == f"{group}/{version}" for c in children):
        return None
    return Condition(
        "Degraded",
        "True",
        "GatewayCRDNotFound",
        f"spec.gateway asks for a gateway InferencePool, but the cluster serves no {plural}.{group}/{version}: "
        "install the Gateway API Inference Extension CRDs (the pool still serves through its Service)",
    )


async def _reconcile(cfg: OperatorConfig, pool: _Pool, *, retry: int) -> None:
    """Build the children, check the Secret, apply; status and an Event say how it went."""
    try:
        children = await _children(cfg, pool)
        problem = await _check_secret(pool.kube, pool.namespace, pool.spec)
        if problem is None:
            report = await _apply(pool.kube, pool.body, children)
            pruned = await _prune_gateway(pool, children)
            problem = _gateway_problem(pool.spec, children)
    except ConfigError as err:
        # The schema let it through but the core refuses it, or no image is known
        # (neither in the spec nor an operator default): only a new spec helps.
        _record_failure(pool, Condition("Degraded", "True", "InvalidSpec", str(err)))
        raise kopf.PermanentError(str(err)) from None
    except KubeError as err:
        problem = Condition("Degraded", "True", "ApplyFailed", str(err))
    if problem is not None:
        _record_failure(pool, problem)
        raise kopf.TemporaryError(problem.message, delay=backoff_s(cfg, retry))
    pool.write_status(reconciled_status(pool.name, children, pool.status, now=_now(), generation=pool.generation))
    if report.changed or pruned:
        done = [f"applied {', '.join(report.changed)}"] if report.changed else []
        done += [f"deleted {', '.join(pruned)}"] if pruned else []
        kopf.event(pool.body, type="Normal", reason="Reconciled", message="; ".join(done))


async def _read_pool(cfg: OperatorConfig, pool: _Pool, logger: kopf.Logger) -> tuple[dict[str, Any], list[Any]] | None:
    """The pool's Deployment (``{}``: none) and pods, re-creating deleted children; None: retry later."""
    kube = pool.kube
    try:
        deployment = await kube.get("apps/v1", "deployments", pool.namespace, pool.name) or {}
        if not deployment and is_reconciled(pool.status, pool.generation):
            # Deleted by hand since: nothing else would notice (children are not watched).
            report = await _apply(kube, pool.body, await _children(cfg, pool))
            logger.warning(f"re-created missing children: {', '.join(report.changed)}")
        pods = await kube.list("v1", "pods", pool.namespace, labels=selector_labels(pool.name))
    except KubeError as err:
        logger.info(f"cannot read the pool's Deployment or pods, will retry: {err}")
        return None
    except ConfigError as err:  # cannot happen after a successful reconcile; never crash the timer
        logger.warning(f"cannot re-create the pool's children: {err}")
        return None
    return deployment, pods


async def _observe(cfg: OperatorConfig, pool: _Pool, *, http: aiohttp.ClientSession, logger: kopf.Logger) -> None:
    """Read the Deployment and the pods' /stats; write the status, scale when asked to."""
    try:
        tiers = parse_checked(tiers_config(pool.spec))
    except ConfigError:
        return  # reconcile reports the spec as Degraded; nothing to observe
    read = await _read_pool(cfg, pool, logger)
    if read is None:
        return
    deployment, pods = read
    result = await scrape(http, pods, timeout_s=cfg.stats_timeout_s)
    if result.failures:
        logger.info(f"/stats skipped for {len(result.failures)} pod(s): {result.failures}")
    stats = aggregate(result.stats, num_unreachable=len(result.failures), tier_order=[t.name for t in tiers])
    desired = observed_status(
        spec=pool.spec,
        status=pool.status,
        deployment=deployment,
        pool=stats,
        tiers=tiers,
        now=_now(),
        generation=pool.generation,
    )
    if pool.spec.get("autoscaling"):
        desired["autoscaling"] = _autoscale(pool, stats, tiers)
    pool.write_status(desired)


def _autoscale(pool: _Pool, stats: PoolStats, tiers: TierSet) -> dict[str, Any]:
    """Run one autoscaling decision; patch ``spec.replicas`` and post an Event on a step."""
    out, decision = autoscale_step(pool.spec, pool.status, stats, tiers, now=datetime.datetime.now(datetime.UTC))
    if decision is not None:
        pool.patch.spec["replicas"] = decision.replicas
        kopf.event(pool.body, type="Normal", reason=decision.reason, message=decision.message)
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
    async def reconcile(*, retry: int, **kwargs: Any) -> None:
        await _reconcile(cfg, _Pool.of(kwargs), retry=retry)

    @kopf.timer(*resource, interval=cfg.stats_interval_s, registry=registry)
    async def observe(*, logger: kopf.Logger, **kwargs: Any) -> None:
        await _observe(cfg, _Pool.of(kwargs), http=kwargs["memo"].http, logger=logger)

    @kopf.on.delete(*resource, registry=registry)
    async def delete(*, name: str, logger: kopf.Logger, **_: Any) -> None:
        # Children carry owner references: the garbage collector removes them.
        logger.info(f"pool {name} deleted; its children go with it")

    return registry
