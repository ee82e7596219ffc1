"""Idempotent apply of child manifests: create when missing, patch when the hash differs.

Each desired manifest carries ``accelgen.dev/spec-hash`` (see ``resources.stamp_hash``).
An object whose hash already matches is left alone: one GET and no write, so a resumed
operator or a repeated reconcile changes nothing that is already right.
"""

from __future__ import annotations

import copy
import enum
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from accelgen_operator.kube import KubeClient
from accelgen_operator.resources import SPEC_HASH_ANNOTATION

# Optional pod-spec fields the operator may have set before and must clear when the
# spec drops them (a merge patch only removes what it nulls explicitly).
_OPTIONAL_POD_FIELDS = ("nodeSelector", "affinity", "runtimeClassName", "tolerations")

_PLURALS = {
    "ConfigMap": "configmaps",
    "Deployment": "deployments",
    "Service": "services",
    "PodDisruptionBudget": "poddisruptionbudgets",
    "ServiceMonitor": "servicemonitors",
    "InferencePool": "inferencepools",
}


class Outcome(enum.Enum):
    CREATED = "created"
    PATCHED = "patched"
    UNCHANGED = "unchanged"


@dataclass
class ApplyReport:
    """What one reconcile did, by object (``Kind/name``)."""

    outcomes: dict[str, Outcome] = field(default_factory=dict)

    @property
    def changed(self) -> list[str]:
        return [key for key, outcome in self.outcomes.items() if outcome is not Outcome.UNCHANGED]


def plural_of(manifest: Mapping[str, Any]) -> str:
    """The REST plural of a manifest's kind (only the kinds the operator builds)."""
    return _PLURALS[str(manifest["kind"])]


def spec_hash(obj: Mapping[str, Any] | None) -> str | None:
    """The spec-hash annotation of an object, if any."""
    return (((obj or {}).get("metadata") or {}).get("annotations") or {}).get(SPEC_HASH_ANNOTATION)


def merge_patch(current: Mapping[str, Any], desired: Mapping[str, Any]) -> dict[str, Any]:
    """The merge patch that takes ``current`` to ``desired`` for the fields the operator owns.

    Everything in ``desired`` is sent; optional pod-spec fields present in ``current`` but
    gone from ``desired`` are nulled. Server-set fields (status, clusterIP, ...) are untouched.
    """
    patch: dict[str, Any] = {k: copy.deepcopy(v) for k, v in desired.items() if k not in ("apiVersion", "kind")}
    cur_pod = (((current.get("spec") or {}).get("template") or {}).get("spec")) or {}
    new_pod = ((patch.get("spec") or {}).get("template") or {}).get("spec")
    if isinstance(new_pod, dict):
        for key in _OPTIONAL_POD_FIELDS:
            if key in cur_pod and key not in new_pod:
                new_pod[key] = None
    return patch


async def ensure(kube: KubeClient, manifest: Mapping[str, Any]) -> Outcome:
    """Make the object match ``manifest`` (already stamped with its hash)."""
    api_version, plural = str(manifest["apiVersion"]), plural_of(manifest)
    meta = manifest["metadata"]
    current = await kube.get(api_version, plural, meta["namespace"], meta["name"])
    if current is None:
        await kube.create(api_version, plural, meta["namespace"], manifest)
        return Outcome.CREATED
    if spec_hash(current) == spec_hash(manifest):
        return Outcome.UNCHANGED
    await kube.patch(api_version, plural, meta["namespace"], meta["name"], merge_patch(current, manifest))
    return Outcome.PATCHED


async def ensure_all(kube: KubeClient, manifests: Sequence[Mapping[str, Any]]) -> ApplyReport:
    """Apply manifests in order; stops at the first error (the caller retries)."""
    report = ApplyReport()
    for manifest in manifests:
        key = f"{manifest['kind']}/{manifest['metadata']['name']}"
        report.outcomes[key] = await ensure(kube, manifest)
    return report
