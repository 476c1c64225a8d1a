"""The jagged fold on plain PyTorch: nn.EmbeddingBag over a user's fixed-width bag of ids (offsets built from the
batch size) becomes one lookup per request in every pooling mode; offsets read from input data stay as captured."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from service.engine import Variant, reparameterize_all
from service.engine.graph_tools import aten, depends_on, shape_exprs
from tests.engine.conftest import assert_equivalent

USER_SLOTS, VOCAB, DIM = 6, 50, 8
LOOKUPS = (
    aten.embedding.default,
    aten.embedding_bag.default,
    aten.embedding_bag.padding_idx,
    aten._embedding_bag.default,
)


class BagRanker(nn.Module):
    """A user's recent ids pooled by nn.EmbeddingBag (2-D input: torch builds offsets = arange(0, B*L, L))."""

    def __init__(self, mode: str, padding_idx: int | None, weighted: bool) -> None:
        super().__init__()
        self.weighted = weighted
        self.bag = nn.EmbeddingBag(VOCAB, DIM, mode=mode, padding_idx=padding_idx)
        self.item = nn.Embedding(VOCAB, DIM)
        self.mlp = nn.Sequential(nn.Linear(2 * DIM, 16), nn.ReLU(), nn.Linear(16, 1))

    def forward(self, user_recent: Tensor, user_recent_weights: Tensor, item_id: Tensor) -> Tensor:
        weights = user_recent_weights if self.weighted else None
        pooled = self.bag(user_recent, per_sample_weights=weights)
        x = torch.cat([pooled, self.item(item_id)], dim=-1)
        return torch.sigmoid(self.mlp(x)).squeeze(-1)


class DataLengthsRanker(nn.Module):
    """F.embedding_bag with lengths read from the ids (`ids >= 0`: one per slot on every input, but only the
    data says so). The offsets are a ramp on every example, yet they are not a function of the batch size."""

    def __init__(self) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.empty(VOCAB, DIM))
        self.item = nn.Embedding(VOCAB, DIM)
        self.out = nn.Linear(2 * DIM, 1)

    def forward(self, user_recent: Tensor, user_recent_weights: Tensor, item_id: Tensor) -> Tensor:
        lengths = (user_recent >= 0).sum(1)
        offsets = torch.cat([lengths.new_zeros(1), lengths.cumsum(0)])
        pooled = F.embedding_bag(user_recent.reshape(-1), self.weight, offsets, mode="sum", include_last_offset=True)
        return torch.sigmoid(self.out(torch.cat([pooled, self.item(item_id)], dim=-1))).squeeze(-1)


def _inputs(n: int, generator: torch.Generator, padded: bool) -> dict[str, Tensor]:
    low = 1 if padded else 0
    recent = torch.randint(low, VOCAB, (1, USER_SLOTS), generator=generator)
    if padded:
        recent[0, generator.initial_seed() % USER_SLOTS :] = 0  # some trailing slots empty
    return {
        "user_recent": recent,
        "user_recent_weights": torch.rand(1, USER_SLOTS, generator=generator),
        "item_id": torch.randint(0, VOCAB, (n,), generator=generator),
    }


def _randomized(model: nn.Module, generator: torch.Generator) -> nn.Module:
    with torch.no_grad():
        for p in model.parameters():
            p.normal_(0.0, 0.5, generator=generator)
    return model.eval()


def _user_bag_lookups(result, variant_batch) -> list[tuple]:
    rows = []
    for node in result.graph_module.graph.nodes:
        if node.target in LOOKUPS:
            value = node.meta["val"]
            out = value[0] if isinstance(value, (tuple, list)) else value
            rows.append((node.target, shape_exprs(out)[0]))
    return rows


@pytest.mark.parametrize(
    "mode, padding_idx, weighted",
    [
        ("sum", None, False),
        ("mean", None, False),
        ("max", None, False),
        ("sum", None, True),
        ("sum", 0, False),
        ("mean", 0, False),
    ],
)
def test_embedding_bag_of_a_user_bag_runs_once_and_matches_the_eager_model(mode, padding_idx, weighted, generator):
    model = _randomized(BagRanker(mode, padding_idx, weighted), generator)
    padded = padding_idx is not None
    example = _inputs(7, generator, padded)
    built = reparameterize_all(model, (), ["user_recent", "user_recent_weights"], example_kwargs=example)
    for variant, result in built.items():
        assert (result.report.variant, result.report.fallback_reason) == (variant, None)
        for n in (1, 7, 1000):
            values = _inputs(n, generator, padded)
            tiled = {k: v.expand(n, *v.shape[1:]) if k.startswith("user") else v for k, v in values.items()}
            with torch.inference_mode():
                actual = result.module(**values)
            with torch.no_grad():
                reference = model(**tiled)
            assert_equivalent(actual, reference, torch.float32)
    for variant in (Variant.UOI, Variant.MARI):
        result = built[variant]
        assert any(f.op == "embedding_bag" for f in result.report.jagged), result.report.jagged
        lookups = _user_bag_lookups(result, result.batch)
        # the user's bag: one plain lookup of its USER_SLOTS ids per request; the item: N rows
        assert (aten.embedding.default, USER_SLOTS) in lookups, lookups
        assert not any(t != aten.embedding.default for t, _ in lookups), lookups
        assert sum(depends_on(rows, result.batch) for _, rows in lookups) == 1


def test_max_pooling_with_a_padding_index_is_left_as_captured(generator):
    # empty slots are excluded from the max; the fold keeps embedding_bag rather than guess the empty-bag value
    model = _randomized(BagRanker("max", 0, False), generator)
    example = _inputs(7, generator, True)
    built = reparameterize_all(model, (), ["user_recent", "user_recent_weights"], example_kwargs=example)
    report = built[Variant.UOI].report
    assert report.fallback_reason is None
    assert not any(f.op == "embedding_bag" for f in report.jagged)


def test_offsets_read_from_input_data_are_not_folded_even_when_they_are_a_ramp(generator):
    model = _randomized(DataLengthsRanker(), generator)
    example = _inputs(7, generator, False)
    built = reparameterize_all(model, (), ["user_recent", "user_recent_weights"], example_kwargs=example)
    for variant, result in built.items():
        assert (result.report.variant, result.report.fallback_reason) == (variant, None)
        assert not any(f.op == "embedding_bag" for f in result.report.jagged)
        values = _inputs(1000, generator, False)
        tiled = {k: v.expand(1000, *v.shape[1:]) if k.startswith("user") else v for k, v in values.items()}
        with torch.inference_mode():
            actual = result.module(**values)
        with torch.no_grad():
            assert_equivalent(actual, model(**tiled), torch.float32)
