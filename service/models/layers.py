"""Small building blocks shared by the rankers: OOV-safe embeddings, MLPs, sequence pooling, target attention."""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from service.features.schema import PADDING_ID

# Finite (not -inf) so a fully padded row gives a uniform softmax instead of NaN, in fp32 and fp64.
MASKED_SCORE = -1e9


class OOVEmbedding(nn.Embedding):
    """Embedding with vocab_size + 1 rows; ids outside [0, vocab_size) read the OOV row `vocab_size`."""

    def __init__(self, vocab_size: int, dim: int) -> None:
        super().__init__(vocab_size + 1, dim)
        self.vocab_size = vocab_size

    def forward(self, ids: Tensor) -> Tensor:
        in_vocab = (ids >= 0) & (ids < self.vocab_size)
        return super().forward(torch.where(in_vocab, ids, torch.full_like(ids, self.vocab_size)))


class MLP(nn.Sequential):
    """Linear + ReLU layers; `dims` are the output widths, ReLU after every layer."""

    def __init__(self, in_dim: int, dims: tuple[int, ...]) -> None:
        layers: list[nn.Module] = []
        for width in dims:
            layers += [nn.Linear(in_dim, width), nn.ReLU()]
            in_dim = width
        super().__init__(*layers)
        self.out_dim = in_dim


def padding_mask(sequence_ids: Tensor) -> Tensor:
    """True where the sequence holds a real id. [B, L] bool."""
    return sequence_ids != PADDING_ID


def masked_mean(values: Tensor, mask: Tensor) -> Tensor:
    """Mean of values [B, L, E] over the positions where mask [B, L] is True; 0 for an empty row."""
    weights = mask.to(values.dtype).unsqueeze(-1)  # (B, L, 1)
    counts = weights.sum(dim=1).clamp(min=1.0)  # (B, 1)
    return (values * weights).sum(dim=1) / counts


class TargetAttention(nn.Module):
    """DIN-style attention of the candidate item over the user's behaviour sequence."""

    def __init__(self, query_dim: int, key_dim: int, attention_dim: int) -> None:
        super().__init__()
        self.query = nn.Linear(query_dim, attention_dim)
        self.key = nn.Linear(key_dim, attention_dim)
        self.value = nn.Linear(key_dim, attention_dim)
        self.scale = 1.0 / math.sqrt(attention_dim)
        self.out_dim = attention_dim

    def forward(self, candidate: Tensor, sequence: Tensor, mask: Tensor) -> Tensor:
        """candidate [B, Q], sequence [B, L, K], mask [B, L] -> [B, A]."""
        q = self.query(candidate).unsqueeze(1)  # (B, 1, A)
        k = self.key(sequence)  # (B, L, A)
        v = self.value(sequence)  # (B, L, A)
        scores = torch.matmul(q, k.transpose(1, 2)) * self.scale  # (B, 1, L)
        scores = scores.masked_fill(~mask.unsqueeze(1), MASKED_SCORE)
        weights = torch.softmax(scores, dim=-1)
        return torch.matmul(weights, v).squeeze(1)  # (B, A)


class TaskTowers(nn.Module):
    """One MLP + sigmoid head per task; returns task -> score [B]."""

    def __init__(self, in_dim: int, hidden: tuple[int, ...], tasks: tuple[str, ...]) -> None:
        super().__init__()
        self.towers = nn.ModuleDict()
        for task in tasks:
            body = MLP(in_dim, hidden)
            self.towers[task] = nn.Sequential(body, nn.Linear(body.out_dim, 1))

    def forward(self, inputs: dict[str, Tensor]) -> dict[str, Tensor]:
        return {task: torch.sigmoid(tower(inputs[task])).squeeze(-1) for task, tower in self.towers.items()}
