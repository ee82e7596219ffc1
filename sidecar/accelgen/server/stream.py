"""Watching a generation go by: token times, the SLO verdict, and non-streaming reassembly.

Definitions (README, "Metrics"): TTFT = first token − arrival; a TBT gap is the time
between consecutive token events of one request; a token is late when its gap exceeds
the tier's TBT target; a request meets its SLO when TTFT is within target and at most
max(1, ⌈1 % of output tokens⌉) tokens are late (offline: completed before its deadline).
A streamed chunk is one token event (vLLM sends one chunk per engine step).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

from accelgen.core.slo import TokenTimeline
from accelgen.core.tiers import SLOTier


def _has_token(event: dict[str, Any]) -> bool:
    """Does this chunk carry output (not only usage, nor only the chat role)?"""
    for choice in event.get("choices") or ():
        if not isinstance(choice, dict):
            continue
        if choice.get("text") or choice.get("finish_reason") or choice.get("token_ids"):
            return True
        delta = choice.get("delta")
        if isinstance(delta, dict) and any(
            delta.get(k) for k in ("content", "reasoning_content", "reasoning", "tool_calls")
        ):
            return True
    return False


def peek(data: bytes) -> tuple[bool, bool, dict[str, Any] | None]:
    """(has choices?, carries output?, the parsed event if it carries usage) of one chunk.

    Most chunks are only looked at, not parsed: the streaming path forwards bytes, so
    the sidecar's cost per token stays a few substring checks. JSON escapes quotes
    inside strings, so a key pattern cannot match text a model generated. A chunk
    without choices is the final usage chunk, which only clients that asked get.
    """
    event: dict[str, Any] | None = None
    if b'"usage"' in data and b'"usage":null' not in data and b'"usage": null' not in data:
        parsed = json.loads(data)
        event = parsed if isinstance(parsed, dict) else None
    if b'"choices":[]' in data or b'"choices": []' in data:
        return False, False, event
    if (
        b'"role"' in data
        and (b'"content":""' in data or b'"content": ""' in data)
        and b'"tool_calls"' not in data
        and b'"reasoning' not in data
    ):
        return True, False, event  # the chat role announcement, no token yet
    return True, True, event


@dataclass(slots=True)
class Timing:
    """One request's tokens as the sidecar sees them (monotonic clock).

    The verdict is :class:`accelgen.core.slo.TokenTimeline`'s, the same code the
    simulator judges with; this adds the gaps (for histograms) and the engine's usage.
    """

    tier: SLOTier
    arrival_s: float
    timeline: TokenTimeline = field(init=False)
    gaps_s: list[float] = field(default_factory=list)
    prompt_tokens: int | None = None
    output_tokens: int | None = None

    def __post_init__(self) -> None:
        self.timeline = TokenTimeline(tier=self.tier, arrival_s=self.arrival_s)

    def observe(self, event: dict[str, Any], now_s: float) -> bool:
        """Account one parsed engine chunk; True if it carried output."""
        self._usage(event)
        if not _has_token(event):
            return False
        self._token(now_s)
        return True

    def observe_raw(self, data: bytes, now_s: float) -> bool:
        """Account one unparsed chunk (the streaming path, see :func:`peek`).

        Returns False for the usage-only chunk (no choices), True for any other.
        """
        has_choices, has_token, event = peek(data)
        if event is not None:
            self._usage(event)
        if has_token:
            self._token(now_s)
        return has_choices

    def _usage(self, event: dict[str, Any]) -> None:
        usage = event.get("usage")
        if isinstance(usage, dict):
            self.prompt_tokens = usage.get("prompt_tokens", self.prompt_tokens)
            self.output_tokens = usage.get("completion_tokens", self.output_tokens)

    def _token(self, now_s: float) -> None:
        gap_s = self.timeline.token(now_s)
        if gap_s is not None:
            self.gaps_s.append(gap_s)

    @property
    def ttft_s(self) -> float | None:
        return self.timeline.ttft_s

    @property
    def num_output_tokens(self) -> int:
        """The engine's count (a chunk may carry several tokens), else the chunks seen."""
        if isinstance(self.output_tokens, int):
            return self.output_tokens
        return self.timeline.num_tokens

    def meets_slo(self, end_s: float) -> bool:
        """The request-level verdict for a request completed at ``end_s``."""
        return self.timeline.meets_slo(end_s, num_output_tokens=self.num_output_tokens)


