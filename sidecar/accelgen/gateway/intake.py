"""A request as the router sees it, from its headers and (when the gateway sends it) its body.

The tier is read from the headers exactly as the sidecar reads them
(:func:`accelgen.core.tier_headers.tier_from_headers`), else the pool's default tier
(the picker knows no API keys, so a tenant's own default tier is the sidecar's to
apply). A tier name the picker's tiers lack but the pods report is placed by name.

The prompt's size is an estimate, as the sidecar's admission makes it (no tokenizer
here): UTF-8 bytes / 4 of the prompt or the messages when the body is at hand, else of
the whole body's ``content-length``. The body is only read, never checked:
the sidecar validates it and answers a bad one itself.

A request is **sheddable** when its tier is not of the pool's highest priority (the
smallest ``priority`` number): the gateway's notion of a request that may be dropped
under load, which the sidecar's own admission applies too (looser tiers shed first).
"""

from __future__ import annotations

import json
from collections.abc import Collection, Mapping
from typing import Any

from accelgen.core.routing import RouteRequest
from accelgen.core.tier_headers import OBJECTIVE_HEADER, TIER_HEADER, TierHeaderError, tier_from_headers
from accelgen.core.tiers import SLOTier, TierSet

DEFAULT_MAX_TOKENS = 256  # the sidecar's guess when a client sets no limit

# HTTP status -> the OpenAI error type, as the sidecar names them.
_ERROR_TYPES = {400: "invalid_request_error", 429: "rate_limit_error", 503: "service_unavailable"}


def error_json(status: int, message: str, *, code: str, param: str | None = None) -> bytes:
    """The OpenAI error body (the shape every sidecar error has, which the ``openai`` client reads)."""
    kind = _ERROR_TYPES.get(status, "server_error" if status >= 500 else "invalid_request_error")
    return json.dumps({"error": {"message": message, "type": kind, "param": param, "code": code}}).encode()


def is_sheddable(tier: SLOTier, tiers: TierSet) -> bool:
    """Whether a request of ``tier`` may be refused under load (see the module docstring)."""
    return tier.priority > min(t.priority for t in tiers)


def _text_tokens(text: object) -> int:
    return max(1, len(str(text).encode("utf-8", "replace")) // 4)


def _prompt_tokens(body: Mapping[str, Any]) -> int | None:
    prompt, messages = body.get("prompt"), body.get("messages")
    if isinstance(prompt, str):
        return _text_tokens(prompt)
    if isinstance(prompt, list) and prompt:
        if all(isinstance(p, int) for p in prompt):
            return len(prompt)
        return sum(len(p) if isinstance(p, list) else _text_tokens(p) for p in prompt)
    if isinstance(messages, list) and messages:
        total = 0
        for message in messages:
            content = message.get("content") if isinstance(message, dict) else None
            if isinstance(content, list):
                content = " ".join(str(part.get("text", "")) for part in content if isinstance(part, dict))
            total += _text_tokens(content or "") + 4  # role and template tokens
        return total
    return None


def _output_tokens(body: Mapping[str, Any]) -> int:
    limit = body.get("max_completion_tokens") or body.get("max_tokens")
    n = body.get("n")
    limit = limit if isinstance(limit, int) and not isinstance(limit, bool) and limit > 0 else DEFAULT_MAX_TOKENS
    return limit * (n if isinstance(n, int) and not isinstance(n, bool) and n > 0 else 1)


def decode_body(raw: bytes | None) -> dict[str, Any]:
    """The body as a JSON object, or {} when it is absent or not one."""
    if not raw:
        return {}
    try:
        doc = json.loads(raw)
    except (UnicodeDecodeError, ValueError):
        return {}
    return doc if isinstance(doc, dict) else {}


def _tier(headers: Mapping[str, str], tiers: TierSet, pod_tiers: Collection[str]) -> tuple[SLOTier, bool]:
    """The request's tier and whether it is sheddable (see :func:`route_request`)."""
    try:
        tier = tier_from_headers(headers, tiers) or tiers.default_tier
    except TierHeaderError as err:
        name = (headers.get(TIER_HEADER) or headers.get(OBJECTIVE_HEADER) or "").strip()
        if err.code != "unknown_tier" or name not in pod_tiers:
            raise
        return SLOTier(name=name), False  # the pods' own tier: their headroom for it decides
    return tier, is_sheddable(tier, tiers)


def route_request(
    headers: Mapping[str, str],
    body: bytes | None,
    tiers: TierSet,
    *,
    now: float,
    request_id: str = "",
    pod_tiers: Collection[str] = (),
) -> RouteRequest:
    """The request to place. ``headers`` by lower-case name; ``body`` None when not sent.

    ``pod_tiers``: tier names the pods report (their headroom's keys). A tier the picker's
    own tiers lack but the pods serve is placed by name, without targets and never shed
    (the picker was not given the pool's tier file; the sidecar applies the tier itself).

    Raises:
        accelgen.core.tier_headers.TierHeaderError: A tier header names no tier or holds
            no valid target (answer 400).
    """
    tier, sheddable = _tier(headers, tiers, pod_tiers)
    doc = decode_body(body)
    prompt = _prompt_tokens(doc)
    if prompt is None:
        length = headers.get("content-length", "")
        size = len(body) if body else int(length) if length.isdigit() else 0
        prompt = max(1, size // 4)
    return RouteRequest(
        tier=tier.name,
        prompt_tokens=prompt,
        expected_output_tokens=_output_tokens(doc),
        ttft_slo_s=tier.ttft_slo_s,
        tbt_slo_s=tier.tbt_slo_s,
        deadline_s=tier.deadline_s,
        sheddable=sheddable,
        arrival_s=now,
        request_id=request_id,
    )
