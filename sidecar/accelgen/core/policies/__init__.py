"""The scheduling policies, chosen by name from one registry.

Every policy implements :class:`accelgen.core.policy.Policy`; ablations of AccelGen are
registered as configurations of the same class.
"""

from __future__ import annotations

from dataclasses import dataclass

from accelgen.core.config import PolicyConfig
from accelgen.core.errors import ConfigError
from accelgen.core.latency import LatencyModel
from accelgen.core.plan import EngineLimits
from accelgen.core.policies.accelgen import AccelGenPolicy
from accelgen.core.policies.edf import EdfPolicy
from accelgen.core.policies.oracle import OraclePolicy
from accelgen.core.policies.orca import OrcaPolicy
from accelgen.core.policies.sarathi import SarathiPolicy
from accelgen.core.policies.vllm_fcfs import VllmFcfsPolicy
from accelgen.core.policies.vllm_priority import VllmPriorityPolicy
from accelgen.core.policy import Policy
from accelgen.core.tiers import TierSet


@dataclass(frozen=True, slots=True)
class PolicySpec:
    """A registered policy: its class and the configuration changes it applies."""

    name: str
    cls: type[Policy]
    description: str
    overrides: tuple[tuple[str, object], ...] = ()

    @property
    def clairvoyant(self) -> bool:
        """Needs true output lengths (only a simulator can provide them)."""
        return bool(getattr(self.cls, "clairvoyant", False))


def _spec(cls: type[Policy]) -> PolicySpec:
    return PolicySpec(cls.name, cls, cls.description)


REGISTRY: dict[str, PolicySpec] = {
    s.name: s
    for s in (
        _spec(AccelGenPolicy),
        PolicySpec(
            "accelgen-no-chunking",
            AccelGenPolicy,
            "ablation: fixed max_num_batched_tokens budget",
            (("dynamic_chunking", False),),
        ),
        PolicySpec(
            "accelgen-no-ordering",
            AccelGenPolicy,
            "ablation: arrival order, no urgent set",
            (("slo_ordering", False),),
        ),
        PolicySpec(
            "accelgen-no-bestfit",
            AccelGenPolicy,
            "ablation: first fit instead of two-resource best fit",
            (("best_fit", False),),
        ),
        _spec(VllmFcfsPolicy),
        _spec(VllmPriorityPolicy),
        _spec(SarathiPolicy),
        _spec(EdfPolicy),
        _spec(OrcaPolicy),
        _spec(OraclePolicy),
    )
}


def policy_names() -> list[str]:
    return list(REGISTRY)


def get_spec(name: str) -> PolicySpec:
    try:
        return REGISTRY[name]
    except KeyError:
        raise ConfigError(f"unknown policy {name!r}; known: {', '.join(REGISTRY)}") from None


def make_policy(
    name: str,
    *,
    tiers: TierSet,
    latency_model: LatencyModel,
    limits: EngineLimits,
    config: PolicyConfig | None = None,
) -> Policy:
    """Build the policy registered as ``name``; ConfigError if there is none."""
    spec = get_spec(name)
    cfg = (config or PolicyConfig()).replace(**dict(spec.overrides))
    return spec.cls(tiers=tiers, latency_model=latency_model, limits=limits, config=cfg)
