"""The DLRM-family feature catalogue and the sizes every model built on it shares (dcn, dcnv2, deepfm, autoint, rdcn)."""

from __future__ import annotations

from dataclasses import dataclass

from service.features.schema import Kind, Side

# name -> (side, kind, size attribute on CatalogConfig: vocab for sparse ids, width for dense vectors)
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

INTERLEAVED_ORDER: tuple[str, ...] = (
    "user_id", "item_id", "user_age_bucket", "item_category", "cross_dense", "user_dense",
    "item_author", "user_gender", "user_city", "item_dense", "user_device", "user_os",
)


@dataclass(frozen=True)
class CatalogConfig:
    """Vocabulary and feature widths of the catalogue, and the tasks; architectures add their own sizes."""

    user_vocab: int = 10_000
    item_vocab: int = 30_000
    author_vocab: int = 5_000
    category_vocab: int = 500
    age_vocab: int = 8
    gender_vocab: int = 3
    city_vocab: int = 200
    device_vocab: int = 20
    os_vocab: int = 5
    embedding_dim: int = 32
    user_dense_dim: int = 96
    item_dense_dim: int = 16
    cross_dense_dim: int = 8
    tasks: tuple[str, ...] = ("click", "like")
    task_weights: tuple[float, ...] = (1.0, 0.5)

    def __post_init__(self) -> None:
        if len(self.tasks) != len(self.task_weights) or not self.tasks:
            raise ValueError(f"tasks {self.tasks} and task_weights {self.task_weights} must be non-empty, same length")
