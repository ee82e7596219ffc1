"""A request body at the edge: its size, its encoding, its JSON and the published schema.

One pass, each failure an :class:`ApiError` in the API's error shape:

1. the body arrives within ``body_timeout_s`` (else 408, and the connection is closed)
   and is at most :data:`MAX_BODY_BYTES` as sent (413);
2. ``Content-Encoding`` identity, ``gzip`` (``x-gzip``) or ``deflate`` is decoded to at
   most :data:`MAX_BODY_BYTES` (413); data that is not in its coding is a 400; any other
   coding (``br``, ``zstd``, a list of codings) a 415;
3. the JSON is UTF-8, nested at most :data:`MAX_DEPTH` deep, and every number finite
   (``NaN``, ``Infinity`` and ``1e999`` are 400s: none is JSON a vLLM server accepts);
4. the body matches the request schema of ``/openapi.json`` (types, ranges), checked by
   ``jsonschema-rs``; a 400 names the first offending field.

Fields the schema does not list pass through to the engine (they are its to check).
"""

from __future__ import annotations

import asyncio
import json
import math
import re
import zlib
from importlib import resources
from typing import Any

import jsonschema_rs
from aiohttp import web
from aiohttp.http_exceptions import HttpProcessingError

from accelgen.server.errors import ApiError

#: The largest request body, as sent and once decoded (the engine's own limit is larger
#: by :data:`ENGINE_HEADROOM_BYTES`, see :func:`engine_bytes`).
MAX_BODY_BYTES = 4 * 1024 * 1024
#: What the sidecar may add to a body it forwards (stream options, tier fields, priority).
ENGINE_HEADROOM_BYTES = 64 * 1024
MAX_DEPTH = 128
#: aiohttp decodes bodies itself unless the runner says it does not (``serve`` does not).
RAW_BODIES = web.AppKey("raw_bodies", bool)
BODY_TIMEOUT = web.AppKey("body_timeout_s", float)

_STRING = re.compile(rb'"[^"\\]*(?:\\.[^"\\]*)*"', re.DOTALL)
_NOT_BRACKETS = bytes(b for b in range(256) if b not in b"[]{}")
_TO_PARENS = bytes.maketrans(b"[{]}", b"(())")
_WBITS = {"gzip": 16 + zlib.MAX_WBITS, "x-gzip": 16 + zlib.MAX_WBITS, "deflate": zlib.MAX_WBITS}


class _NonFinite(ValueError):
    pass


def _finite(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):
        raise _NonFinite(text)
    return value


def _constant(text: str) -> float:
    raise _NonFinite(text)


def _too_deep(raw: bytes, limit: int) -> bool:
    """Is any array or object nested deeper than ``limit`` (brackets inside strings aside)?

    On the brackets alone, as parentheses: each pass removes every innermost pair, so a
    structure of depth d is gone after exactly d passes; at most ``limit`` passes, each
    in C. Unbalanced brackets are left for the JSON parser to refuse.
    """
    if raw.count(b"[") + raw.count(b"{") <= limit:
        return False
    parens = _STRING.sub(b"", raw).translate(_TO_PARENS, _NOT_BRACKETS)
    run = b"(" * (limit + 1)
    for _ in range(limit):
        if run in parens:
            return True
        shorter = parens.replace(b"()", b"")
        if not shorter or len(shorter) == len(parens):
            return False
        parens = shorter
    return True


def decode(raw: bytes, encoding: str) -> bytes:
    """The body in ``encoding`` decoded, at most :data:`MAX_BODY_BYTES`; ApiError otherwise."""
    coding = encoding.strip().lower()
    if coding in ("", "identity"):
        return raw
    wbits = _WBITS.get(coding)
    if wbits is None:
        raise ApiError(
            415,
            f"Content-Encoding {shown(encoding)} is not supported (gzip, deflate or identity)",
            code="unsupported_encoding",
        )
    inflater = zlib.decompressobj(wbits)
    try:
        out = inflater.decompress(raw, MAX_BODY_BYTES + 1)
        if len(out) > MAX_BODY_BYTES:
            raise too_large()
        if not inflater.eof or inflater.unused_data:
            raise zlib.error("truncated or trailing data")
    except zlib.error:
        raise ApiError(
            400, f"the request body is not valid {coding} data", code="invalid_encoding", param="body"
        ) from None
    return out


