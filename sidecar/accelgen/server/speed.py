"""The engine's predicted speed for admission: the core's :class:`Speed`, and the named models.

The default is the sim engine's (:data:`accelgen.sim.profiles.DEFAULT_SIM_MODEL`); named
profiles (``h100-llama-2-7b``) come from :mod:`accelgen.sim.profiles` too.
"""

from __future__ import annotations

from accelgen.core.admission.speed import Speed
from accelgen.core.latency import LatencyModel
from accelgen.sim.profiles import DEFAULT_SIM_MODEL

__all__ = ["DEFAULT_SIM_MODEL", "Speed", "load_latency_model"]


def load_latency_model(name: str | None) -> LatencyModel:
    """The named latency model (``None``/``default``: :data:`DEFAULT_SIM_MODEL`).

    Other names (``h100-llama-2-7b``) and fitted-model JSON paths go to
    :func:`accelgen.sim.profiles.load_latency_model`, which raises ConfigError.
    """
    if name in (None, "", "default", DEFAULT_SIM_MODEL.name):
        return DEFAULT_SIM_MODEL
    from accelgen.sim.profiles import load_latency_model as load_named

    return load_named(name)
