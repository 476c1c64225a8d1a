"""Which variant serves a user: the default variant, or an A/B arm picked by a stable hash of the user id; and
which model version serves a user when a canary splits the traffic (`VersionRouter`, the same hashing).

The default may be `auto`: the form measured fastest at the request's size (service/serving/fastest.py), which
the scorer resolves per request. A/B arms and the shadow always name a real variant.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Mapping, Sequence
from enum import Enum
from typing import Annotated, Any, TypeVar

from pydantic import PlainSerializer, PlainValidator, WithJsonSchema

from service.engine import Variant

HASH_SPACE = 2**64
VERSION_SALT = b"version:"  # prefixed to the user id for the version hash: independent of the variant arm
# Weights are relative; a bound keeps their sum finite ({"mari": 1e308, "vani": 1e308} would overflow to inf and
# every share to 0). Every place that takes a split (settings, serving.json, /admin/variant) checks it here.
MAX_AB_WEIGHT = 1e9


class Auto(str, Enum):  # noqa: UP042 (as Variant: str(choice) and choice.value read alike for both)
    """The default choice that is no single variant: the form measured fastest at each request's size."""

    AUTO = "auto"


DEFAULT_CHOICES = (*(v.value for v in Variant), Auto.AUTO.value)


def default_variant(value: object) -> Variant | Auto:
    """'vani', 'uoi', 'mari' or 'auto' (or one of those enums) as the enum; ValueError naming the choices."""
    if isinstance(value, Variant | Auto):
        return value
    if isinstance(value, str) and value in DEFAULT_CHOICES:
        return Auto.AUTO if value == Auto.AUTO.value else Variant(value)
    raise ValueError(f"must be one of {', '.join(DEFAULT_CHOICES)}, got {str(value)[:40]!r}")


# What settings, serving.json and the router's default may name: one choice among four, one error naming them.
DefaultVariant = Annotated[Variant | Auto, PlainValidator(default_variant),
                           PlainSerializer(lambda v: v.value, when_used="json"),
                           WithJsonSchema({"enum": list(DEFAULT_CHOICES)})]


Arm = TypeVar("Arm")  # what a split's weights are keyed by: a variant (A/B) or a version name (canary)


def check_weights(split: Mapping[Arm, float], field: str) -> dict[Arm, float]:
    """A split's weights must be numbers in [0, MAX_AB_WEIGHT] (not NaN) and, unless the split is empty (no
    split), sum to more than 0; `field` names the split in the error."""
    weights = split.values()
    in_range = all(isinstance(w, int | float) and math.isfinite(w) and 0 <= w <= MAX_AB_WEIGHT for w in weights)
    if not in_range or (split and sum(weights) <= 0):
        shown = {getattr(arm, "value", arm): weight for arm, weight in split.items()}
        raise ValueError(
            f"{field} weights must be numbers in [0, {MAX_AB_WEIGHT:g}] (not NaN or Infinity) with at least one "
            f"above 0, got {shown}"
        )
    return dict(split)


def check_ab_split(split: Mapping[Variant, float]) -> dict[Variant, float]:
    """An A/B split's weights (check_weights)."""
    return check_weights(split, "ab_split")


def hash_point(key: bytes) -> float:
    """A stable point in [0, 1) for `key`: the same in every process and on every host."""
    digest = hashlib.blake2b(key, digest_size=8).digest()
    return int.from_bytes(digest, "big") / HASH_SPACE


def bucket_of(point: float, bounds: Sequence[tuple[float, Arm]]) -> Arm:
    """The arm whose slice of [0, 1) holds `point` (`bounds`: each arm's cumulative upper bound, ascending)."""
    for bound, arm in bounds:
        if point < bound:
            return arm
    return bounds[-1][1]  # a point just under 1 past the last bound's rounding


def cumulative_bounds(weights: Mapping[Arm, float]) -> list[tuple[float, Arm]]:
    """Each arm of positive weight with the upper bound of its slice of [0, 1), in `weights`' order."""
    positive = {arm: w for arm, w in weights.items() if w > 0}
    total = sum(positive.values())
    bounds, running = [], 0.0
    for arm, weight in positive.items():
        running += weight / total
        bounds.append((running, arm))
    return bounds


class VariantRouter:
    """Deterministic A/B arm per user: a stable hash of the user id picks a slice of [0, 1)."""

    def __init__(self, default: Variant | Auto | str, split: Mapping[Variant, float]) -> None:
        self.default: Variant | Auto = default_variant(default)
        weights = {Variant(v): w for v, w in check_ab_split(split).items() if w > 0}
        total = sum(weights.values())
        self.split = {v: weights[v] / total for v in Variant if v in weights} if weights else {}
        self._bounds = cumulative_bounds(self.split)

    def route(self, user_id: str | None) -> Variant | Auto:
        """The user's arm; an anonymous request (no user id: nothing to keep stable) gets the default variant
        (which may be `auto`: the scorer picks the form for the request's size)."""
        if user_id is None or not self._bounds:
            return self.default
        return bucket_of(hash_point(user_id.encode("utf-8")), self._bounds)  # same user, same arm, everywhere

    def to_dict(self) -> dict[str, Any]:
        return {"default_variant": self.default.value, "ab_split": {v.value: w for v, w in self.split.items()}}


class VersionRouter:
    """Deterministic model version per user (a canary): a stable hash of the user id, salted apart from the A/B
    hash so that a user's version and variant arm are independent, picks a slice of [0, 1)."""

    def __init__(self, primary: str, weights: Mapping[str, float]) -> None:
        self.primary = primary
        positive = {v: w for v, w in check_weights(weights, "versions").items() if w > 0}
        total = sum(positive.values())
        self.shares = {v: w / total for v, w in sorted(positive.items())}  # sorted: the same slices everywhere
        self._bounds = cumulative_bounds(self.shares)

    def route(self, user_id: str | None) -> str:
        """The user's version; an anonymous request (nothing to keep stable) gets the primary."""
        if user_id is None or not self._bounds:
            return self.primary
        return bucket_of(hash_point(VERSION_SALT + user_id.encode("utf-8")), self._bounds)
