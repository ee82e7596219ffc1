"""Pure: CRD tiers/scheduler → the core's tiers.yaml and scheduler.yaml."""

from __future__ import annotations

import pytest
import yaml

from accelgen.core.errors import ConfigError
from accelgen.core.tiers import parse_tiers
from accelgen_operator.resources import build_config_map
from accelgen_operator.tierconfig import default_tier_name, scheduler_config, tiers_config
from tests.support.operator_cluster import make_spec


def test_configmap_tiers_yaml_parses_with_the_core_parser() -> None:
    cm = build_config_map("llama", "ns", make_spec())
    tiers = parse_tiers(yaml.safe_load(cm["data"]["tiers.yaml"]))
    assert [t.name for t in tiers] == ["interactive", "standard", "batch"]
    assert tiers.default == "standard"
    interactive = tiers.get("interactive")
    assert (interactive.ttft_slo_s, interactive.tbt_slo_s) == (0.5, 0.1)
    assert interactive.attainment_target == 0.95
    batch = tiers.get("batch")
    assert batch.deadline_s == 3600 and batch.tbt_slo_s is None and batch.priority == 2


def test_tier_fields_map_to_core_keys() -> None:
    config = tiers_config(make_spec())
    assert config["tiers"][0] == {
        "name": "interactive",
        "ttft_ms": 500,
        "tbt_ms": 100,
        "priority": 0,
        "attainment_target": 0.95,
    }
    assert config["tiers"][2] == {
        "name": "batch",
        "deadline_s": 3600,
        "priority": 2,
        "attainment_target": 0.99,
    }


def test_default_tier_falls_back_to_the_first() -> None:
    spec = make_spec()
    del spec["defaultTier"]
    assert default_tier_name(spec) == "interactive"
    assert tiers_config(spec)["default_tier"] == "interactive"


def test_core_rejection_names_the_crd_field() -> None:
    spec = make_spec(tiers=[{"name": "x", "ttftMs": 500}])  # online tier without tbtMs
    with pytest.raises(ConfigError) as err:
        tiers_config(spec)
    assert err.value.field is not None and err.value.field.startswith("spec.tiers[0]")


def test_unknown_tier_field_rejected() -> None:
    with pytest.raises(ConfigError, match="unknown"):
        tiers_config(make_spec(tiers=[{"name": "x", "ttftMs": 1, "tbtMs": 1, "colour": "red"}]))


def test_scheduler_yaml_has_policy_and_only_the_set_keys() -> None:
    assert scheduler_config(make_spec()) == {"policy": "accelgen"}
    spec = make_spec(scheduler={"policy": "sarathi", "gammaSeconds": 0.5, "longPromptTokens": 4096})
    assert scheduler_config(spec) == {
        "policy": "sarathi",
        "gamma_s": 0.5,
        "long_prompt_tokens": 4096,
    }
    spec = make_spec(scheduler={"safetyMarginSeconds": 0.02})
    assert scheduler_config(spec) == {"policy": "accelgen", "safety_margin_s": 0.02}
