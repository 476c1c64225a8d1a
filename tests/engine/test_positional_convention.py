"""Rankers that take several positional tensors, each mixing user and candidate columns (the DLRM convention).

facebookresearch/dlrm's `forward(dense_x, lS_o, lS_i)` takes a dense matrix [N, D] and the sparse ids of
every table; here the model takes `forward(dense_x, sparse_ids)` with one id column per table (plain
per-column `nn.Embedding` lookups `sparse_ids[:, k]`, not `embedding_bag` with offsets: folding offsets
and jagged ids is a separate engine feature). Bottom MLP on the dense features, embeddings, a dot or a
concat interaction, top MLP. The adapter builds each positional tensor by concatenating the user's and
the candidate's columns. The dense concat feeds the bottom MLP directly (MaRI splits it as any concat);
the id columns are reads of a concat, which the engine folds onto the user and candidate parts.
"""

from __future__ import annotations

import functools
import zlib

import pytest
import torch
from torch import Tensor, nn

from service.engine import Variant, reparameterize_all
from tests.engine.conftest import assert_built_with_less_arithmetic, assert_equivalent

VARIANTS = [Variant.VANI, Variant.UOI, Variant.MARI]
BUILD_N = 7
USER_DENSE, ITEM_DENSE = 5, 8
USER_VOCABS, ITEM_VOCABS = (40, 7), (60, 13, 9)  # one table per id column, user columns first
EMBEDDING_DIM = 8
BOTTOM, TOP = (32, EMBEDDING_DIM), (64, 32, 1)


def _mlp(widths: tuple[int, ...], sigmoid_last: bool = False) -> nn.Sequential:
    layers: list[nn.Module] = []
    for i, (d_in, d_out) in enumerate(zip(widths[:-1], widths[1:])):
        layers.append(nn.Linear(d_in, d_out))
        layers.append(nn.Sigmoid() if i == len(widths) - 2 and sigmoid_last else nn.ReLU())
    return nn.Sequential(*layers)


