"""The kopf handlers: thin, they translate between kopf and the pure modules.

``build_registry(cfg)`` makes a fresh registry per operator run (the CLI, each test and
the benchmark get their own), so handler settings such as the stats interval come from
:class:`OperatorConfig` rather than module globals.

    create / update / resume ──► reconcile: spec → children (resources) → apply (kube)
    timer (every stats interval) ──► observe: pods' /stats → status, SLOAttained, autoscaling
    delete ──► nothing to do: owner references let Kubernetes collect the children
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
from accelgen_operator import GROUP, PLURAL, VERSION
from accelgen_operator.apply import ApplyReport, ensure_all
from accelgen_operator.autoscaling import AutoscalePolicy, AutoscaleState, decide
from accelgen_operator.kube import KubeClient, KubeError
from accelgen_operator.resources import (
    GATEWAY_POOL_API,
    SERVICE_MONITOR_API,
    DefaultImages,
    build_children,
    content_hash,
    effective_replicas,
    selector_labels,
    stamp_hash,
)
from accelgen_operator.scrape import scrape
from accelgen_operator.status import (
    Condition,
    aggregate,
    rollout_conditions,
    set_conditions,
    slo_condition,
    status_delta,
    tier_status,
    tightest_tier,
)
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


def _degraded(status: Mapping[str, Any], cond: Condition, generation: int | None) -> list[dict[str, Any]]:
    return set_conditions(status.get("conditions") or [], [cond], now=_now(), generation=generation)


RECONCILED = Condition("Degraded", "False", "Reconciled", "every child matches the spec")


def _outcome(cond: Condition, generation: int | None) -> dict[str, Any]:
    # Kept apart from conditions so the timer can rebuild Degraded from it (both write conditions).
    return {"reason": cond.reason, "message": cond.message, "generation": generation}


def _degraded_from(status: Mapping[str, Any]) -> Condition:
    last = status.get("lastReconcile") or {}
    if not last or last.get("reason") == RECONCILED.reason:
        return RECONCILED
    return Condition("Degraded", "True", str(last.get("reason")), str(last.get("message", "")))


def _write_status(patch: kopf.Patch, status: Mapping[str, Any], desired: Mapping[str, Any]) -> None:
    for key, value in status_delta(status, desired).items():
        patch.status[key] = value


async def _apply(kube: KubeClient, body: kopf.Body, children: list[dict[str, Any]]) -> ApplyReport:
    """Own the children (owner references) and make each match its stamped hash."""
    kopf.adopt(children, owner=body)
    return await ensure_all(kube, [stamp_hash(c) for c in children])


def _reconciled(status: Mapping[str, Any], generation: int | None) -> bool:
    last = status.get("lastReconcile") or {}
    return bool(last.get("reason") == RECONCILED.reason and last.get("generation") == generation)


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


def _record_failure(
    body: kopf.Body, patch: kopf.Patch, status: Mapping[str, Any], cond: Condition, generation: int | None
) -> None:
    """A failed reconcile: Degraded in the status and a Warning Event with the reason."""
    _write_status(
        patch,
        status,
        {"lastReconcile": _outcome(cond, generation), "conditions": _degraded(status, cond, generation)},
    )
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


def build_registry(cfg: OperatorConfig) -> kopf.OperatorRegistry:
    """A registry with every handler of the operator, configured by ``cfg``."""
    registry = kopf.OperatorRegistry()
    resource = (GROUP, VERSION, PLURAL)

    @kopf.on.startup(registry=registry)
    async def startup(settings: kopf.OperatorSettings, memo: kopf.Memo, **_: Any) -> None:
        settings.persistence.finalizer = f"{PREFIX}/finalizer"
        settings.persistence.progress_storage = kopf.AnnotationsProgressStorage(prefix=PREFIX)
        settings.persistence.diffbase_storage = kopf.AnnotationsDiffBaseStorage(prefix=PREFIX)
        # Only our explicit Events and real warnings become Events, not every "handler succeeded".
        settings.posting.level = logging.WARNING
        memo.kube = await KubeClient.connect(url=cfg.api_url)
        memo.http = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=cfg.stats_timeout_s))

    @kopf.on.cleanup(registry=registry)
    async def cleanup(memo: kopf.Memo, **_: Any) -> None:
        if getattr(memo, "http", None) is not None:
            await memo.http.close()
        if getattr(memo, "kube", None) is not None:
            await memo.kube.close()

    @kopf.on.login(registry=registry)
    def login(**kwargs: Any) -> kopf.ConnectionInfo | None:
        if cfg.api_url:
            return kopf.ConnectionInfo(server=cfg.api_url.rstrip("/"), insecure=True)
        return kopf.login_with_service_account(**kwargs) or kopf.login_with_kubeconfig(**kwargs)

    @kopf.on.probe(id="apiCalls", registry=registry)
    def api_calls(memo: kopf.Memo, **_: Any) -> dict[str, int]:
        kube = getattr(memo, "kube", None)
        return dict(kube.calls) if kube is not None else {}

    @kopf.on.resume(*resource, registry=registry)
    @kopf.on.create(*resource, registry=registry)
    @kopf.on.update(*resource, registry=registry)
    async def reconcile(
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
        kube: KubeClient = memo.kube
        namespace = str(namespace)  # InferencePools are namespaced
        generation = meta.get("generation")
        try:
            children = build_children(name, namespace, spec, images=cfg.images, **await _optional_crds(kube, spec))
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
        _write_status(
            patch,
            status,
            {
                "observedGeneration": generation,
                "selector": ",".join(f"{k}={v}" for k, v in selector_labels(name).items()),
                "configHash": content_hash([c.get("data") or c.get("spec") for c in children]),
                "lastReconcile": _outcome(RECONCILED, generation),
                "conditions": _degraded(status, RECONCILED, generation),
            },
        )
        if report.changed:
            kopf.event(
                body,
                type="Normal",
                reason="Reconciled",
                message="applied " + ", ".join(report.changed),
            )

    @kopf.timer(*resource, interval=cfg.stats_interval_s, registry=registry)
    async def observe(
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
        kube: KubeClient = memo.kube
        namespace = str(namespace)
        try:
            tiers = parse_checked(tiers_config(spec))
        except ConfigError:
            return  # reconcile reports the spec as Degraded; nothing to observe
        try:
            deployment = await kube.get("apps/v1", "deployments", namespace, name) or {}
            if not deployment and _reconciled(status, meta.get("generation")):
                # Deleted by hand since: nothing else would notice (children are not watched).
                children = build_children(name, namespace, spec, images=cfg.images, **await _optional_crds(kube, spec))
                report = await _apply(kube, body, children)
                logger.warning(f"re-created missing children: {', '.join(report.changed)}")
            pods = await kube.list("v1", "pods", namespace, labels=selector_labels(name))
        except KubeError as err:
            logger.info(f"cannot read the pool's Deployment or pods, will retry: {err}")
            return
        except ConfigError as err:  # cannot happen after a successful reconcile; never crash the timer
            logger.warning(f"cannot re-create the pool's children: {err}")
            return
        result = await scrape(memo.http, pods, timeout_s=cfg.stats_timeout_s)
        if result.failures:
            logger.info(f"/stats skipped for {len(result.failures)} pod(s): {result.failures}")
        pool = aggregate(result.stats, num_unreachable=len(result.failures), tier_order=[t.name for t in tiers])
        dstat = deployment.get("status") or {}
        desired_replicas = effective_replicas(spec)
        current = (dstat.get("observedGeneration") or 0) >= ((deployment.get("metadata") or {}).get("generation") or 0)
        conditions = [
            *rollout_conditions(
                desired=desired_replicas,
                ready=int(dstat.get("readyReplicas") or 0),
                updated=int(dstat.get("updatedReplicas") or 0),
                deployment_current=bool(deployment) and current,
            ),
            _degraded_from(status),
            slo_condition(pool, tiers),
        ]
        tightest = tightest_tier(tiers)
        tightest_stats = pool.tier(tightest)
        desired: dict[str, Any] = {
            "replicas": int(dstat.get("replicas") or 0),
            "readyReplicas": int(dstat.get("readyReplicas") or 0),
            "updatedReplicas": int(dstat.get("updatedReplicas") or 0),
            "podsReporting": pool.pods_reporting,
            "podsUnreachable": pool.pods_unreachable,
            "windowSeconds": pool.window_s,
            "tiers": tier_status(pool, tiers),
            "tightestTier": tightest,
            "tightestAttainment": (
                round(tightest_stats.attainment, 4)
                if tightest_stats is not None and tightest_stats.attainment is not None
                else None
            ),
            "conditions": set_conditions(
                status.get("conditions") or [],
                conditions,
                now=_now(),
                generation=meta.get("generation"),
            ),
        }
        if spec.get("autoscaling"):
            desired["autoscaling"] = _autoscale(body, spec, status, patch, pool, tiers)
        _write_status(patch, status, desired)

    @kopf.on.delete(*resource, registry=registry)
    async def delete(*, name: str, logger: kopf.Logger, **_: Any) -> None:
        # Children carry owner references: the garbage collector removes them.
        logger.info(f"pool {name} deleted; its children go with it")

    return registry


def _autoscale(
    body: kopf.Body,
    spec: Mapping[str, Any],
    status: Mapping[str, Any],
    patch: kopf.Patch,
    pool: Any,
    tiers: Any,
) -> dict[str, Any]:
    """Run one autoscaling decision; patch ``spec.replicas`` and post an Event on a step."""
    policy = AutoscalePolicy.from_spec(spec["autoscaling"], tiers)
    remembered = status.get("autoscaling") or {}
    last = remembered.get("lastScaleTime")
    last_s = datetime.datetime.fromisoformat(last.replace("Z", "+00:00")).timestamp() if last else None
    state = AutoscaleState(
        below_periods=int(remembered.get("belowPeriods", 0)),
        above_periods=int(remembered.get("abovePeriods", 0)),
        last_scale_s=last_s,
    )
    now = datetime.datetime.now(datetime.UTC)
    state, decision = decide(policy, state, replicas=int(spec.get("replicas", 1)), pool=pool, now_s=now.timestamp())
    out: dict[str, Any] = {"belowPeriods": state.below_periods, "abovePeriods": state.above_periods}
    if last:
        out["lastScaleTime"] = last
    if remembered.get("lastScaleReason"):
        out["lastScaleReason"] = remembered["lastScaleReason"]
    if decision is not None:
        patch.spec["replicas"] = decision.replicas
        out["lastScaleTime"] = now.strftime("%Y-%m-%dT%H:%M:%SZ")
        out["lastScaleReason"] = decision.message
        kopf.event(body, type="Normal", reason=decision.reason, message=decision.message)
    return out
