"""The feature catalogue the built-in rankers read, and the config fields that size it.

`CoreFeatureSizes` sizes the features every built-in ranker reads (user and item ids, author, category, the
user/item/cross dense statistics). `CatalogConfig` adds the five fixed profile fields and one embedding
width: the DLRM family (dcn, dcnv2, deepfm, autoint, rdcn). The MMoE ranker builds on `CoreFeatureSizes`
with its own profile fields and behaviour sequence.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from service.features.schema import FeatureSchema, FeatureSpec, Kind, Side
from service.models.contract import RankerConfig

# name -> (side, kind, size field of the config: vocab for sparse ids, width for dense vectors)
FEATURE_CATALOG: dict[str, tuple[Side, Kind, str]] = {
    "user_id": (Side.USER, Kind.SPARSE_ID, "user_vocab"),
    "user_age_bucket": (Side.USER, Kind.SPARSE_ID, "age_vocab"),
    "user_gender": (Side.USER, Kind.SPARSE_ID, "gender_vocab"),
    "user_city": (Side.USER, Kind.SPARSE_ID, "city_vocab"),
    "user_device": (Side.USER, Kind.SPARSE_ID, "device_vocab"),
    "user_os": (Side.USER, Kind.SPARSE_ID, "os_vocab"),
    "user_dense": (Side.USER, Kind.DENSE, "user_dense_dim"),
    "item_id": (Side.ITEM, Kind.SPARSE_ID, "item_vocab"),
    "item_author": (Side.ITEM, Kind.SPARSE_ID, "author_vocab"),
    "item_category": (Side.ITEM, Kind.SPARSE_ID, "category_vocab"),
    "item_dense": (Side.ITEM, Kind.DENSE, "item_dense_dim"),
    "cross_dense": (Side.CROSS, Kind.DENSE, "cross_dense_dim"),
}

USER_FIELDS: tuple[str, ...] = ("user_id", "user_age_bucket", "user_gender", "user_city", "user_device", "user_os")
ITEM_FIELDS: tuple[str, ...] = ("item_id", "item_author", "item_category")
DENSE_FEATURES: tuple[str, ...] = ("user_dense", "item_dense", "cross_dense")
# Natural layout: user fields, user dense, item fields, item dense, cross dense.
USER_FIRST_ORDER: tuple[str, ...] = USER_FIELDS + ("user_dense",) + ITEM_FIELDS + ("item_dense", "cross_dense")
# The DCN ranker's fragmented layout: user and candidate blocks alternate.
INTERLEAVED_ORDER: tuple[str, ...] = (
    "user_id", "item_id", "user_age_bucket", "item_category", "cross_dense", "user_dense",
    "item_author", "user_gender", "user_city", "item_dense", "user_device", "user_os",
)


def catalog_specs(config: CoreFeatureSizes, names: Iterable[str]) -> list[FeatureSpec]:
    """Specs of catalogue features, sized by the config fields FEATURE_CATALOG names."""
    specs = []
    for name in names:
        side, kind, size_field = FEATURE_CATALOG[name]
        size = getattr(config, size_field)
        specs.append(FeatureSpec(name, side, kind, dim=size) if kind is Kind.DENSE
                     else FeatureSpec(name, side, kind, vocab_size=size))
    return specs


@dataclass(frozen=True)
class CoreFeatureSizes(RankerConfig):
    """Vocabularies (embedding rows are vocab + 1, the last one OOV) and dense widths every built-in ranker reads."""

    user_vocab: int = 10_000
    item_vocab: int = 30_000
    author_vocab: int = 5_000
    category_vocab: int = 500
    user_dense_dim: int = 96
    item_dense_dim: int = 16
    cross_dense_dim: int = 8

    def __post_init__(self) -> None:
        super().__post_init__()
        sizes = (self.user_vocab, self.item_vocab, self.author_vocab, self.category_vocab,
                 self.user_dense_dim, self.item_dense_dim, self.cross_dense_dim)
        if min(sizes) < 1:
            raise ValueError(f"vocabularies and dense widths must be >= 1, got {sizes}")


@dataclass(frozen=True)
class CatalogConfig(CoreFeatureSizes):
    """The whole catalogue: five fixed profile fields and one embedding width; architectures add their sizes."""

    age_vocab: int = 8
    gender_vocab: int = 3
    city_vocab: int = 200
    device_vocab: int = 20
    os_vocab: int = 5
    embedding_dim: int = 32

    def schema(self) -> FeatureSchema:
        """Every catalogue feature, user side first (USER_FIRST_ORDER)."""
        return FeatureSchema(tuple(catalog_specs(self, USER_FIRST_ORDER)))