class DLRMStyle(nn.Module):
    """DLRM_Net in miniature: bot_l, emb_l, interact_features ("dot" or "cat"), top_l with a final sigmoid."""

    def __init__(self, dense_width: int, vocabs: tuple[int, ...], interaction: str) -> None:
        super().__init__()
        self.interaction = interaction
        self.bot_l = _mlp((dense_width, *BOTTOM))
        self.emb_l = nn.ModuleList(nn.Embedding(v, EMBEDDING_DIM) for v in vocabs)
        fields = len(vocabs) + 1
        top_in = EMBEDDING_DIM + (fields * (fields - 1) // 2 if interaction == "dot" else len(vocabs) * EMBEDDING_DIM)
        self.top_l = _mlp((top_in, *TOP), sigmoid_last=True)
        li, lj = zip(*[(i, j) for i in range(fields) for j in range(i)])
        self.li, self.lj = torch.tensor(li), torch.tensor(lj)

    def interact_features(self, x: Tensor, ly: list[Tensor]) -> Tensor:
        if self.interaction == "dot":
            batch_size, d = x.shape
            T = torch.cat([x] + ly, dim=1).view((batch_size, -1, d))
            Z = torch.bmm(T, torch.transpose(T, 1, 2))
            Zflat = Z[:, self.li, self.lj]
            return torch.cat([x, Zflat], dim=1)
        return torch.cat([x] + ly, dim=1)

    def forward(self, dense_x: Tensor, sparse_ids: Tensor) -> Tensor:
        x = self.bot_l(dense_x)
        ly = [emb(sparse_ids[:, k]) for k, emb in enumerate(self.emb_l)]
        return self.top_l(self.interact_features(x, ly))


class TwoTensorAdapter(nn.Module):
    """features dict -> (dense [N, D], sparse ids [N, F]), user columns first, then the model."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, features: dict[str, Tensor]) -> Tensor:
        dense = torch.cat([features["user_dense"], features["item_dense"]], dim=1)
        sparse = torch.cat([features["user_ids"], features["item_ids"]], dim=1)
        return self.model(dense, sparse)


USERS = ["user_dense", "user_ids"]


def _features(n: int, dtype: torch.dtype, generator: torch.Generator) -> dict[str, Tensor]:
    def ids(rows, vocabs):
        return torch.stack([torch.randint(0, v, (rows,), generator=generator) for v in vocabs], dim=1)

    return {
        "user_dense": torch.randn(1, USER_DENSE, generator=generator, dtype=torch.float64).to(dtype),
        "item_dense": torch.randn(n, ITEM_DENSE, generator=generator, dtype=torch.float64).to(dtype),
        "user_ids": ids(1, USER_VOCABS),
        "item_ids": ids(n, ITEM_VOCABS),
    }


@functools.cache
def built(interaction: str, dtype: torch.dtype):
    with torch.random.fork_rng():  # default (realistic) torch init, seeded per model
        torch.manual_seed(zlib.crc32(f"dlrm/{interaction}/{dtype}".encode()))
        model = DLRMStyle(USER_DENSE + ITEM_DENSE, USER_VOCABS + ITEM_VOCABS, interaction).to(dtype).eval()
    example = _features(BUILD_N, dtype, torch.Generator().manual_seed(2))
    return model, reparameterize_all(TwoTensorAdapter(model), (example,), USERS)


INTERACTIONS = ["dot", "cat"]


@pytest.mark.parametrize("n", [1, 7, 1000])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=str)
@pytest.mark.parametrize("variant", VARIANTS, ids=lambda v: v.value)
@pytest.mark.parametrize("interaction", INTERACTIONS)
def test_variant_matches_the_users_own_eager_model_on_tiled_positional_tensors(
    interaction, variant, dtype, n, generator
):
    model, results = built(interaction, dtype)
    f = _features(n, dtype, generator)
    dense = torch.cat([f["user_dense"].expand(n, -1), f["item_dense"]], dim=1)
    sparse = torch.cat([f["user_ids"].expand(n, -1), f["item_ids"]], dim=1)
    with torch.inference_mode():
        actual = results[variant].module(f)
        reference = model(dense, sparse)
    assert actual.shape == reference.shape == (n, 1)
    assert_equivalent(actual, reference, dtype)


@pytest.mark.parametrize("interaction", INTERACTIONS)
def test_every_variant_is_built_and_mari_does_less_arithmetic_than_vani(interaction):
    assert_built_with_less_arithmetic(built(interaction, torch.float32)[1])


@pytest.mark.parametrize("interaction", INTERACTIONS)
def test_mari_splits_the_bottom_mlp_and_for_concat_interaction_the_top_mlp(interaction):
    report = built(interaction, torch.float32)[1][Variant.MARI].report
    widths = {
        (c.user_width, c.candidate_width): sorted(k.out_features for k in c.consumers if k.rewritten)
        for c in report.concats
    }
    assert widths[(USER_DENSE, ITEM_DENSE)] == [BOTTOM[0]]  # the first Linear after the dense merge
    if interaction == "cat":  # [x, user embeddings, item embeddings] -> first top Linear
        assert widths[(len(USER_VOCABS) * EMBEDDING_DIM, EMBEDDING_DIM + len(ITEM_VOCABS) * EMBEDDING_DIM)] == [TOP[0]]
    # dot: [x, embeddings] viewed as tokens for the pairwise bmm, which mixes user and candidate tokens
    assert [k.op for k in report.not_rewritten] == (["view"] if interaction == "dot" else [])


@pytest.mark.parametrize("interaction", INTERACTIONS)
def test_user_id_columns_fold_to_user_only_lookups_run_once(interaction):
    results = built(interaction, torch.float32)[1]
    assert results[Variant.VANI].report.folded_slices == []
    for variant in (Variant.UOI, Variant.MARI):
        folded = [f for f in results[variant].report.folded_slices if f.op == "select"]
        assert sorted(f.columns[0] for f in folded if f.side == "user") == list(range(len(USER_VOCABS)))
        assert len(folded) == len(USER_VOCABS) + len(ITEM_VOCABS)
        lookups = [n for n in results[variant].graph_module.graph.nodes if n.target == torch.ops.aten.embedding.default]
        assert sum(1 for n in lookups if n.meta["val"].shape[0] == 1) == len(USER_VOCABS)
