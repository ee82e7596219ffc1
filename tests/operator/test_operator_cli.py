"""The ``accelgen-operator run`` flags that become the OperatorConfig (no operator started)."""

from __future__ import annotations

import pytest

from accelgen_operator.cli import _parser, config_from_args
from accelgen_operator.handlers import OperatorConfig
from accelgen_operator.resources import DefaultImages


@pytest.fixture(autouse=True)
def _no_image_env(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("ACCELGEN_DEFAULT_ENGINE_IMAGE", raising=False)
    monkeypatch.delenv("ACCELGEN_DEFAULT_SIDECAR_IMAGE", raising=False)


def _config(*argv: str) -> OperatorConfig:
    return config_from_args(_parser().parse_args(["run", *argv]))


def test_no_default_images_unless_given() -> None:
    cfg = _config()
    assert (cfg.default_engine_image, cfg.default_sidecar_image) == (None, None)
    assert cfg.images == DefaultImages()


def test_default_images_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    # What the Helm chart's operator Deployment sets.
    monkeypatch.setenv("ACCELGEN_DEFAULT_ENGINE_IMAGE", "ghcr.io/accelgen/accelgen-engine:0.1.0")
    monkeypatch.setenv("ACCELGEN_DEFAULT_SIDECAR_IMAGE", "ghcr.io/accelgen/accelgen-sidecar:0.1.0")
    assert _config().images == DefaultImages(
        engine="ghcr.io/accelgen/accelgen-engine:0.1.0", sidecar="ghcr.io/accelgen/accelgen-sidecar:0.1.0"
    )


def test_flags_override_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ACCELGEN_DEFAULT_ENGINE_IMAGE", "env/engine:1")
    monkeypatch.setenv("ACCELGEN_DEFAULT_SIDECAR_IMAGE", "env/sidecar:1")
    cfg = _config("--default-engine-image", "flag/engine:2")
    assert cfg.images == DefaultImages(engine="flag/engine:2", sidecar="env/sidecar:1")
    cfg = _config("--default-sidecar-image", "flag/sidecar:2", "--stats-interval", "3")
    assert cfg.images == DefaultImages(engine="env/engine:1", sidecar="flag/sidecar:2")
    assert cfg.stats_interval_s == 3.0


def test_an_empty_value_means_no_default(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ACCELGEN_DEFAULT_ENGINE_IMAGE", "")
    assert _config().default_engine_image is None
    monkeypatch.setenv("ACCELGEN_DEFAULT_ENGINE_IMAGE", "env/engine:1")
    assert _config("--default-engine-image", "").default_engine_image is None
