"""The contract every ranker architecture keeps: a frozen config dataclass that knows its feature schema, its
tasks and their weights, and round-trips through the JSON dict that artifacts store as `hyper_parameters`.

An architecture is such a config and the nn.Module it configures (`Module(config)`, dict of features in,
dict task -> score out); service.models.registry pairs the two under a name.
"""

from __future__ import annotations

import dataclasses
from abc import ABC, abstractmethod
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Self

from service.features.schema import FeatureSchema


@dataclass(frozen=True)
class RankerConfig(ABC):
    """Hyper-parameters of one ranker: its tasks, their weights, and (in subclasses) every size it has."""

    tasks: tuple[str, ...] = ("click", "like")
    task_weights: tuple[float, ...] = (1.0, 0.5)

    def __post_init__(self) -> None:
        if not self.tasks or len(self.tasks) != len(self.task_weights):
            raise ValueError(f"tasks {self.tasks} and task_weights {self.task_weights} must be non-empty, same length")

    @abstractmethod
    def schema(self) -> FeatureSchema:
        """The features the ranker reads, in the order it reads them."""

    def weights_by_task(self) -> dict[str, float]:
        """Task -> weight of its score in the blended ranking score."""
        return dict(zip(self.tasks, self.task_weights))

    def to_dict(self) -> dict[str, Any]:
        """JSON-able hyper-parameters (tuples become lists)."""
        values: dict[str, Any] = _json_ready(dataclasses.asdict(self))
        return values

    @classmethod
    def from_dict(cls, hyper_parameters: Mapping[str, Any]) -> Self:
        """Rebuild a config from its `to_dict` form (JSON lists back to tuples); refuses unknown or missing fields."""
        known = cls.field_names()
        unknown, missing = sorted(set(hyper_parameters) - known), sorted(known - set(hyper_parameters))
        if unknown or missing:
            raise ValueError(f"hyper_parameters for {cls.__name__}: unknown fields {unknown}, missing fields {missing}")
        return cls(**{key: _tuplify(value) for key, value in hyper_parameters.items()})

    def with_overrides(self, overrides: Mapping[str, Any] | None) -> Self:
        """A copy with some fields replaced (benchmark sweeps, small test models); refuses unknown fields."""
        if not overrides:
            return self
        unknown = sorted(set(overrides) - self.field_names())
        if unknown:
            raise ValueError(
                f"unknown hyper-parameters {unknown} for {type(self).__name__}; known: {sorted(self.field_names())}"
            )
        return dataclasses.replace(self, **{key: _tuplify(value) for key, value in overrides.items()})

    @classmethod
    def field_names(cls) -> set[str]:
        return {field.name for field in dataclasses.fields(cls)}


def _json_ready(value: Any) -> Any:
    if isinstance(value, dict):
        return {key: _json_ready(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [_json_ready(item) for item in value]
    return value


def _tuplify(value: Any) -> Any:
    """JSON lists back to the (nested) tuples the frozen configs hold."""
    if isinstance(value, (list, tuple)):
        return tuple(_tuplify(item) for item in value)
    return value
