"""DeepFM-style multi-task ranker: first-order terms + FM pairwise interactions + a deep MLP, per task.

Every sparse feature (user fields, then item fields) is one field embedding of width d:
    v = stack(user field embs + item field embs, dim=1)                          (B, F, d)
    first order  = sum over fields of per-field scalar (per-task) embeddings    (B, T)
    FM           = 0.5 * ((sum_f v_f)^2 - sum_f v_f^2) summed over d            (B, 1)
    deep         = MLP(concat(flatten(v), user_dense, item_dense, cross_dense)) (B, H)
    logit_t      = first_order_t + fm_scale_t * FM + head_t(deep);  score_t = sigmoid(logit_t)
Written the ordinary way (no serving hints): the engine finds the user/candidate split on its own.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor, nn

from service.models.catalog import DENSE_FEATURES, ITEM_FIELDS, USER_FIELDS, CatalogConfig
from service.models.layers import MLP, OOVEmbedding

# Small initial embeddings, as in the DeepFM reference code: with N(0, 1) rows the FM sum of F(F-1)/2 dot
# products saturates every sigmoid at initialisation.
EMBEDDING_INIT_STD = 0.01


@dataclass(frozen=True)
class DeepFMConfig(CatalogConfig):
    """Every size of the DeepFM ranker (features and vocabularies from service.models.catalog)."""

    embedding_dim: int = 16  # one width for every field: FM needs it
    user_dense_dim: int = 32
    deep_dims: tuple[int, ...] = (256, 128)

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.embedding_dim < 1 or not self.deep_dims or min(self.deep_dims) < 1:
            raise ValueError("embedding_dim must be >= 1 and deep_dims non-empty with positive widths")


class DeepFMRanker(nn.Module):
    """Dict of feature tensors (all at batch B) -> dict task -> sigmoid score [B]."""

    def __init__(self, config: DeepFMConfig) -> None:
        super().__init__()
        self.config = config
        self.fields = USER_FIELDS + ITEM_FIELDS
        specs = {spec.name: spec for spec in config.schema().features}
        num_tasks = len(config.tasks)
        embeddings = {name: OOVEmbedding(specs[name].vocab_size, config.embedding_dim) for name in self.fields}
        self.embeddings = nn.ModuleDict(embeddings)
        # first-order weights: one scalar per field value and task
        first_order = {name: OOVEmbedding(specs[name].vocab_size, num_tasks) for name in self.fields}
        self.first_order = nn.ModuleDict(first_order)
        self.bias = nn.Parameter(torch.zeros(num_tasks))
        self.fm_scale = nn.Parameter(torch.ones(num_tasks))
        dense_width = config.user_dense_dim + config.item_dense_dim + config.cross_dense_dim
        self.deep = MLP(len(self.fields) * config.embedding_dim + dense_width, config.deep_dims)
        self.heads = nn.ModuleDict({task: nn.Linear(self.deep.out_dim, 1) for task in config.tasks})
        for table in [*embeddings.values(), *first_order.values()]:
            nn.init.normal_(table.weight, std=EMBEDDING_INIT_STD)

    def forward(self, features: dict[str, Tensor]) -> dict[str, Tensor]:
        v = torch.stack([self.embeddings[name](features[name]) for name in self.fields], dim=1)  # (B, F, d)
        first = torch.stack([self.first_order[name](features[name]) for name in self.fields], dim=1).sum(1)  # (B, T)
        fm = 0.5 * (v.sum(1).pow(2) - v.pow(2).sum(1)).sum(-1, keepdim=True)  # (B, 1)
        dense = [features[name] for name in DENSE_FEATURES]
        deep = self.deep(torch.cat([v.flatten(1)] + dense, dim=-1))  # (B, H)
        logits = first + self.bias + fm * self.fm_scale  # (B, T)
        return {
            task: torch.sigmoid(logits[:, i] + head(deep).squeeze(-1))
            for i, (task, head) in enumerate(self.heads.items())
        }

