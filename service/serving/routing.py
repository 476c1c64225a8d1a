"""Which variant serves a user: the default variant, or an A/B arm picked by a stable hash of the user id.

The default may be `auto`: the form measured fastest at the request's size (service/serving/fastest.py), which
the scorer resolves per request. A/B arms and the shadow always name a real variant.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Mapping
from enum import Enum
from typing import Annotated, Any

from pydantic import PlainSerializer, PlainValidator, WithJsonSchema

from service.engine import Variant

HASH_SPACE = 2**64
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


def check_ab_split(split: Mapping[Variant, float]) -> dict[Variant, float]:
    """An A/B split's weights must be numbers in [0, MAX_AB_WEIGHT] (not NaN) and, unless the split is empty
    (no A/B), sum to more than 0."""
    weights = split.values()
    in_range = all(isinstance(w, int | float) and math.isfinite(w) and 0 <= w <= MAX_AB_WEIGHT for w in weights)
    if not in_range or (split and sum(weights) <= 0):
        shown = {getattr(variant, "value", variant): weight for variant, weight in split.items()}
        raise ValueError(
            f"ab_split weights must be numbers in [0, {MAX_AB_WEIGHT:g}] (not NaN or Infinity) with at least one "
            f"above 0, got {shown}"
        )
    return dict(split)


class VariantRouter:
    """Deterministic A/B arm per user: a stable hash of the user id picks a slice of [0, 1)."""

    def __init__(self, default: Variant | Auto | str, split: Mapping[Variant, float]) -> None:
        self.default: Variant | Auto = default_variant(default)
        weights = {Variant(v): w for v, w in check_ab_split(split).items() if w > 0}
        total = sum(weights.values())
        self.split = {v: weights[v] / total for v in Variant if v in weights} if weights else {}
        bounds, running = [], 0.0
        for variant, share in self.split.items():
            running += share
            bounds.append((running, variant))
        self._bounds = bounds

    def route(self, user_id: str | None) -> Variant | Auto:
        """The user's arm; an anonymous request (no user id: nothing to keep stable) gets the default variant
        (which may be `auto`: the scorer picks the form for the request's size)."""
        if user_id is None or not self._bounds:
            return self.default
        digest = hashlib.blake2b(user_id.encode("utf-8"), digest_size=8).digest()
        point = int.from_bytes(digest, "big") / HASH_SPACE  # same user, same point, in every process
        for bound, variant in self._bounds:
            if point < bound:
                return variant
        return self._bounds[-1][1]

    def to_dict(self) -> dict[str, Any]:
        return {"default_variant": self.default.value, "ab_split": {v.value: w for v, w in self.split.items()}}
