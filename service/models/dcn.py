"""DLRM/DCNv2-style ranker with an interleaved (fragmented) user/item/cross feature layout.

concat (in `feature_order`, user and candidate blocks interleaved) -> BatchNorm1d -> x0
    -> cross network  x_{l+1} = x0 * (W_l x_l + b_l) + x_l     (DCNv2, full-rank W)
    -> deep MLP D->512->256                                    (in parallel, on x0)
    -> concat(cross, deep) -> one sigmoid head per task.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor, nn

from service.features.schema import FeatureSchema, FeatureSpec, Kind, Side
from service.models.layers import MLP, OOVEmbedding, TaskTowers

# name -> (side, kind, size attribute on DCNConfig: vocab for sparse ids, width for dense vectors)
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
class DCNConfig:
    """Every size of the DCN ranker; `feature_order` is the concat layout (a permutation of FEATURE_CATALOG)."""

    user_vocab: int = 10_000
    item_vocab: int = 30_000
    author_vocab: int = 5_000
    category_vocab: int = 500
    age_vocab: int = 8
    gender_vocab: int = 3
    city_vocab: int = 200
    device_vocab: int = 20
    os_vocab: int = 5
    embedding_dim: int = 32  # one width for every sparse feature, DLRM style
    user_dense_dim: int = 96
    item_dense_dim: int = 16
    cross_dense_dim: int = 8
    feature_order: tuple[str, ...] = INTERLEAVED_ORDER
    num_cross_layers: int = 2
    deep_dims: tuple[int, ...] = (512, 256)
    tasks: tuple[str, ...] = ("click", "like")
    task_weights: tuple[float, ...] = (1.0, 0.5)

    def __post_init__(self) -> None:
        if sorted(self.feature_order) != sorted(FEATURE_CATALOG):
            raise ValueError(
                f"feature_order must be a permutation of {sorted(FEATURE_CATALOG)}, got {list(self.feature_order)}"
            )
        if len(self.tasks) != len(self.task_weights) or not self.tasks:
            raise ValueError(f"tasks {self.tasks} and task_weights {self.task_weights} must be non-empty, same length")
        if self.num_cross_layers < 1 or not self.deep_dims:
            raise ValueError("num_cross_layers must be >= 1 and deep_dims non-empty")


def schema(config: DCNConfig) -> FeatureSchema:
    """Feature schema of the DCN ranker, in the interleaved concat order."""
    specs = []
    for name in config.feature_order:
        side, kind, size_attr = FEATURE_CATALOG[name]
        size = getattr(config, size_attr)
        if kind is Kind.DENSE:
            specs.append(FeatureSpec(name, side, kind, dim=size))
        else:
            specs.append(FeatureSpec(name, side, kind, vocab_size=size))
    return FeatureSchema(tuple(specs))


def concat_widths(config: DCNConfig) -> list[tuple[str, Side, int]]:
    """(feature name, side, width) of every block of the concat, in order."""
    return [
        (spec.name, spec.side, spec.dim if spec.kind is Kind.DENSE else config.embedding_dim)
        for spec in schema(config).features
    ]


class CrossNetwork(nn.Module):
    """DCNv2 cross layers: x_{l+1} = x0 * (W_l x_l + b_l) + x_l."""

    def __init__(self, dim: int, num_layers: int) -> None:
        super().__init__()
        self.layers = nn.ModuleList(nn.Linear(dim, dim) for _ in range(num_layers))

    def forward(self, x0: Tensor) -> Tensor:
        x = x0
        for layer in self.layers:
            x = x0 * layer(x) + x
        return x


class DCNRanker(nn.Module):
    """Dict of feature tensors (all at batch B) -> dict task -> sigmoid score [B]."""

    def __init__(self, config: DCNConfig) -> None:
        super().__init__()
        self.config = config
        self.specs = schema(config).features
        self.embeddings = nn.ModuleDict(
            {
                spec.name: OOVEmbedding(spec.vocab_size, config.embedding_dim)
                for spec in self.specs
                if spec.kind is Kind.SPARSE_ID
            }
        )
        self.concat_dim = sum(width for _, _, width in concat_widths(config))
        self.norm = nn.BatchNorm1d(self.concat_dim)
        self.cross = CrossNetwork(self.concat_dim, config.num_cross_layers)
        self.deep = MLP(self.concat_dim, config.deep_dims)
        self.heads = TaskTowers(self.concat_dim + self.deep.out_dim, (), config.tasks)

    def forward(self, features: dict[str, Tensor]) -> dict[str, Tensor]:
        blocks = [
            self.embeddings[spec.name](features[spec.name]) if spec.kind is Kind.SPARSE_ID else features[spec.name]
            for spec in self.specs
        ]
        x0 = self.norm(torch.cat(blocks, dim=-1))  # (B, D)
        combined = torch.cat([self.cross(x0), self.deep(x0)], dim=-1)  # (B, D + H)
        return self.heads({task: combined for task in self.config.tasks})


def build(config: DCNConfig) -> DCNRanker:
    return DCNRanker(config)


def tasks(config: DCNConfig) -> list[str]:
    return list(config.tasks)


def task_weights(config: DCNConfig) -> dict[str, float]:
    return dict(zip(config.tasks, config.task_weights))
