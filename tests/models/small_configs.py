"""Small hyper-parameters with the built-in architectures' structures, for fast tests (a few thousand
parameters per layer). Test-only data: the service and the benchmarks use the default sizes."""

from __future__ import annotations

from typing import Any

from service.models import RankerConfig, get_architecture

# The feature catalogue shared by dcn, dcnv2, deepfm, autoint and rdcn.
_SMALL_CATALOG_SIZES: dict[str, Any] = {
    "user_vocab": 200, "item_vocab": 500, "author_vocab": 50, "category_vocab": 20, "city_vocab": 30,
    "embedding_dim": 8, "user_dense_dim": 16, "item_dense_dim": 8, "cross_dense_dim": 4,
}
SMALL_OVERRIDES: dict[str, dict[str, Any]] = {
    "mmoe": {
        "user_vocab": 200, "item_vocab": 500, "author_vocab": 50, "category_vocab": 20,
        "profile_fields": (("user_gender", 3), ("user_age_bucket", 8), ("user_city", 30), ("user_device", 6)),
        "user_id_dim": 16, "profile_dim": 8, "user_dense_dim": 8, "user_mlp_dims": (16, 16), "seq_len": 12,
        "item_dim": 16, "author_dim": 8, "category_dim": 8, "item_dense_dim": 8, "cross_dense_dim": 4,
        "attention_dim": 8, "expert_dims": (32, 16), "tower_dims": (8,),
    },
    "dcn": {**_SMALL_CATALOG_SIZES, "deep_dims": (32, 16)},
    "dcnv2": {**_SMALL_CATALOG_SIZES, "deep_dims": (32, 16)},
    "deepfm": {**_SMALL_CATALOG_SIZES, "deep_dims": (32, 16)},
    "autoint": {**_SMALL_CATALOG_SIZES, "num_heads": 2, "head_dim": 4, "tower_dims": (16,)},
    "rdcn": {**_SMALL_CATALOG_SIZES, "deep_dims": (32, 16)},
}


def small_config(name: str) -> RankerConfig:
    """The default config of architecture `name` with SMALL_OVERRIDES applied."""
    return get_architecture(name).default_config().with_overrides(SMALL_OVERRIDES[name])
