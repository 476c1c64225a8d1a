import random

import pytest
import torch

from service.training.auc import roc_auc


def _pairwise_auc(labels: list[int], scores: list[float]) -> float:
    positives = [s for s, y in zip(scores, labels) if y == 1]
    negatives = [s for s, y in zip(scores, labels) if y == 0]
    wins = sum(1.0 if p > n else 0.5 if p == n else 0.0 for p in positives for n in negatives)
    return wins / (len(positives) * len(negatives))


def test_perfect_reversed_and_constant_scores() -> None:
    labels = torch.tensor([0, 0, 1, 1])
    assert roc_auc(labels, torch.tensor([0.1, 0.2, 0.8, 0.9])) == 1.0
    assert roc_auc(labels, torch.tensor([0.9, 0.8, 0.2, 0.1])) == 0.0
    assert roc_auc(labels, torch.full((4,), 0.5)) == 0.5


def test_auc_matches_the_pairwise_definition_with_ties() -> None:
    rng = random.Random(0)
    for _ in range(30):
        n = rng.randint(2, 40)
        labels = [rng.randint(0, 1) for _ in range(n)]
        labels[0], labels[1] = 0, 1
        scores = [rng.choice([0.1, 0.2, 0.3, rng.random()]) for _ in range(n)]
        assert roc_auc(torch.tensor(labels), torch.tensor(scores)) == pytest.approx(_pairwise_auc(labels, scores))


def test_auc_needs_both_classes_and_binary_labels() -> None:
    with pytest.raises(ValueError, match="both classes"):
        roc_auc(torch.ones(5), torch.rand(5))
    with pytest.raises(ValueError, match="0 or 1"):
        roc_auc(torch.tensor([0.0, 1.0, 2.0]), torch.rand(3))
