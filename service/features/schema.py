"""Feature schema: the contract between requests, models and stored artifacts.

Every feature has a name, a side (user | item | cross) and a kind (sparse id, dense vector, id sequence).
Tensor conventions for a model input dict (key = feature name):
    SPARSE_ID   -> int64   [B]          ids >= vocab_size (or < 0) map to the OOV row `vocab_size`
    DENSE       -> float32 [B, dim]
    ID_SEQUENCE -> int64   [B, max_len] 0 is padding (pad on the right), real ids are >= 1
User features are batch 1 when served by UOI/MaRI (tiled to B = N by VanI); item/cross features are batch N.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import Enum
from typing import Any, NamedTuple

import torch
from torch import Tensor

PADDING_ID = 0
MIN_SEQUENCE_FILL = 0.2  # example_batch fills at least this fraction of a sequence with real ids
# Bounds on what a schema (e.g. from an untrusted model.json) may declare, checked before any tensor is
# allocated for it: an example request holds rows x (sum of widths) values.
MAX_FEATURES = 1024
MAX_FEATURE_WIDTH = 1 << 16  # a dense dim or a sequence max_len
MAX_TOTAL_WIDTH = 1 << 18  # sum over features of dense dims and sequence lengths
MAX_VOCAB_SIZE = 1 << 40
MAX_FEATURE_NAME_CHARS = 128


class Side(str, Enum):  # noqa: UP042 (StrEnum would change what str() prints in stored JSON and messages)
    USER = "user"
    ITEM = "item"
    CROSS = "cross"


class Kind(str, Enum):  # noqa: UP042 (as Side)
    SPARSE_ID = "sparse_id"
    DENSE = "dense"
    ID_SEQUENCE = "id_sequence"


@dataclass(frozen=True)
class FeatureSpec:
    """One model input; see the module docstring for its tensor convention."""

    name: str
    side: Side
    kind: Kind
    dim: int = 1  # DENSE: vector width; SPARSE_ID / ID_SEQUENCE: 1
    vocab_size: int = 0  # SPARSE_ID / ID_SEQUENCE: embedding rows are vocab_size + 1 (last = OOV)
    max_len: int = 0  # ID_SEQUENCE only

    def __post_init__(self) -> None:
        # Accept plain strings (e.g. from JSON) but store the enums.
        object.__setattr__(self, "side", Side(self.side))
        object.__setattr__(self, "kind", Kind(self.kind))
        if not isinstance(self.name, str) or not 0 < len(self.name) <= MAX_FEATURE_NAME_CHARS:
            raise ValueError(f"feature name must be a string of 1 to {MAX_FEATURE_NAME_CHARS} characters, "
                             f"got {str(self.name)[:200]!r}")
        bounds = (("dim", MAX_FEATURE_WIDTH), ("vocab_size", MAX_VOCAB_SIZE), ("max_len", MAX_FEATURE_WIDTH))
        for field, bound in bounds:
            value = getattr(self, field)
            if type(value) is not int or not 0 <= value <= bound:
                raise ValueError(f"feature {self.name!r}: {field} must be an integer in [0, {bound}], got {value!r}")
        if self.kind is Kind.DENSE:
            if self.dim < 1:
                raise ValueError(f"feature {self.name!r}: dense dim must be >= 1, got {self.dim}")
            if self.vocab_size or self.max_len:
                raise ValueError(f"feature {self.name!r}: dense features take no vocab_size/max_len")
            return
        if self.dim != 1:
            raise ValueError(f"feature {self.name!r}: {self.kind.value} dim must be 1, got {self.dim}")
        if self.vocab_size < 1:
            raise ValueError(f"feature {self.name!r}: vocab_size must be >= 1, got {self.vocab_size}")
        if self.kind is Kind.ID_SEQUENCE and self.max_len < 1:
            raise ValueError(f"feature {self.name!r}: id_sequence max_len must be >= 1, got {self.max_len}")
        if self.kind is Kind.SPARSE_ID and self.max_len:
            raise ValueError(f"feature {self.name!r}: sparse_id takes no max_len, got {self.max_len}")

    @property
    def is_user(self) -> bool:
        return self.side is Side.USER

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "side": self.side.value,
            "kind": self.kind.value,
            "dim": self.dim,
            "vocab_size": self.vocab_size,
            "max_len": self.max_len,
        }

    @classmethod
    def from_dict(cls, data: Any) -> FeatureSpec:
        """A spec from JSON: exact types (no str -> int coercion), the bounds of __post_init__."""
        if not isinstance(data, dict):
            raise ValueError(f"feature spec must be an object, got {type(data).__name__}")
        expected = {"name", "side", "kind", "dim", "vocab_size", "max_len"}
        unknown = set(data) - expected
        if unknown:
            raise ValueError(f"feature spec has unknown fields {sorted(unknown)[:10]}; expected {sorted(expected)}")
        if "name" not in data or "side" not in data or "kind" not in data:
            raise ValueError(f"feature spec needs 'name', 'side' and 'kind', got {sorted(data)}")
        if not isinstance(data["name"], str):
            raise ValueError(f"feature name must be a string, got {type(data['name']).__name__}")
        for field, choices in (("side", Side), ("kind", Kind)):
            if data[field] not in [choice.value for choice in choices]:
                raise ValueError(f"feature {data['name'][:200]!r}: {field} is {str(data[field])[:80]!r}, expected "
                                 f"one of {[choice.value for choice in choices]}")
        return cls(name=data["name"], side=Side(data["side"]), kind=Kind(data["kind"]), dim=data.get("dim", 1),
                   vocab_size=data.get("vocab_size", 0), max_len=data.get("max_len", 0))

    def example(self, n: int, generator: torch.Generator | None = None) -> Tensor:
        """Realistic random values for this feature at batch n."""
        if self.kind is Kind.DENSE:
            return torch.randn(n, self.dim, generator=generator)
        if self.kind is Kind.SPARSE_ID:
            return torch.randint(0, self.vocab_size, (n,), generator=generator)
        ids = torch.randint(1, max(self.vocab_size, 2), (n, self.max_len), generator=generator)
        min_len = max(1, int(self.max_len * MIN_SEQUENCE_FILL))
        lengths = torch.randint(min_len, self.max_len + 1, (n, 1), generator=generator)
        positions = torch.arange(self.max_len).unsqueeze(0)
        return torch.where(positions < lengths, ids, torch.full_like(ids, PADDING_ID))


@dataclass(frozen=True)
class FeatureSchema:
    """Ordered, uniquely named features of one model."""

    features: tuple[FeatureSpec, ...]

    def __post_init__(self) -> None:
        object.__setattr__(self, "features", tuple(self.features))
        if len(self.features) > MAX_FEATURES:
            raise ValueError(f"feature schema has {len(self.features)} features, more than {MAX_FEATURES}")
        names = [spec.name for spec in self.features]
        duplicates = sorted({name for name in names if names.count(name) > 1})
        if duplicates:
            raise ValueError(f"feature schema has duplicate feature names {duplicates}")
        width = sum(spec.dim + spec.max_len for spec in self.features)
        if width > MAX_TOTAL_WIDTH:
            raise ValueError(f"feature schema's dense dims and sequence lengths add up to {width}, more than "
                             f"{MAX_TOTAL_WIDTH}")

    @property
    def names(self) -> tuple[str, ...]:
        return tuple(spec.name for spec in self.features)

    @property
    def user_features(self) -> tuple[FeatureSpec, ...]:
        return tuple(spec for spec in self.features if spec.side is Side.USER)

    @property
    def candidate_features(self) -> tuple[FeatureSpec, ...]:
        """Item and cross features: the ones that vary per candidate."""
        return tuple(spec for spec in self.features if spec.side is not Side.USER)

    def get(self, name: str) -> FeatureSpec:
        for spec in self.features:
            if spec.name == name:
                return spec
        raise KeyError(f"feature {name!r} is not in the schema; known features: {list(self.names)}")

    def __contains__(self, name: object) -> bool:
        return any(spec.name == name for spec in self.features)

    def to_dict(self) -> dict[str, Any]:
        return {"features": [spec.to_dict() for spec in self.features]}

    @classmethod
    def from_dict(cls, data: Any) -> FeatureSchema:
        if not isinstance(data, dict) or not isinstance(data.get("features"), list):
            raise ValueError("feature schema must be an object with a 'features' list")
        if len(data["features"]) > MAX_FEATURES:
            raise ValueError(f"feature schema has {len(data['features'])} features, more than {MAX_FEATURES}")
        return cls(tuple(FeatureSpec.from_dict(item) for item in data["features"]))

    def example_batch(self, n: int, generator: torch.Generator | None = None) -> dict[str, Tensor]:
        """Random inputs for one request: user features at batch 1, item/cross features at batch n."""
        if n < 1:
            raise ValueError(f"example_batch needs n >= 1, got {n}")
        return {spec.name: spec.example(1 if spec.is_user else n, generator) for spec in self.features}

    def example_batches(self, n: int, generator: torch.Generator | None = None) -> ExampleBatches:
        """One random request both ways, for checking a model by hand: `served` as the service holds it (user
        features at batch 1) and `tiled` with every feature at batch n, the call your own model and a packaged
        program take (README, "Serve your own model")."""
        served = self.example_batch(n, generator)
        tiled = {spec.name: served[spec.name].expand(n, *served[spec.name].shape[1:]).contiguous() if spec.is_user
                 else served[spec.name] for spec in self.features}
        return ExampleBatches(served, tiled)


class ExampleBatches(NamedTuple):
    """FeatureSchema.example_batches: the same request with user features at batch 1 and tiled to batch n."""

    served: dict[str, Tensor]
    tiled: dict[str, Tensor]
