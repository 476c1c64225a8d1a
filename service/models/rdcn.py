"""rDCN: a DCNv2 whose cross network keeps the user (context) and candidate blocks apart in every layer.

DCNv2 crosses the full concat x0 = [u0, c0]:  x_{l+1} = x0 * (W_l x_l + b_l) + x_l, so after the first layer
every block depends on the candidate and all later layers run N times. rDCN restricts W_l to be block
lower-triangular (the "rank-aware" DCN of arXiv 2605.27450):
    u_{l+1} = u0 * (W_uu u_l + b_u) + u_l                  user block: user inputs only (once per request)
    c_{l+1} = c0 * (W_c [u_l, c_l] + b_c) + c_l            candidate block: W_c [u, c] = W_cu u + W_cc c
Written the ordinary way (one Linear over cat([u, c])); MaRI splits that Linear into a per-request W_cu u
and a per-candidate W_cc c by itself. A deep MLP runs on x0 in parallel, as in the DCN ranker, and one
sigmoid head per task reads [u_L, c_L, deep].

The baseline rDCN is measured against is `DCNv2Config` (service.models.dcn): the DCN ranker with three
full-rank cross layers.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from service.features.schema import FeatureSpec, Kind
from service.models.catalog import CatalogConfig
from service.models.layers import MLP, OOVEmbedding, TaskTowers


@dataclass(frozen=True)
class RDCNConfig(CatalogConfig):
    """Every size of the rDCN ranker; sizes and defaults match DCNv2Config so the two compare like for like."""

    num_cross_layers: int = 3
    deep_dims: tuple[int, ...] = (512, 256)

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.num_cross_layers < 1 or not self.deep_dims:
            raise ValueError("num_cross_layers must be >= 1 and deep_dims non-empty")


class RankAwareCrossNetwork(nn.Module):
    """Cross layers over (u, c) with a block lower-triangular weight: the user block never sees candidates."""

    def __init__(self, user_dim: int, candidate_dim: int, num_layers: int) -> None:
        super().__init__()
        self.user_layers = nn.ModuleList(nn.Linear(user_dim, user_dim) for _ in range(num_layers))
        self.candidate_layers = nn.ModuleList(
            nn.Linear(user_dim + candidate_dim, candidate_dim) for _ in range(num_layers)
        )

    def forward(self, u0: Tensor, c0: Tensor) -> tuple[Tensor, Tensor]:
        u, c = u0, c0
        for user_layer, candidate_layer in zip(self.user_layers, self.candidate_layers):
            u, c = u0 * user_layer(u) + u, c0 * candidate_layer(torch.cat([u, c], dim=-1)) + c
        return u, c


class RDCNRanker(nn.Module):
    """Dict of feature tensors (all at batch B) -> dict task -> sigmoid score [B]."""

    def __init__(self, config: RDCNConfig) -> None:
        super().__init__()
        self.config = config
        specs = config.schema().features
        self.user_specs = tuple(spec for spec in specs if spec.is_user)
        self.candidate_specs = tuple(spec for spec in specs if not spec.is_user)
        self.embeddings = nn.ModuleDict(
            {spec.name: OOVEmbedding(spec.vocab_size, config.embedding_dim)
             for spec in specs if spec.kind is Kind.SPARSE_ID}
        )
        user_dim, candidate_dim = self._width(self.user_specs), self._width(self.candidate_specs)
        self.user_norm = nn.BatchNorm1d(user_dim)
        self.candidate_norm = nn.BatchNorm1d(candidate_dim)
        self.cross = RankAwareCrossNetwork(user_dim, candidate_dim, config.num_cross_layers)
        self.deep = MLP(user_dim + candidate_dim, config.deep_dims)
        self.heads = TaskTowers(user_dim + candidate_dim + self.deep.out_dim, (), config.tasks)

    def _width(self, specs: Sequence[FeatureSpec]) -> int:
        return sum(spec.dim if spec.kind is Kind.DENSE else self.config.embedding_dim for spec in specs)

    def _blocks(self, specs: Sequence[FeatureSpec], features: dict[str, Tensor]) -> list[Tensor]:
        return [self.embeddings[s.name](features[s.name]) if s.kind is Kind.SPARSE_ID else features[s.name]
                for s in specs]

    def forward(self, features: dict[str, Tensor]) -> dict[str, Tensor]:
        u0 = self.user_norm(torch.cat(self._blocks(self.user_specs, features), dim=-1))  # (B, Du)
        c0 = self.candidate_norm(torch.cat(self._blocks(self.candidate_specs, features), dim=-1))  # (B, Dc)
        deep = self.deep(torch.cat([u0, c0], dim=-1))  # (B, H)
        u, c = self.cross(u0, c0)
        combined = torch.cat([u, c, deep], dim=-1)  # (B, Du + Dc + H)
        scores: dict[str, Tensor] = self.heads({task: combined for task in self.config.tasks})
        return scores
