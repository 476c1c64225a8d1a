"""Rank-aware decomposition over token sets: FM sums, first self-attention projections, flatten -> MLP."""

import pytest
import torch
from torch import nn

from service.engine import Variant, reparameterize_all

D, VOCAB = 4, 20
USER_FIELDS = ("u1", "u2", "u3")


class FieldTokens(nn.Module):
    """FM term + self-attention over field tokens + deep MLP on the flattened tokens; user fields interleaved."""

    def __init__(self) -> None:
        super().__init__()
        self.user_emb, self.item_emb = nn.Embedding(VOCAB, D), nn.Embedding(VOCAB, D)
        self.q, self.k, self.v = nn.Linear(D, D), nn.Linear(D, D), nn.Linear(D, D)
        self.mlp = nn.Linear(5 * D, 2)

    def forward(self, f: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        tokens = [self.user_emb(f["u1"]), self.user_emb(f["u2"]), self.item_emb(f["i1"]), self.user_emb(f["u3"]),
                  self.item_emb(f["i2"])]
        v = torch.stack(tokens, dim=1)  # (B, 5, D)
        fm = 0.5 * (v.sum(1).pow(2) - v.pow(2).sum(1)).sum(-1, keepdim=True)
        attention = torch.softmax(self.q(v) @ self.k(v).transpose(1, 2) / D**0.5, dim=-1) @ self.v(v)
        deep = self.mlp(v.flatten(1))
        return {"click": torch.sigmoid(fm + deep[:, :1] + attention.mean((1, 2)).unsqueeze(-1)).squeeze(-1),
                "like": torch.sigmoid(deep[:, 1])}


def _inputs(n: int, generator: torch.Generator) -> dict[str, torch.Tensor]:
    return {name: torch.randint(0, VOCAB, (1 if name in USER_FIELDS else n,), generator=generator)
            for name in ("u1", "u2", "i1", "u3", "i2")}


@pytest.fixture(scope="module")
def model_and_variants():
    torch.manual_seed(11)
    model = FieldTokens().double().eval()
    for p in model.parameters():
        nn.init.normal_(p, std=0.5)
    built = reparameterize_all(model, (_inputs(6, torch.Generator().manual_seed(1)),), USER_FIELDS)
    return model, built


@pytest.mark.parametrize("n", [1, 7, 300])
def test_token_decomposition_matches_vani_in_float64(model_and_variants, n):
    model, built = model_and_variants
    features = _inputs(n, torch.Generator().manual_seed(n))
    tiled = {k: (v.expand(n) if k in USER_FIELDS else v) for k, v in features.items()}
    with torch.no_grad():
        reference = model(tiled)
        for variant in (Variant.UOI, Variant.MARI):
            got = built[variant].module(features)
            for task in reference:
                assert (got[task] - reference[task]).abs().max().item() <= 1e-10


def test_report_names_the_pushed_ops_and_where_tokens_mix(model_and_variants):
    _, built = model_and_variants
    report = built[Variant.MARI].report
    assert report.variant == Variant.MARI
    (tokens,) = report.token_concats
    assert (tokens.user_tokens, tokens.candidate_tokens) == (3, 2)
    assert tokens.pushed_through.count("linear") == 3  # Q, K, V of user tokens, once per request
    assert tokens.pushed_through.count("sum") == 2  # FM: sum of embeddings and sum of squares
    assert any("mixes user and candidate ranks" in reason for _, reason in tokens.stopped_at)
    # the flattened tokens became a feature concat whose MLP MaRI split
    assert [c.out_features for c in report.rewritten] == [2]


def test_token_decomposition_saves_flops(model_and_variants):
    _, built = model_and_variants
    assert built[Variant.MARI].flops(1000) < built[Variant.UOI].flops(1000)