def too_large() -> ApiError:
    return ApiError(413, f"request body too large (limit {MAX_BODY_BYTES} bytes)", code="body_too_large")


def loads(raw: bytes) -> Any:
    """Strict JSON: UTF-8, nested at most :data:`MAX_DEPTH`, finite numbers only."""
    if _too_deep(raw, MAX_DEPTH):
        raise ApiError(400, f"the request body nests deeper than {MAX_DEPTH} levels", code="too_deep", param="body")
    try:
        return json.loads(raw.decode("utf-8"), parse_float=_finite, parse_constant=_constant)
    except _NonFinite as err:
        raise ApiError(400, f"numbers must be finite, got {shown(str(err))}", code="invalid_json") from None
    except RecursionError:  # not reached below MAX_DEPTH; kept as the last line of defence
        raise ApiError(400, "the request body nests too deeply", code="too_deep", param="body") from None
    except (ValueError, UnicodeDecodeError):
        raise ApiError(400, "the request body is not valid JSON", code="invalid_json") from None


async def read_body(request: web.Request) -> bytes:
    """The body, decoded, within the app's body timeout (408 and a closed connection)."""
    timeout_s = request.app.get(BODY_TIMEOUT)
    try:
        async with asyncio.timeout(timeout_s):
            raw = await request.read()
    except TimeoutError:
        raise ApiError(408, f"the request body did not arrive within {timeout_s:g} s", code="body_timeout") from None
    except web.HTTPRequestEntityTooLarge:
        raise too_large() from None
    except (web.HTTPException, web.RequestPayloadError, HttpProcessingError, ValueError) as err:
        # aiohttp decoding on its own (an app not run by ``listen``): its decoder's error.
        raise ApiError(400, f"the request body could not be read: {type(err).__name__}", code="invalid_body") from None
    if request.app.get(RAW_BODIES, False):
        return decode(raw, request.headers.get("Content-Encoding", ""))
    return raw


def shown(value: str, limit: int = 64) -> str:
    """A client's value fit for a message: undecodable bytes as U+FFFD, quoted, cut short."""
    text = value.encode("utf-8", "surrogateescape").decode("utf-8", "replace")
    return json.dumps(text[:limit] + ("..." if len(text) > limit else ""), ensure_ascii=False)


class RequestSchema:
    """The request schemas of ``/openapi.json``, compiled once."""

    def __init__(self, document: dict[str, Any]) -> None:
        components = document["components"]

        def validator(name: str) -> Any:
            root = {"$ref": f"#/components/schemas/{name}", "components": components}
            return jsonschema_rs.Draft202012Validator(root)

        self._completion = validator("CompletionRequest")
        self._chat = validator("ChatRequest")

    @classmethod
    def published(cls) -> RequestSchema:
        text = resources.files("accelgen.server").joinpath("openapi.json").read_text("utf-8")
        return cls(json.loads(text))

    def check(self, body: object, *, chat: bool) -> None:
        """ApiError(400) naming the first field that does not match the schema."""
        validator = self._chat if chat else self._completion
        if validator.is_valid(body):
            return
        error = next(iter(validator.iter_errors(body)))
        path = list(error.instance_path)
        param = str(path[0]) if path else str(getattr(error.kind, "property", None) or "body")
        where = "".join(f"[{p}]" if isinstance(p, int) else f".{p}" for p in path).lstrip(".") or "body"
        message = error.message if len(error.message) <= 200 else error.message[:200] + "..."
        raise ApiError(400, f"{where}: {message}", code="invalid_request", param=param)


def engine_bytes(body: dict[str, Any]) -> bytes:
    """The engine's body, compact; 413 if it outgrew the engine's limit.

    Re-serialising can lengthen a body (``1e5`` is written ``100000.0``), so the size
    is checked here too: the sidecar refuses what the engine would.
    """
    try:
        data = json.dumps(body, separators=(",", ":"), ensure_ascii=False).encode("utf-8")
    except UnicodeEncodeError:  # a lone surrogate from a \\ud800 escape: keep it escaped
        data = json.dumps(body, separators=(",", ":")).encode("ascii")
    if len(data) > MAX_BODY_BYTES + ENGINE_HEADROOM_BYTES:
        raise ApiError(
            413,
            f"request body too large once forwarded (limit {MAX_BODY_BYTES} bytes as sent)",
            code="body_too_large",
        )
    return data
