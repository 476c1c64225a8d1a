"""Rank-based ROC AUC (Mann-Whitney U), ties counted as half; no sklearn."""

from __future__ import annotations

import torch
from torch import Tensor


def roc_auc(labels: Tensor, scores: Tensor) -> float:
    """Probability that a random positive scores above a random negative (ties count 1/2)."""
    labels = labels.reshape(-1).to(torch.float64)
    scores = scores.reshape(-1).to(torch.float64)
    if labels.shape != scores.shape:
        raise ValueError(f"labels {tuple(labels.shape)} and scores {tuple(scores.shape)} differ in size")
    n_pos = int((labels == 1).sum())
    n_neg = int((labels == 0).sum())
    if n_pos + n_neg != labels.numel():
        raise ValueError("labels must be 0 or 1")
    if n_pos == 0 or n_neg == 0:
        raise ValueError(f"AUC needs both classes, got {n_pos} positives and {n_neg} negatives")
    return (_average_ranks(scores)[labels == 1].sum().item() - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg)


def _average_ranks(values: Tensor) -> Tensor:
    """1-based ranks, tied values sharing the mean of their ranks."""
    sorted_values, order = torch.sort(values, stable=True)
    _, inverse, counts = torch.unique_consecutive(sorted_values, return_inverse=True, return_counts=True)
    last_rank = torch.cumsum(counts, 0).to(torch.float64)  # rank of the last element of each tie group
    group_rank = last_rank - (counts.to(torch.float64) - 1) / 2
    ranks = torch.empty_like(values)
    ranks[order] = group_rank[inverse]
    return ranks
