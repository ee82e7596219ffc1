"""The engine's predicted speed, from a core latency model, for admission's estimates."""

from __future__ import annotations

from dataclasses import dataclass

from accelgen.core.latency import BatchShape, LatencyModel

#: The prefill that measures the latency model's cost per prompt token beside decodes.
PROBE_PREFILL_TOKENS = 512


@dataclass(frozen=True, slots=True)
class Speed:
    """Iteration-time estimates admission needs, from one latency model.

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

    def prefill_token_s(self, *, num_running: int) -> float:
        """What one more prompt token adds to an iteration decoding ``num_running`` requests
        (the mean over a :data:`PROBE_PREFILL_TOKENS`-token chunk; at least 1 ns)."""
        decode_s = self.decode_step_s(num_running)
        per_token = (self.prefill_s(PROBE_PREFILL_TOKENS, num_running=num_running) - decode_s) / PROBE_PREFILL_TOKENS
        return max(per_token, 1e-9)
