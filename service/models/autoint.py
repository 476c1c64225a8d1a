"""AutoInt-style multi-task ranker: every feature is a token, self-attention layers learn the interactions.

    tokens = stack(user field embs, user_dense token, item field embs, item_dense token, cross_dense token)  (B, F, d)
    2 x [multi-head self-attention (Linear Q/K/V, softmax(Q K^T / sqrt(dk)) V) + ReLU(attn + W_res x)]
    flatten -> one MLP + sigmoid tower per task.
Dense vectors become tokens through a Linear (the usual AutoInt treatment of numerical features).
The attention is written out with plain Linear/matmul/softmax, not nn.MultiheadAttention, so the
captured graph stays plain ATen.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from service.models.catalog import ITEM_FIELDS, USER_FIELDS, CatalogConfig
from service.models.layers import OOVEmbedding, TaskTowers


@dataclass(frozen=True)
class AutoIntConfig(CatalogConfig):
    """Every size of the AutoInt ranker (features and vocabularies from service.models.catalog)."""

    embedding_dim: int = 16  # token width d
    user_dense_dim: int = 32
    num_layers: int = 2
    num_heads: int = 2
    head_dim: int = 16
    tower_dims: tuple[int, ...] = (64,)

    def __post_init__(self) -> None:
        super().__post_init__()
        if min(self.embedding_dim, self.num_layers, self.num_heads, self.head_dim) < 1:
            raise ValueError("embedding_dim, num_layers, num_heads and head_dim must be >= 1")


class SelfAttentionLayer(nn.Module):
    """AutoInt interacting layer: multi-head self-attention over tokens with a projected residual."""

    def __init__(self, in_dim: int, num_heads: int, head_dim: int) -> None:
        super().__init__()
        out_dim = num_heads * head_dim
        self.num_heads, self.head_dim = num_heads, head_dim
        self.query = nn.Linear(in_dim, out_dim)
        self.key = nn.Linear(in_dim, out_dim)
        self.value = nn.Linear(in_dim, out_dim)
        self.residual = nn.Linear(in_dim, out_dim)
        self.scale = 1.0 / math.sqrt(head_dim)
        self.out_dim = out_dim

    def _heads(self, x: Tensor) -> Tensor:
        return torch.unflatten(x, -1, (self.num_heads, self.head_dim)).transpose(1, 2)  # (B, H, F, dk)

    def forward(self, x: Tensor) -> Tensor:
        """x (B, F, in_dim) -> (B, F, H * dk)."""
        q, k, v = self._heads(self.query(x)), self._heads(self.key(x)), self._heads(self.value(x))
        weights = torch.softmax(torch.matmul(q, k.transpose(-2, -1)) * self.scale, dim=-1)  # (B, H, F, F)
        attended = torch.matmul(weights, v).transpose(1, 2).flatten(2)  # (B, F, H * dk)
        return torch.relu(attended + self.residual(x))


class AutoIntRanker(nn.Module):
    """Dict of feature tensors (all at batch B) -> dict task -> sigmoid score [B]."""

    def __init__(self, config: AutoIntConfig) -> None:
        super().__init__()
        self.config = config
        specs = {spec.name: spec for spec in config.schema().features}
        d = config.embedding_dim
        self.embeddings = nn.ModuleDict(
            {name: OOVEmbedding(specs[name].vocab_size, d) for name in USER_FIELDS + ITEM_FIELDS}
        )
        self.user_dense = nn.Linear(config.user_dense_dim, d)
        self.item_dense = nn.Linear(config.item_dense_dim, d)
        self.cross_dense = nn.Linear(config.cross_dense_dim, d)
        layers: list[SelfAttentionLayer] = []
        width = d
        for _ in range(config.num_layers):
            layers.append(SelfAttentionLayer(width, config.num_heads, config.head_dim))
            width = layers[-1].out_dim
        self.layers = nn.ModuleList(layers)
        num_tokens = len(USER_FIELDS) + len(ITEM_FIELDS) + 3
        self.towers = TaskTowers(num_tokens * width, config.tower_dims, config.tasks)

    def forward(self, features: dict[str, Tensor]) -> dict[str, Tensor]:
        user_tokens = [self.embeddings[name](features[name]) for name in USER_FIELDS]
        user_tokens.append(self.user_dense(features["user_dense"]))
        item_tokens = [self.embeddings[name](features[name]) for name in ITEM_FIELDS]
        item_tokens += [self.item_dense(features["item_dense"]), self.cross_dense(features["cross_dense"])]
        x = torch.stack(user_tokens + item_tokens, dim=1)  # (B, F, d)
        for layer in self.layers:
            x = layer(x)
        flat = x.flatten(1)  # (B, F * H * dk)
        scores: dict[str, Tensor] = self.towers({task: flat for task in self.config.tasks})
        return scores

