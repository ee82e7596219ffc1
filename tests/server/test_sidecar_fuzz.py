"""Fuzz the sidecar from its own OpenAPI document (schemathesis): never a 5xx.

Valid and invalid bodies and headers are generated for every operation; each answer must
not be a server error, must have the content type the document declares, and must
match the declared response schema (errors included: the OpenAI error shape).
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from importlib import resources
from typing import Any

import httpx
import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from schemathesis import GenerationMode
from schemathesis.checks import content_type_conformance, not_a_server_error
from schemathesis.specs.openapi.checks import response_schema_conformance

from accelgen.sim.realtime import SimEngineConfig
from tests.support.sidecar import Stack


@pytest.fixture(scope="module")
def fuzz_stack() -> Iterator[Stack]:
    # A fast engine: fuzzed max_tokens can be in the thousands.
    running = Stack(sim=SimEngineConfig(time_scale=0.001)).start()
    yield running
    running.stop()


def _cases() -> list[tuple[str, GenerationMode]]:
    """Every operation with valid data; those with a body or headers also with invalid data."""
    doc = json.loads(resources.files("accelgen.server").joinpath("openapi.json").read_text())
    out = []
    for path, item in doc["paths"].items():
        for method, op in item.items():
            out.append((f"{method.upper()} {path}", GenerationMode.POSITIVE))
            if "requestBody" in op:
                out.append((f"{method.upper()} {path}", GenerationMode.NEGATIVE))
    return out


# NOTE: schemathesis' own pytest plugin does not run under this pytest; its strategies
# are driven with hypothesis directly instead, one test per operation and mode.
@pytest.mark.parametrize(("label", "mode"), _cases())
def test_no_server_errors(fuzz_stack: Stack, label: str, mode: GenerationMode) -> None:
    doc = httpx.get(fuzz_stack.url + "/openapi.json").json()
    operation = schemathesis.openapi.from_dict(doc).find_operation_by_label(label)
    assert operation is not None
    checks = [not_a_server_error, content_type_conformance]
    if mode is GenerationMode.POSITIVE:
        checks.append(response_schema_conformance)
    seen: list[int] = []

    @given(case=operation.as_strategy(generation_mode=mode))
    @settings(max_examples=50, deadline=None, suppress_health_check=list(HealthCheck), database=None)
    def run(case: Any) -> None:
        response = case.call_and_validate(base_url=fuzz_stack.url, timeout=30, checks=checks)
        seen.append(response.status_code)

    run()
    assert seen and all(code < 500 for code in seen)
