"""Test helper: what VanI serving feeds a trained model, every user feature expanded to the candidate batch."""

from __future__ import annotations

from torch import Tensor

from service.features.schema import FeatureSchema


def tile_user_features(schema: FeatureSchema, features: dict[str, Tensor], n: int) -> dict[str, Tensor]:
    """Expand batch-1 user features to batch n (the VanI input layout); candidate features pass through."""
    return {
        name: value.expand(n, *value.shape[1:]) if schema.get(name).is_user else value
        for name, value in features.items()
    }
