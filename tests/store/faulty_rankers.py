"""Rankers with the mistakes package() must catch, as a user writes them, and build functions for
`ranker package tests/store/faulty_rankers.py:<function>`.

`Ranker` is correct as built by default (tables of vocab_size + 1 rows, logits served with scores="logit");
each argument turns on one mistake: a table one row short, logits declared as probabilities, a mean over a
history that may be empty, a score that overflows to infinity."""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from service.features.schema import FeatureSchema, FeatureSpec

ITEM_VOCAB, HISTORY_VOCAB, USER_VOCAB = 400, 20, 30
SCHEMA = FeatureSchema((
    FeatureSpec("user_id", "user", "sparse_id", vocab_size=USER_VOCAB),
    FeatureSpec("history", "user", "id_sequence", vocab_size=HISTORY_VOCAB, max_len=5),
    FeatureSpec("item_id", "item", "sparse_id", vocab_size=ITEM_VOCAB),
    FeatureSpec("item_dense", "item", "dense", dim=3),
))


class Ranker(nn.Module):
    """User id, a pooled history and the item: one logit per candidate ([N]), or its sigmoid."""

    def __init__(self, item_rows: int = ITEM_VOCAB + 1, history_rows: int = HISTORY_VOCAB + 1,
                 probability: bool = False, mean_history: bool = False, overflow: bool = False) -> None:
        super().__init__()
        self.user_table = nn.Embedding(USER_VOCAB + 1, 4)
        self.history_table = nn.Embedding(history_rows, 4, padding_idx=0)
        self.item_table = nn.Embedding(item_rows, 4)
        self.dense = nn.Linear(3, 4)
        self.probability, self.mean_history, self.overflow = probability, mean_history, overflow

    def forward(self, features: dict[str, torch.Tensor]) -> torch.Tensor:
        history = self.history_table(features["history"]).sum(1)  # [N, 4]
        if self.mean_history:  # 0 / 0 on an empty history: NaN
            history = history / (features["history"] != 0).sum(1, keepdim=True)
        user = self.user_table(features["user_id"]) + history
        item = self.item_table(features["item_id"]) + self.dense(features["item_dense"])
        logit = 3.0 * (user * item).sum(1)  # [N]
        if self.overflow:
            logit = torch.exp(1e4 * logit.abs() + 100.0)  # inf in float32
        return torch.sigmoid(logit) if self.probability else logit


def example(seed: int = 0) -> dict[str, torch.Tensor]:
    return SCHEMA.example_batch(8, torch.Generator().manual_seed(seed))


def logits_without_scores() -> dict[str, Any]:
    """A logit model whose build function forgets scores="logit": the CLI's --logits must be the fix."""
    torch.manual_seed(0)
    return {"model": Ranker().eval(), "example_features": example(), "schema": SCHEMA, "tasks": ["click"]}


def infinite_logits() -> dict[str, Any]:
    """A model whose scores overflow to infinity: refused even with --logits."""
    torch.manual_seed(0)
    return {"model": Ranker(overflow=True).eval(), "example_features": example(), "schema": SCHEMA,
            "tasks": ["click"]}
