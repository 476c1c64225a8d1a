"""Registry of ranker architectures: name -> how to build it, its schema, tasks and task weights."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from torch import nn

from service.features.schema import FeatureSchema
from service.models import autoint, dcn, deepfm, mmoe, rdcn

DEFAULT_ARCHITECTURE = "mmoe"


@dataclass(frozen=True)
class Architecture:
    """Everything needed to rebuild a ranker from its name and hyper-parameters."""

    name: str
    config_cls: type
    build: Callable[[Any], nn.Module]
    schema: Callable[[Any], FeatureSchema]
    tasks: Callable[[Any], list[str]]
    task_weights: Callable[[Any], dict[str, float]]

    def default_config(self) -> Any:
        return self.config_cls()

    def config_from_dict(self, hyper_parameters: Mapping[str, Any]) -> Any:
        """Rebuild the config dataclass from JSON values; refuses unknown or missing fields."""
        fields = {field.name for field in dataclasses.fields(self.config_cls)}
        unknown = sorted(set(hyper_parameters) - fields)
        missing = sorted(fields - set(hyper_parameters))
        if unknown or missing:
            raise ValueError(
                f"hyper_parameters for architecture {self.name!r}: unknown fields {unknown}, missing fields {missing}"
            )
        return self.config_cls(**{key: _tuplify(value) for key, value in hyper_parameters.items()})

    def with_overrides(self, config: Any, overrides: Mapping[str, Any] | None) -> Any:
        """A copy of config with some fields replaced (benchmark sweeps, small test models)."""
        if not overrides:
            return config
        fields = {field.name for field in dataclasses.fields(self.config_cls)}
        unknown = sorted(set(overrides) - fields)
        if unknown:
            raise ValueError(f"unknown hyper-parameters {unknown} for architecture {self.name!r}; known: {sorted(fields)}")
        return dataclasses.replace(config, **{key: _tuplify(value) for key, value in overrides.items()})


def config_to_dict(config: Any) -> dict[str, Any]:
    """JSON-able hyper-parameters of a config dataclass (tuples become lists)."""
    return json_ready(dataclasses.asdict(config))


def json_ready(value: Any) -> Any:
    if isinstance(value, dict):
        return {key: json_ready(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [json_ready(item) for item in value]
    return value


def _tuplify(value: Any) -> Any:
    """JSON lists back to the (nested) tuples the frozen configs use."""
    if isinstance(value, (list, tuple)):
        return tuple(_tuplify(item) for item in value)
    return value


ARCHITECTURES: dict[str, Architecture] = {
    "mmoe": Architecture("mmoe", mmoe.MMoEConfig, mmoe.build, mmoe.schema, mmoe.tasks, mmoe.task_weights),
    "dcn": Architecture("dcn", dcn.DCNConfig, dcn.build, dcn.schema, dcn.tasks, dcn.task_weights),
    "dcnv2": Architecture("dcnv2", rdcn.DCNv2Config, dcn.build, dcn.schema, dcn.tasks, dcn.task_weights),
    "deepfm": Architecture("deepfm", deepfm.DeepFMConfig, deepfm.build, deepfm.schema, deepfm.tasks, deepfm.task_weights),
    "autoint": Architecture(
        "autoint", autoint.AutoIntConfig, autoint.build, autoint.schema, autoint.tasks, autoint.task_weights
    ),
    "rdcn": Architecture("rdcn", rdcn.RDCNConfig, rdcn.build, rdcn.schema, rdcn.tasks, rdcn.task_weights),
}

def get_architecture(name: str) -> Architecture:
    """The registered architecture called `name`; KeyError naming the known ones otherwise."""
    try:
        return ARCHITECTURES[name]
    except KeyError:
        raise KeyError(f"unknown architecture {name!r}; known: {sorted(ARCHITECTURES)}") from None
