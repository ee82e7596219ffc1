"""Errors in the OpenAI error JSON shape, the one shape every sidecar error takes.

``{"error": {"message": ..., "type": ..., "param": ..., "code": ...}}`` is what the
official ``openai`` client parses into ``APIStatusError.message``.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

# HTTP status -> OpenAI error type, as OpenAI and vLLM name them.
_TYPES = {
    400: "invalid_request_error",
    401: "authentication_error",
    403: "permission_error",
    404: "not_found_error",
    405: "invalid_request_error",
    413: "invalid_request_error",
    429: "rate_limit_error",
    502: "engine_error",
    503: "service_unavailable",
    504: "engine_error",
}


class ApiError(Exception):
    """An error answered to the client with ``status`` and the OpenAI error body.

    Args:
        status: HTTP status code.
        message: What went wrong, for a person; never contains a key.
        code: Short machine-readable reason (``unknown_tier``, ``queue_full``...).
        param: The offending request field, if any.
        retry_after_s: Sent as ``Retry-After`` (whole seconds, at least 1) when set.
    """

    def __init__(
        self,
        status: int,
        message: str,
        *,
        code: str | None = None,
        param: str | None = None,
        retry_after_s: float | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.code = code
        self.param = param
        self.retry_after_s = retry_after_s

    def body(self) -> dict[str, Any]:
        return error_body(self.status, self.message, code=self.code, param=self.param)

    def headers(self) -> dict[str, str]:
        if self.retry_after_s is None:
            return {}
        return {"Retry-After": str(max(1, int(self.retry_after_s + 0.999)))}


def error_body(status: int, message: str, *, code: str | None = None, param: str | None = None) -> dict[str, Any]:
    """The OpenAI error object for ``status``."""
    return {
        "error": {
            "message": message,
            "type": _TYPES.get(status, "server_error" if status >= 500 else "invalid_request_error"),
            "param": param,
            "code": code,
        }
    }


def normalize_engine_error(status: int, payload: object) -> dict[str, Any]:
    """An engine's error body in the OpenAI shape (older vLLM answers a flat object)."""
    if isinstance(payload, Mapping):
        inner = payload.get("error")
        if isinstance(inner, Mapping) and isinstance(inner.get("message"), str):
            return {"error": dict(inner)}
        message = payload.get("message")
        if isinstance(message, str):
            return error_body(status, message)
    return error_body(status, f"engine answered HTTP {status}")
