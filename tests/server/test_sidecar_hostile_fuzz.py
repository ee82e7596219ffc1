"""Fuzz ``accelgen serve``: the published schema and raw bytes never yield a 5xx or a traceback.

Two generators against one real ``serve`` process: schemathesis from the request
schemas ``/openapi.json`` publishes (valid and invalid bodies and headers), and
hypothesis over raw bytes (nesting deep and shallow, numbers at the edges of JSON and of
the schema's ranges, bodies in, out of and not in their ``Content-Encoding``, target
headers of any text). Every answer must be below 500 and, for an error, the API's JSON
error shape; the process's log must hold no traceback and no ERROR line. Examples are
bounded so the file runs in seconds.
"""

from __future__ import annotations

import gzip
import json
import zlib
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from schemathesis import GenerationMode
from schemathesis.checks import not_a_server_error

from tests.support.serve_process import ServeProcess


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServeProcess]:
    # A fast engine: fuzzed max_tokens can be in the thousands.
    running = ServeProcess(tmp_path_factory.mktemp("fuzz"), "--sim-time-scale", "0.001")
    yield running
    assert "Traceback" not in running.output, running.output[-3000:]
    assert " ERROR " not in running.output, running.output[-3000:]
    running.stop()


@pytest.mark.parametrize("label", ["POST /v1/completions", "POST /v1/chat/completions"])
@pytest.mark.parametrize("mode", [GenerationMode.POSITIVE, GenerationMode.NEGATIVE])
def test_published_schema_never_a_server_error(server: ServeProcess, label: str, mode: GenerationMode) -> None:
    doc = httpx.get(server.url + "/openapi.json").json()
    operation = schemathesis.openapi.from_dict(doc).find_operation_by_label(label)
    assert operation is not None
    seen: list[int] = []

    @given(case=operation.as_strategy(generation_mode=mode))
    @settings(max_examples=20, deadline=None, suppress_health_check=list(HealthCheck), database=None)
    def run(case: Any) -> None:
        response = case.call_and_validate(base_url=server.url, timeout=30, checks=[not_a_server_error])
        seen.append(response.status_code)

    run()
    assert seen and all(code < 500 for code in seen)


_EDGE_NUMBERS = [
    "NaN", "Infinity", "-Infinity", "1e999", "-1e999", "1e-400", "-0", "0.0", "4.9e-324",
    "1.7976931348623157e308", "18446744073709551616", "-9223372036854775809", "1" * 5000, "1E5",
]  # fmt: skip
_FIELDS = [
    "prompt", "messages", "max_tokens", "max_completion_tokens", "n", "temperature", "top_p", "top_k",
    "seed", "stop", "stream", "stream_options", "logprobs", "best_of", "model", "vllm_xargs", "priority",
]  # fmt: skip

_scalars = (
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**70), max_value=2**70)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=12)
)
_values = st.recursive(
    _scalars,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=6), inner, max_size=4),
    max_leaves=16,
)


@st.composite
def _raw_bodies(draw: st.DrawFn) -> bytes:
    """A JSON body of the API's fields, maybe nested deep, maybe with an edge number or cut."""
    fields = draw(st.dictionaries(st.sampled_from(_FIELDS), _values, max_size=5))
    if draw(st.booleans()):
        fields.setdefault("prompt", "hi")
        fields["max_tokens"] = draw(st.integers(min_value=1, max_value=8))
    text = json.dumps(fields)
    if draw(st.booleans()):  # an edge number where a value was
        edge = draw(st.sampled_from(_EDGE_NUMBERS))
        key = draw(st.sampled_from(["temperature", "seed", "max_tokens", "top_p", "n", "zz"]))
        text = text[:-1] + ("," if len(text) > 2 else "") + f'"{key}": {edge}}}'
    depth = draw(st.sampled_from([0, 0, 1, 50, 127, 128, 129, 500, 3000]))
    if depth:
        inside = draw(st.sampled_from(["prompt", "messages", "vllm_xargs", "zz"]))
        text = text[:-1] + ("," if len(text) > 2 else "") + f'"{inside}": ' + "[" * depth + "]" * depth + "}"
    raw = text.encode()
    if draw(st.integers(min_value=0, max_value=9)) == 0:  # cut short, or bytes of no text at all
        raw = raw[: draw(st.integers(min_value=0, max_value=len(raw)))] + draw(st.binary(max_size=8))
    return raw


_ENCODINGS = ["", "identity", "gzip", "deflate", "x-gzip", "br", "zstd", "gzip, deflate", "GZIP", "bogus"]


@st.composite
def _requests(draw: st.DrawFn) -> tuple[str, bytes, dict[str, str]]:
    path = draw(st.sampled_from(["/v1/completions", "/v1/chat/completions"]))
    raw = draw(_raw_bodies())
    headers = {"Content-Type": "application/json"}
    encoding = draw(st.sampled_from(_ENCODINGS))
    if encoding:
        headers["Content-Encoding"] = encoding
        how = draw(st.sampled_from(["right", "wrong", "cut"]))
        if how != "wrong" and encoding.lower() in ("gzip", "x-gzip"):
            raw = gzip.compress(raw)
        elif how != "wrong" and encoding == "deflate":
            raw = zlib.compress(raw)
        if how == "cut":
            raw = raw[: len(raw) // 2]
    header_text = st.text(st.characters(min_codepoint=0x20, max_codepoint=0xFF, exclude_characters="\x7f"), max_size=12)
    for name in ("x-llm-d-slo-ttft-ms", "x-llm-d-slo-tpot-ms", "x-accelgen-tier"):
        if draw(st.integers(min_value=0, max_value=3)) == 0:
            headers[name] = draw(header_text | st.sampled_from(["50", "1e-300", "1_000", " 5 ", "0", "86400001"]))
    return path, raw, headers


@given(request=_requests())
@settings(max_examples=120, deadline=None, suppress_health_check=list(HealthCheck), database=None)
def test_raw_bytes_never_a_server_error(server: ServeProcess, request: tuple[str, bytes, dict[str, str]]) -> None:
    path, raw, headers = request
    encoded = {k: v.strip().encode("latin-1") for k, v in headers.items()}
    resp = httpx.post(server.url + path, content=raw, headers=encoded, timeout=30)
    assert resp.status_code < 500, (resp.status_code, resp.text[:300], raw[:200], headers)
    if resp.status_code >= 400:
        error = resp.json()["error"]
        assert isinstance(error["message"], str) and error["message"], resp.text[:300]
