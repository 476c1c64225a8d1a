import dataclasses
import json

import pytest

from service.models.registry import ARCHITECTURES, DEFAULT_ARCHITECTURE, config_to_dict, get_architecture
from tests.models.small_configs import SMALL_OVERRIDES


def test_mmoe_is_the_default_and_dcn_is_registered() -> None:
    assert DEFAULT_ARCHITECTURE == "mmoe"
    assert {"mmoe", "dcn"} <= set(ARCHITECTURES)


def test_unknown_architecture_names_the_known_ones() -> None:
    with pytest.raises(KeyError, match="mmoe"):
        get_architecture("transformer")


def test_hyper_parameters_round_trip_through_json(architecture_name: str) -> None:
    arch = get_architecture(architecture_name)
    for config in (arch.default_config(), arch.with_overrides(arch.default_config(), SMALL_OVERRIDES[architecture_name])):
        restored = arch.config_from_dict(json.loads(json.dumps(config_to_dict(config))))
        assert restored == config


def test_config_from_dict_refuses_unknown_and_missing_fields(architecture_name: str) -> None:
    arch = get_architecture(architecture_name)
    values = config_to_dict(arch.default_config())
    with pytest.raises(ValueError, match="unknown fields \\['depth'\\]"):
        arch.config_from_dict({**values, "depth": 3})
    first = dataclasses.fields(arch.config_cls)[0].name
    with pytest.raises(ValueError, match=f"missing fields \\['{first}'\\]"):
        arch.config_from_dict({k: v for k, v in values.items() if k != first})


def test_overrides_refuse_unknown_hyper_parameters(architecture_name: str) -> None:
    arch = get_architecture(architecture_name)
    with pytest.raises(ValueError, match="widthh"):
        arch.with_overrides(arch.default_config(), {"widthh": 3})


def test_task_weights_cover_every_task(architecture_name: str) -> None:
    arch = get_architecture(architecture_name)
    config = arch.default_config()
    assert list(arch.task_weights(config)) == arch.tasks(config)
