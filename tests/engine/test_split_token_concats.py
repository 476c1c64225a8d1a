"""split_token_concats (docs/ARCHITECTURE.md section 2, step 5) on a tiny captured token set: which ops the
user/candidate token concat is pushed through, where token mixing stops it, and that scores do not change."""

from __future__ import annotations

import torch
from torch import Tensor, nn

from service.engine.colouring import Colour, colour_graph
from service.engine.split_token_concats import split_token_concats
from tests.engine.captured import PassInput, pass_input

aten = torch.ops.aten
D, VOCAB = 4, 10


class TokenSet(nn.Module):
    """A user token and a candidate token: a Linear per token summed over tokens, and token-by-token scores."""

    def __init__(self) -> None:
        super().__init__()
        self.user_emb, self.item_emb = nn.Embedding(VOCAB, D), nn.Embedding(VOCAB, D)
        self.proj = nn.Linear(D, D)

    def forward(self, user: Tensor, item: Tensor) -> Tensor:
        tokens = torch.stack([self.user_emb(user), self.item_emb(item)], dim=1)  # (B, 2, D)
        pooled = self.proj(tokens).sum(1)  # (B, D)
        mixed = tokens @ tokens.transpose(1, 2)  # (B, 2, 2): user x candidate scores
        return pooled.sum(-1) + mixed.sum((1, 2))


def _ids(n: int) -> tuple[Tensor, Tensor]:
    return torch.randint(0, VOCAB, (1,)), torch.randint(0, VOCAB, (n,))


def _captured() -> PassInput:
    return pass_input(TokenSet(), _ids(4), ["user"])


def test_report_counts_tokens_per_side_and_names_the_ops_pushed_through():
    captured = _captured()
    (report,) = split_token_concats(captured.graph_module, captured.users, captured.batch)
    assert (report.user_tokens, report.candidate_tokens) == (1, 1)
    assert report.pushed_through == ["linear", "sum"]


def test_ops_that_mix_tokens_stop_the_push_with_the_reason():
    captured = _captured()
    (report,) = split_token_concats(captured.graph_module, captured.users, captured.batch)
    reasons = [reason for _, reason in report.stopped_at]
    assert any("mixes user and candidate ranks" in r for r in reasons)  # tokens @ tokens^T
    assert any("not row-wise over tokens" in r for r in reasons)  # the transpose


def test_the_user_token_is_projected_and_summed_on_its_own():
    captured = _captured()
    split_token_concats(captured.graph_module, captured.users, captured.batch)
    colours = colour_graph(captured.graph_module.graph, captured.users, captured.batch)
    assert [colours[n] for n in captured.nodes(aten.linear.default)].count(Colour.USER) == 1
    assert [colours[n] for n in captured.nodes(aten.sum.dim_IntList)].count(Colour.USER) == 1


def test_pushing_the_concat_down_does_not_change_the_scores():
    captured = _captured()
    user, item = _ids(6)
    with torch.no_grad():
        before = captured.graph_module(user, item)
        split_token_concats(captured.graph_module, captured.users, captured.batch)
        after = captured.graph_module(user, item)
    torch.testing.assert_close(after, before)