@dataclass(slots=True)
class _Choice:
    text: list[str] = field(default_factory=list)
    reasoning: list[str] = field(default_factory=list)
    tool_calls: dict[int, dict[str, Any]] = field(default_factory=dict)
    finish_reason: str | None = None
    stop_reason: Any = None
    logprobs: Any = None


def _merge_logprobs(old: Any, new: Any) -> Any:
    """Concatenate streamed logprobs (lists inside a dict, or a chat ``content`` list)."""
    if old is None or not isinstance(new, dict) or not isinstance(old, dict):
        return new if old is None else old
    for key, value in new.items():
        if isinstance(value, list) and isinstance(old.get(key), list):
            old[key] = old[key] + value
        elif key not in old:
            old[key] = value
    return old


class Assembler:
    """Rebuilds a non-streaming response from the engine's stream (``chat`` or not)."""

    def __init__(self, *, chat: bool) -> None:
        self.chat = chat
        self.head: dict[str, Any] = {}
        self.choices: dict[int, _Choice] = {}
        self.usage: Any = None

    def feed(self, event: dict[str, Any]) -> None:
        for key in ("id", "created", "model", "system_fingerprint"):
            if key in event and key not in self.head:
                self.head[key] = event[key]
        if event.get("usage") is not None:
            self.usage = event["usage"]
        for raw in event.get("choices") or ():
            if not isinstance(raw, dict):
                continue
            choice = self.choices.setdefault(int(raw.get("index", 0)), _Choice())
            delta = raw.get("delta") if self.chat else raw
            if isinstance(delta, dict):
                choice.text.append(str(delta.get("content" if self.chat else "text") or ""))
                choice.reasoning.append(str(delta.get("reasoning_content") or ""))
                for call in delta.get("tool_calls") or ():
                    self._merge_call(choice, call)
            choice.finish_reason = raw.get("finish_reason") or choice.finish_reason
            choice.stop_reason = raw.get("stop_reason", choice.stop_reason)
            choice.logprobs = _merge_logprobs(choice.logprobs, raw.get("logprobs"))

    @staticmethod
    def _merge_call(choice: _Choice, call: Any) -> None:
        if not isinstance(call, dict):
            return
        slot = choice.tool_calls.setdefault(
            int(call.get("index", 0)),
            {"id": None, "type": "function", "function": {"name": "", "arguments": ""}},
        )
        slot["id"] = call.get("id") or slot["id"]
        fn = call.get("function") or {}
        slot["function"]["name"] += fn.get("name") or ""
        slot["function"]["arguments"] += fn.get("arguments") or ""

    def result(self) -> dict[str, Any]:
        choices = []
        for index in sorted(self.choices):
            c = self.choices[index]
            out: dict[str, Any] = {"index": index}
            if self.chat:
                message: dict[str, Any] = {"role": "assistant", "content": "".join(c.text)}
                if any(c.reasoning):
                    message["reasoning_content"] = "".join(c.reasoning)
                if c.tool_calls:
                    message["tool_calls"] = [c.tool_calls[i] for i in sorted(c.tool_calls)]
                out["message"] = message
            else:
                out["text"] = "".join(c.text)
            out.update(logprobs=c.logprobs, finish_reason=c.finish_reason, stop_reason=c.stop_reason)
            choices.append(out)
        obj = "chat.completion" if self.chat else "text_completion"
        return {**self.head, "object": obj, "choices": choices, "usage": self.usage}
