"""Tenants from a keys file: 401 / 403 / 429 with Retry-After; keys never logged."""

from __future__ import annotations

import hashlib
import logging
import threading
from collections.abc import Iterator
from pathlib import Path

import httpx
import openai
import pytest

from accelgen.core.errors import ConfigError
from accelgen.server.tenants import load_keys
from tests.support.sidecar import TIERS, Stack

KEY_A, KEY_B, KEY_SLOW = "sk-team-a-0123456789", "sk-team-b-abcdef", "sk-slow-xyz"


def _sha(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


@pytest.fixture(scope="module")
def keyed(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    path = tmp_path_factory.mktemp("keys") / "keys.yaml"
    path.write_text(f"""
tenants:
  - name: team-a
    key_sha256: {_sha(KEY_A)}
    tiers: [interactive, standard]
    default_tier: interactive
  - name: team-b
    key_sha256: {_sha(KEY_B)}
    tiers: [batch]
    rate_rps: 1
  - name: slow
    key_sha256: {_sha(KEY_SLOW)}
    max_concurrency: 1
""")
    names = frozenset(t.name for t in TIERS)
    running = Stack(keys=load_keys(path, tier_names=names)).start()
    yield running
    running.stop()


def _client(stack: Stack, key: str) -> openai.OpenAI:
    return openai.OpenAI(base_url=stack.url + "/v1", api_key=key, max_retries=0)


def test_no_key_and_unknown_key_are_401(keyed: Stack) -> None:
    resp = httpx.post(keyed.url + "/v1/completions", json={"prompt": "x"})
    assert resp.status_code == 401 and resp.json()["error"]["code"] == "no_key"
    with pytest.raises(openai.AuthenticationError) as err:
        _client(keyed, "sk-wrong").completions.create(model="m", prompt="x", max_tokens=1)
    assert err.value.status_code == 401
    with pytest.raises(openai.AuthenticationError):
        _client(keyed, "sk-wrong").models.list()


def test_tenant_default_and_forbidden_tier(keyed: Stack) -> None:
    out = _client(keyed, KEY_A).completions.create(model="m", prompt="x", max_tokens=2)
    assert out.choices[0].text
    with pytest.raises(openai.PermissionDeniedError) as err:
        _client(keyed, KEY_A).completions.create(
            model="m", prompt="x", max_tokens=1, extra_headers={"x-accelgen-tier": "batch"}
        )
    assert err.value.status_code == 403 and "batch" in str(err.value.message)


def test_rate_limit_is_429_with_retry_after(keyed: Stack) -> None:
    client = _client(keyed, KEY_B)
    client.completions.create(model="m", prompt="x", max_tokens=1)  # the burst of one
    with pytest.raises(openai.RateLimitError) as err:
        client.completions.create(model="m", prompt="x", max_tokens=1)
    assert int(err.value.response.headers["Retry-After"]) >= 1


def test_concurrency_limit_is_429(keyed: Stack) -> None:
    first_started = threading.Event()

    def long_request() -> None:
        stream = _client(keyed, KEY_SLOW).completions.create(model="m", prompt="x", max_tokens=60, stream=True)
        for _ in stream:
            first_started.set()

    worker = threading.Thread(target=long_request)
    worker.start()
    assert first_started.wait(10)
    with pytest.raises(openai.RateLimitError):
        _client(keyed, KEY_SLOW).completions.create(model="m", prompt="x", max_tokens=1)
    worker.join(10)
    # Released at the end: the tenant may send again.
    _client(keyed, KEY_SLOW).completions.create(model="m", prompt="x", max_tokens=1)


def test_keys_never_logged(keyed: Stack, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    for key in (KEY_A, "sk-not-a-real-key"):
        httpx.post(
            keyed.url + "/v1/completions",
            json={"prompt": "x", "max_tokens": 1},
            headers={"Authorization": f"Bearer {key}"},
        )
    assert KEY_A not in caplog.text and "sk-not-a-real-key" not in caplog.text


@pytest.mark.parametrize(
    ("text", "fragment"),
    [
        ("tenants: nope", "list 'tenants'"),
        ("tenants: [{name: a, key_sha256: xyz}]", "64 hex"),
        (f"tenants: [{{name: a, key_sha256: '{'0' * 64}', tiers: [gold]}}]", "unknown tier"),
        (f"tenants: [{{name: a, key_sha256: '{'0' * 64}', rate_rps: -1}}]", "positive"),
    ],
)
def test_bad_keys_file_is_a_config_error(tmp_path: Path, text: str, fragment: str) -> None:
    path = tmp_path / "keys.yaml"
    path.write_text(text)
    with pytest.raises(ConfigError, match=fragment) as err:
        load_keys(path, tier_names=frozenset(t.name for t in TIERS))
    assert str(path) in str(err.value)
