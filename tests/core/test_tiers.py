"""Tier configuration: valid files parse, every kind of bad value names its field."""

from __future__ import annotations

import pytest

from accelgen.config import load_tiers
from accelgen.core.errors import ConfigError
from accelgen.core.tiers import parse_tiers

GOOD = {
    "default_tier": "chat",
    "tiers": [
        {"name": "chat", "ttft_ms": 250, "tbt_ms": 40, "priority": 0, "attainment_target": 0.99},
        {"name": "offline", "deadline_s": 3600, "priority": 5},
    ],
}


def test_parses_units_and_defaults() -> None:
    tiers = parse_tiers(GOOD)
    chat, offline = tiers.get("chat"), tiers.get("offline")
    assert chat.ttft_slo_s == pytest.approx(0.25) and chat.tbt_slo_s == pytest.approx(0.04)
    assert not chat.is_offline and offline.is_offline and offline.deadline_s == 3600
    assert tiers.default_tier is chat and tiers.get(None) is chat
    assert tiers.tightest_tbt_s == pytest.approx(0.04)
    assert offline.attainment_target == 0.9
    assert parse_tiers(tiers.to_config()) == tiers


@pytest.mark.parametrize(
    ("change", "field", "message"),
    [
        ({"tiers": [{"name": "chat", "ttft_ms": -1, "tbt_ms": 40}]}, "tiers[0].ttft_ms", "positive"),
        ({"tiers": [{"name": "chat", "ttft_ms": 100, "tbt_ms": 0}]}, "tiers[0].tbt_ms", "positive"),
        ({"tiers": [{"name": "chat", "ttft_ms": 100, "tbt_ms": 40, "colour": 1}]}, "tiers[0].colour", "unknown"),
        (
            {"tiers": [{"name": "chat", "ttft_ms": 1, "tbt_ms": 1}, {"name": "chat", "deadline_s": 1}]},
            "tiers[1].name",
            "duplicate",
        ),
        ({"default_tier": None}, "default_tier", "missing"),
        ({"default_tier": "nope"}, "default_tier", "not one of"),
        ({"tiers": [{"name": "chat", "tbt_ms": 40}]}, "tiers[0].ttft_ms", "both"),
        ({"tiers": [{"name": "chat", "ttft_ms": 5, "tbt_ms": 4, "deadline_s": 9}]}, "tiers[0].deadline_s", "offline"),
        ({"tiers": []}, "tiers", "non-empty"),
        ({"extra": 1}, "extra", "unknown"),
        ({"tiers": [{"name": "chat", "ttft_ms": "fast", "tbt_ms": 4}]}, "tiers[0].ttft_ms", "number"),
    ],
)
def test_bad_values_name_the_field(change: dict[str, object], field: str, message: str) -> None:
    raw = {**GOOD, **change}
    if raw.get("default_tier") is None:
        raw.pop("default_tier")
    with pytest.raises(ConfigError) as info:
        parse_tiers(raw)
    assert info.value.field == field
    assert message in info.value.message


def test_file_errors_name_the_file(tmp_path) -> None:  # type: ignore[no-untyped-def]
    bad = tmp_path / "tiers.yaml"
    bad.write_text("tiers: [\n")
    with pytest.raises(ConfigError, match="malformed YAML") as info:
        load_tiers(bad)
    assert info.value.source == str(bad)
    with pytest.raises(ConfigError, match="file not found"):
        load_tiers(tmp_path / "missing.yaml")
    bad.write_text("default_tier: a\ntiers:\n  - {name: a, ttft_ms: 1, tbt_ms: -2}\n")
    with pytest.raises(ConfigError) as info:
        load_tiers(bad)
    assert str(info.value).startswith(f"{bad}: tiers[0].tbt_ms: ")
