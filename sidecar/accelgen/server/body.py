"""Checking a client's request body at the edge and building what goes to the engine.

The body is checked once against the request schema ``/openapi.json`` publishes
(:class:`accelgen.server.intake.RequestSchema`: types, ranges); then the few numbers the
sidecar itself needs are read off it (prompt size, ``max_tokens``, ``n``, ``stream``).
Fields the schema does not list pass through for the engine to validate, as vLLM's own
server would.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from accelgen.core.tiers import SLOTier
from accelgen.server.errors import ApiError
from accelgen.server.intake import RequestSchema
from accelgen.wire import SLO_KEYS, SloFields

_DEFAULT_MAX_TOKENS = 256  # admission's guess when the client sets no limit
_SCHEMA = RequestSchema.published()


@dataclass(frozen=True, slots=True)
class Parsed:
    """What the sidecar needs to know of a valid request."""

    body: dict[str, Any]
    chat: bool
    stream: bool
    include_usage: bool
    num_prompt_tokens: int  # an estimate (no tokenizer here): bytes / 4
    max_tokens: int


def _bad(message: str, param: str) -> ApiError:
    return ApiError(400, message, code="invalid_request", param=param)


def _int_field(body: dict[str, Any], key: str, *, low: int, high: int) -> int | None:
    value = body.get(key)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
        raise _bad(f"{key} must be an integer in [{low}, {high}], got {value!r}", key)
    return value


def _text_tokens(text: str) -> int:
    return max(1, len(text.encode("utf-8", "replace")) // 4)


def _prompt_tokens(prompt: object) -> int:
    if isinstance(prompt, str) and prompt:
        return _text_tokens(prompt)
    if isinstance(prompt, list) and prompt:
        if all(isinstance(p, str) for p in prompt):
            return sum(_text_tokens(p) for p in prompt)
        if all(isinstance(p, int) and not isinstance(p, bool) for p in prompt):
            return len(prompt)
        if all(
            isinstance(p, list) and p and all(isinstance(t, int) and not isinstance(t, bool) for t in p) for p in prompt
        ):
            return sum(len(p) for p in prompt)
    raise _bad("prompt must be a non-empty string, list of strings, or list(s) of token ids", "prompt")


def _message_tokens(messages: object) -> int:
    if not isinstance(messages, list) or not messages:
        raise _bad("messages must be a non-empty list of message objects", "messages")
    total = 0
    for i, message in enumerate(messages):
        if not isinstance(message, dict) or not isinstance(message.get("role"), str):
            raise _bad(f"messages[{i}] must be an object with a string role", "messages")
        content = message.get("content")
        if isinstance(content, str):
            total += _text_tokens(content)
        elif isinstance(content, list):
            total += sum(_text_tokens(str(part.get("text", ""))) for part in content if isinstance(part, dict))
        total += 4  # role and template tokens
    return total


def parse(body: object, *, chat: bool) -> Parsed:
    """Validate a completions (``chat=False``) or chat body; ApiError(400) names the field."""
    if not isinstance(body, dict):
        raise _bad("the request body must be a JSON object", "body")
    _SCHEMA.check(body, chat=chat)
    if "model" in body and body["model"] is not None and not isinstance(body["model"], str):
        raise _bad("model must be a string", "model")
    tokens = _message_tokens(body.get("messages")) if chat else _prompt_tokens(body.get("prompt"))
    limit = 1 << 24
    max_tokens = _int_field(body, "max_tokens", low=1, high=limit)
    max_completion = _int_field(body, "max_completion_tokens", low=1, high=limit)
    n = _int_field(body, "n", low=1, high=128) or 1
    stream = body.get("stream", False)
    if stream is not None and not isinstance(stream, bool):
        raise _bad("stream must be a boolean", "stream")
    options = body.get("stream_options")
    if options is not None and not isinstance(options, dict):
        raise _bad("stream_options must be an object", "stream_options")
    include_usage = bool(options.get("include_usage")) if options else False
    xargs = body.get("vllm_xargs")
    if xargs is not None and not isinstance(xargs, dict):
        raise _bad("vllm_xargs must be an object", "vllm_xargs")
    limit_out = max_completion or max_tokens or _DEFAULT_MAX_TOKENS
    return Parsed(
        body=body,
        chat=chat,
        stream=bool(stream),
        include_usage=include_usage,
        num_prompt_tokens=tokens,
        max_tokens=limit_out * n,
    )


def slo_fields(tier: SLOTier) -> SloFields:
    """What the engine is told of the request's tier: its name and its targets."""
    if tier.is_offline:
        return SloFields(tier=tier.name, deadline_s=tier.deadline_s)
    ttft_s, tbt_s = tier.ttft_slo_s, tier.tbt_slo_s
    return SloFields(
        tier=tier.name,
        ttft_ms=None if ttft_s is None else round(ttft_s * 1000.0, 3),
        tbt_ms=None if tbt_s is None else round(tbt_s * 1000.0, 3),
    )


def engine_body(parsed: Parsed, tier: SLOTier, *, send_priority: bool) -> dict[str, Any]:
    """The body sent to the engine: always streaming with usage, plus the tier metadata."""
    body = dict(parsed.body)
    options = dict(body.get("stream_options") or {})
    options["include_usage"] = True
    body.update(stream=True, stream_options=options)
    # NOTE: the SLO keys are the sidecar's: a client cannot claim a tier through them.
    xargs = {k: v for k, v in (body.get("vllm_xargs") or {}).items() if k not in SLO_KEYS}
    xargs.update(slo_fields(tier).to_xargs())
    body["vllm_xargs"] = xargs
    if send_priority:
        body["priority"] = tier.priority
    else:
        body.pop("priority", None)
    return body
