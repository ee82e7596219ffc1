"""How fast the engine finishes requests: observed, or predicted before anything finished."""

from __future__ import annotations

from collections import deque

from accelgen.core.admission.speed import Speed


class CompletionRate:
    """Requests the engine finishes per second, for admission's wait estimate.

    Observed over the last minute once four requests have finished; before that,
    predicted from the latency model and running means of what requests ask for.
    """

    def __init__(self, speed: Speed, *, slots: int) -> None:
        self.speed = speed
        self.slots = slots
        self._done_s: deque[float] = deque(maxlen=256)
        self._mean_prompt_tokens: float | None = None
        self._mean_output_tokens = 0.0

    def asked(self, num_prompt_tokens: int, max_tokens: int) -> None:
        """A request of this size arrived."""
        if self._mean_prompt_tokens is None:
            self._mean_prompt_tokens, self._mean_output_tokens = num_prompt_tokens, max_tokens
        self._mean_prompt_tokens += 0.05 * (num_prompt_tokens - self._mean_prompt_tokens)
        self._mean_output_tokens += 0.05 * (max_tokens - self._mean_output_tokens)

    def finished(self, now_s: float) -> None:
        """A request left the engine at ``now_s``."""
        self._done_s.append(now_s)

    def per_s(self, now_s: float) -> float:
        done = self._done_s
        while done and now_s - done[0] > 60.0:  # oldest first: drop what left the window
            done.popleft()
        if len(done) >= 4:
            return len(done) / max(0.5, now_s - done[0])
        service_s = self.speed.service_s(
            int(self._mean_prompt_tokens or 256),
            int(self._mean_output_tokens),
            num_running=self.slots,
        )
        return self.slots / max(1e-3, service_s)
