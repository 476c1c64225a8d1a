"""BST/DIEN-style behaviour encoders captured directly (no store): a candidate query attending over the user's
history with nn.MultiheadAttention, with and without a GRU before it. Every variant is built (a GRU once fixed
the candidate batch to the trace's rows while its op was fake-run, so no variant ran at another N) and scores
like the eager model at 1 and 7 candidates."""

from __future__ import annotations

import pytest
import torch
from torch import Tensor, nn

from service.engine import Variant, reparameterize_all
from service.engine.equivalence import LOGITS, max_difference

HISTORY, WIDTH, HEADS = 5, 8, 2
BUILD_CANDIDATES = 8


class TargetAttentionRanker(nn.Module):
    """Each candidate attends over the user's history (user-side keys and values); `evolve` puts a GRU first."""

    def __init__(self, evolve: bool) -> None:
        super().__init__()
        self.gru = nn.GRU(WIDTH, WIDTH, batch_first=True) if evolve else None
        self.attention = nn.MultiheadAttention(WIDTH, HEADS, batch_first=True)
        self.head = nn.Linear(WIDTH + WIDTH, 1)

    def forward(self, history: Tensor, item: Tensor) -> Tensor:
        keys = self.gru(history)[0] if self.gru is not None else history  # [B, HISTORY, WIDTH]
        query = item[:, None, :]  # [B, 1, WIDTH]
        attended, _ = self.attention(query, keys, keys)  # [B, 1, WIDTH]
        return self.head(torch.cat([attended.squeeze(1), item], dim=1)).squeeze(1)  # [B]


def _inputs(n: int, generator: torch.Generator) -> tuple[Tensor, Tensor]:
    return torch.randn(1, HISTORY, WIDTH, generator=generator), torch.randn(n, WIDTH, generator=generator)


@pytest.mark.parametrize("evolve", [False, True], ids=["attention", "gru_then_attention"])
def test_multihead_attention_over_user_history_builds_every_variant_and_scores_like_eager(evolve: bool) -> None:
    torch.manual_seed(17 + evolve)  # fresh random weights
    model = TargetAttentionRanker(evolve).eval()
    built = reparameterize_all(model, _inputs(BUILD_CANDIDATES, torch.Generator().manual_seed(1)), ["history"])
    for variant in Variant:
        assert (built[variant].report.variant, built[variant].report.fallback_reason) == (variant, None)
    for n in (1, 7):
        history, item = _inputs(n, torch.Generator().manual_seed(100 + n))
        with torch.no_grad():
            eager = model(history.expand(n, -1, -1), item)
            for variant in Variant:
                scores = built[variant].module(history, item)
                assert scores.shape == (n,), (variant, n)
                assert max_difference(scores, eager) <= LOGITS.bound(eager), (variant, n)
