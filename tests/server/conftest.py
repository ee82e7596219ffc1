"""Fixtures: one shared sidecar + sim engine per module, and the official openai client."""

from __future__ import annotations

from collections.abc import Iterator

import openai
import pytest

from tests.support.sidecar import Stack


@pytest.fixture(scope="module")
def stack() -> Iterator[Stack]:
    running = Stack().start()
    yield running
    running.stop()


@pytest.fixture
def client(stack: Stack) -> openai.OpenAI:
    # max_retries=0: the tests assert on the first answer, not on the client's retries.
    return openai.OpenAI(base_url=stack.url + "/v1", api_key="unused", max_retries=0)
