"""DLRM/DCNv2-style ranker with an interleaved (fragmented) user/item/cross feature layout.

concat (in `feature_order`, user and candidate blocks interleaved) -> BatchNorm1d -> x0
    -> cross network  x_{l+1} = x0 * (W_l x_l + b_l) + x_l     (DCNv2, full-rank W)
    -> deep MLP D->512->256                                    (in parallel, on x0)
    -> concat(cross, deep) -> one sigmoid head per task.

`DCNv2Config` is the same ranker with three cross layers: the "dcnv2" baseline rDCN is measured against.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor, nn

from service.features.schema import FeatureSchema, Kind, Side
from service.models.catalog import FEATURE_CATALOG, INTERLEAVED_ORDER, CatalogConfig, catalog_specs
from service.models.layers import MLP, OOVEmbedding, TaskTowers


@dataclass(frozen=True)
class DCNConfig(CatalogConfig):
    """Every size of the DCN ranker; `feature_order` is the concat layout (a permutation of FEATURE_CATALOG)."""

    feature_order: tuple[str, ...] = INTERLEAVED_ORDER
    num_cross_layers: int = 2
    deep_dims: tuple[int, ...] = (512, 256)

    def __post_init__(self) -> None:
        super().__post_init__()
        if sorted(self.feature_order) != sorted(FEATURE_CATALOG):
            raise ValueError(
                f"feature_order must be a permutation of {sorted(FEATURE_CATALOG)}, got {list(self.feature_order)}"
            )
        if self.num_cross_layers < 1 or not self.deep_dims:
            raise ValueError("num_cross_layers must be >= 1 and deep_dims non-empty")

    def schema(self) -> FeatureSchema:
        """Every catalogue feature, in the concat order `feature_order`."""
        return FeatureSchema(tuple(catalog_specs(self, self.feature_order)))


@dataclass(frozen=True)
class DCNv2Config(DCNConfig):
    """The DCN ranker with three cross layers: the "dcnv2" architecture."""

    num_cross_layers: int = 3


def concat_widths(config: DCNConfig) -> list[tuple[str, Side, int]]:
    """(feature name, side, width) of every block of the concat, in order."""
    return [
        (spec.name, spec.side, spec.dim if spec.kind is Kind.DENSE else config.embedding_dim)
        for spec in config.schema().features
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
        self.specs = config.schema().features
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
        scores: dict[str, Tensor] = self.heads({task: combined for task in self.config.tasks})
        return scores
