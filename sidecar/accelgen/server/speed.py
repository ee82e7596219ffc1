"""The engine's predicted speed, from a core latency model, for admission and the sim engine.

The default is the sim engine's (:data:`accelgen.sim.profiles.DEFAULT_SIM_MODEL`); named
profiles (``h100-llama-2-7b``) come from :mod:`accelgen.sim.profiles` too.
"""

from __future__ import annotations

from dataclasses import dataclass

from accelgen.core.latency import BatchShape, LatencyModel
from accelgen.sim.profiles import DEFAULT_SIM_MODEL


def load_latency_model(name: str | None) -> LatencyModel:
    """The named latency model (``None``/``default``: :data:`DEFAULT_SIM_MODEL`).

    Other names (``h100-llama-2-7b``) and fitted-model JSON paths go to
    :func:`accelgen.sim.profiles.load_latency_model`, which raises ConfigError.
    """
    if name in (None, "", "default", DEFAULT_SIM_MODEL.name):
        return DEFAULT_SIM_MODEL
    from accelgen.sim.profiles import load_latency_model as load_named

    return load_named(name)


@dataclass(frozen=True, slots=True)
class Speed:
    """Iteration-time estimates the sidecar needs, from one latency model.

    Args:
        model: The engine's latency model.
        context_tokens: Typical context of a running request, for decode attention.
    """

    model: LatencyModel
    context_tokens: int = 512

    def decode_step_s(self, num_running: int) -> float:
        """One iteration decoding ``num_running`` requests."""
        shape = BatchShape(num_decodes=num_running, decode_kv_tokens=num_running * self.context_tokens)
        return self.model.predict_s(shape)

    def prefill_s(self, num_prompt_tokens: int, *, num_running: int = 0) -> float:
        """The iteration that prefills a whole prompt beside ``num_running`` decodes."""
        shape = BatchShape(num_decodes=num_running, decode_kv_tokens=num_running * self.context_tokens)
        shape = shape.plus_prefill(num_prompt_tokens, context_tokens=0)
        return self.model.predict_s(shape)

    def service_s(self, num_prompt_tokens: int, num_output_tokens: int, *, num_running: int) -> float:
        """Prefill plus ``num_output_tokens`` decode steps at the current batch size."""
        return self.prefill_s(num_prompt_tokens, num_running=num_running) + max(
            0, num_output_tokens - 1
        ) * self.decode_step_s(max(1, num_running))
