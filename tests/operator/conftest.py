"""Fixtures of the operator tests: the running operator (``cluster``) and fake sidecars."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from typing import Any

import aiohttp
import pytest_asyncio

from accelgen_operator.emulator import OPTIONAL_RESOURCES, emulated_api
from accelgen_operator.handlers import OperatorConfig
from accelgen_operator.runner import running_operator
from tests.support.operator_cluster import FAST, Cluster, FakeSidecar


@pytest_asyncio.fixture
async def cluster() -> AsyncIterator[Cluster]:
    optional = list(OPTIONAL_RESOURCES)
    async with (
        emulated_api(optional=optional) as (emu, url),
        running_operator(OperatorConfig(api_url=url, **_fast())),
        aiohttp.ClientSession() as http,
    ):
        yield Cluster(emu=emu, url=url, http=http)


def _fast() -> dict[str, float]:
    return {
        "stats_interval_s": FAST.stats_interval_s,
        "stats_timeout_s": FAST.stats_timeout_s,
        "retry_base_s": FAST.retry_base_s,
        "retry_max_s": FAST.retry_max_s,
    }


@pytest_asyncio.fixture
async def sidecars() -> AsyncIterator[Callable[[], Any]]:
    """A factory of started FakeSidecars, all stopped after the test."""
    started: list[FakeSidecar] = []

    async def start() -> FakeSidecar:
        sidecar = await FakeSidecar().start()
        started.append(sidecar)
        return sidecar

    yield start
    for sidecar in started:
        await sidecar.stop()
