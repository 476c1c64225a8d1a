"""Rankers that take ONE flat float tensor whose columns are features (the DeepCTR-Torch convention).

The models are written here the way those libraries write them: `forward(self, X)` reads column ranges
`X[:, s:e]` from a `feature_index` dict, index lists `X[:, [3, 7, 9]]`, `index_select` and `X[:, k]`, casts
id columns with `.long()`, looks them up and runs a DNN. The user wraps the model in the thinnest adapter:
a module taking the service's features dict that `torch.cat`s the entries in the model's column order
(ids cast to the model's float dtype). User and candidate columns are interleaved in X, so only the fold
of concat reads (service/engine/fold_concat_slices.py) lets UOI compute user columns once and MaRI split
the first Linear after the merge.

Every variant is checked against the user's own eager model on X built from tiled user features.
"""

from __future__ import annotations

import functools
import zlib
from collections import OrderedDict

import pytest
import torch
from torch import Tensor, nn

from service.engine import Variant, reparameterize_all
from tests.engine.conftest import assert_built_with_less_arithmetic, assert_equivalent

VARIANTS = [Variant.VANI, Variant.UOI, Variant.MARI]
BUILD_N = 7

# (name, user-side, kind, width or vocab): the flat tensor's columns, in the model's (interleaved) order.
DEEPCTR_COLUMNS = (
    ("user_id", True, "sparse", 50),
    ("item_id", False, "sparse", 40),
    ("user_age", True, "dense", 1),
    ("item_price", False, "dense", 2),
    ("user_city", True, "sparse", 12),
    ("item_category", False, "sparse", 9),
    ("user_ctr", True, "dense", 3),
    ("cross_score", False, "dense", 1),
)
WIDE_DEEP_COLUMNS = (
    ("item_id", False, "sparse", 30),
    ("user_dense", True, "dense", 3),
    ("user_id", True, "sparse", 25),
    ("item_dense", False, "dense", 2),
    ("user_gender", True, "sparse", 3),
    ("item_brand", False, "sparse", 11),
    ("cross_dense", False, "dense", 2),
    ("user_recency", True, "dense", 1),
)


def _feature_index(columns) -> OrderedDict[str, tuple[int, int]]:
    """DeepCTR's build_input_features: name -> (start, end) column range of X."""
    index, start = OrderedDict(), 0
    for name, _, kind, size in columns:
        width = 1 if kind == "sparse" else size
        index[name] = (start, start + width)
        start += width
    return index


class DeepCTRStyleDNN(nn.Module):
    """DeepCTR-Torch's BaseModel/DNN shape: linear logit (sparse weights + dense matmul) + DNN logit."""

    def __init__(self, columns, embedding_dim: int = 4, hidden: tuple[int, ...] = (32, 16)) -> None:
        super().__init__()
        self.feature_index = _feature_index(columns)
        self.sparse = [name for name, _, kind, _ in columns if kind == "sparse"]
        self.dense = [name for name, _, kind, _ in columns if kind == "dense"]
        vocab = {name: size for name, _, kind, size in columns if kind == "sparse"}
        dense_width = sum(size for _, _, kind, size in columns if kind == "dense")
        self.embedding_dict = nn.ModuleDict({n: nn.Embedding(vocab[n], embedding_dim) for n in self.sparse})
        self.linear_embedding_dict = nn.ModuleDict({n: nn.Embedding(vocab[n], 1) for n in self.sparse})
        self.linear_weight = nn.Parameter(torch.randn(dense_width, 1) * 0.1)
        layers, d_in = [], len(self.sparse) * embedding_dim + dense_width
        for width in hidden:
            layers += [nn.Linear(d_in, width), nn.ReLU()]
            d_in = width
        self.dnn = nn.Sequential(*layers)
        self.dnn_linear = nn.Linear(d_in, 1, bias=False)
        self.out_bias = nn.Parameter(torch.randn(1) * 0.1)

    def _columns(self, X: Tensor, name: str) -> Tensor:
        start, end = self.feature_index[name]
        return X[:, start:end]

    def forward(self, X: Tensor) -> Tensor:
        sparse_embedding_list = [self.embedding_dict[n](self._columns(X, n).long()) for n in self.sparse]  # [N, 1, E]
        dense_value_list = [self._columns(X, n) for n in self.dense]
        linear_sparse = [self.linear_embedding_dict[n](self._columns(X, n).long()) for n in self.sparse]
        linear_logit = torch.sum(torch.cat(linear_sparse, dim=-1), dim=-1, keepdim=False)
        linear_logit = linear_logit + torch.cat(dense_value_list, dim=-1).matmul(self.linear_weight)
        sparse_dnn_input = torch.flatten(torch.cat(sparse_embedding_list, dim=-1), start_dim=1)
        dense_dnn_input = torch.flatten(torch.cat(dense_value_list, dim=-1), start_dim=1)
        dnn_input = torch.cat([sparse_dnn_input, dense_dnn_input], dim=-1)
        dnn_logit = self.dnn_linear(self.dnn(dnn_input))
        return torch.sigmoid(linear_logit + dnn_logit + self.out_bias)


class WideDeepIndexLists(nn.Module):
    """Wide & deep reading X by index lists: a Linear over `X[:, wide_columns]` (a Python list, fragmented
    across user and candidate columns), ids by `index_select` with a buffer then `ids[:, k]`, dense columns
    by another list; embeddings and dense columns feed a DNN."""

    def __init__(self, columns, embedding_dim: int = 5, hidden: tuple[int, ...] = (24, 12)) -> None:
        super().__init__()
        index = _feature_index(columns)
        sparse = [name for name, _, kind, _ in columns if kind == "sparse"]
        dense_cols = [c for name, _, kind, _ in columns if kind == "dense" for c in range(*index[name])]
        self.wide_columns = sorted(dense_cols, key=lambda c: (c * 7) % 11)  # fragmented: u, c, u, c, ...
        self.dense_columns = dense_cols[::-1]
        self.register_buffer("id_columns", torch.tensor([index[n][0] for n in sparse]))
        vocab = [size for _, _, kind, size in columns if kind == "sparse"]
        self.embeddings = nn.ModuleList(nn.Embedding(v, embedding_dim) for v in vocab)
        self.wide = nn.Linear(len(self.wide_columns), 1)
        widths = (len(sparse) * embedding_dim + len(dense_cols), *hidden)
        layers: list[nn.Module] = []
        for d_in, d_out in zip(widths[:-1], widths[1:]):
            layers += [nn.Linear(d_in, d_out), nn.ReLU()]
        self.deep = nn.Sequential(*layers, nn.Linear(widths[-1], 1))

    def forward(self, X: Tensor) -> Tensor:
        wide = self.wide(X[:, self.wide_columns])
        ids = torch.index_select(X, 1, self.id_columns).long()
        embedded = [emb(ids[:, k]) for k, emb in enumerate(self.embeddings)]
        deep = self.deep(torch.cat([*embedded, X[:, self.dense_columns]], dim=1))
        return torch.sigmoid(wide + deep).squeeze(1)


class FlatTensorAdapter(nn.Module):
    """What a user writes to serve such a model: features dict -> X in the model's column order."""

    def __init__(self, model: nn.Module, column_order: list[str]) -> None:
        super().__init__()
        self.model = model
        self.column_order = column_order

    def forward(self, features: dict[str, Tensor]) -> Tensor:
        first = self.model.dnn_linear if hasattr(self.model, "dnn_linear") else self.model.wide
        dtype = first.weight.dtype
        return self.model(torch.cat([features[name].to(dtype) for name in self.column_order], dim=1))


MODELS = {
    "deepctr": (DeepCTRStyleDNN, DEEPCTR_COLUMNS, 32),  # 32: width of the DNN's first Linear
    "wide_deep_index_lists": (WideDeepIndexLists, WIDE_DEEP_COLUMNS, 24),
}


def _features(columns, n: int, dtype: torch.dtype, generator: torch.Generator) -> dict[str, Tensor]:
    out = {}
    for name, user, kind, size in columns:
        rows = 1 if user else n
        if kind == "sparse":
            out[name] = torch.randint(0, size, (rows, 1), generator=generator)
        else:
            out[name] = torch.randn(rows, size, generator=generator, dtype=torch.float64).to(dtype)
    return out


def _tiled_x(columns, features: dict[str, Tensor], n: int, dtype: torch.dtype) -> Tensor:
    return torch.cat([features[name].to(dtype).expand(n, -1) for name, *_ in columns], dim=1)


@functools.cache
def built(model_name: str, dtype: torch.dtype):
    cls, columns, _ = MODELS[model_name]
    with torch.random.fork_rng():  # default (realistic) torch init, seeded per model
        torch.manual_seed(zlib.crc32(f"{model_name}/{dtype}".encode()))
        model = cls(columns).to(dtype).eval()
    adapter = FlatTensorAdapter(model, [name for name, *_ in columns])
    generator = torch.Generator().manual_seed(1)
    example = _features(columns, BUILD_N, dtype, generator)
    users = [name for name, user, *_ in columns if user]
    return model, reparameterize_all(adapter, (example,), users)


@pytest.mark.parametrize("n", [1, 7, 1000])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=str)
@pytest.mark.parametrize("variant", VARIANTS, ids=lambda v: v.value)
@pytest.mark.parametrize("model_name", list(MODELS))
def test_variant_matches_the_users_own_eager_model_on_the_tiled_flat_tensor(model_name, variant, dtype, n, generator):
    model, results = built(model_name, dtype)
    columns = MODELS[model_name][1]
    features = _features(columns, n, dtype, generator)
    with torch.inference_mode():
        actual = results[variant].module(features)
        reference = model(_tiled_x(columns, features, n, dtype))
    assert actual.shape == reference.shape
    assert_equivalent(actual, reference, dtype)


@pytest.mark.parametrize("model_name", list(MODELS))
def test_every_variant_is_built_and_mari_does_less_arithmetic_than_vani(model_name):
    assert_built_with_less_arithmetic(built(model_name, torch.float32)[1])


@pytest.mark.parametrize("model_name", list(MODELS))
def test_mari_splits_the_first_linear_after_the_merge(model_name):
    first_width = MODELS[model_name][2]
    report = built(model_name, torch.float32)[1][Variant.MARI].report
    split = [(c, k) for c in report.concats for k in c.consumers if k.rewritten]
    assert any(k.op == "linear" and k.out_features == first_width for _, k in split), report.to_dict()["concats"]
    for concat, _ in split:
        assert concat.user_width > 0 and concat.candidate_width > 0
    # DeepCTR's linear logit sums the 1-wide per-feature embeddings over the concat axis: no matmul to split
    assert [k.op for k in report.not_rewritten] == (["sum"] if model_name == "deepctr" else [])
    assert "folded_slices" in report.to_dict()


@pytest.mark.parametrize("model_name", list(MODELS))
def test_user_columns_are_folded_to_user_only_reads_and_looked_up_once(model_name):
    results = built(model_name, torch.float32)[1]
    assert results[Variant.VANI].report.folded_slices == []  # VanI is the captured graph, untouched
    for variant in (Variant.UOI, Variant.MARI):
        folded = results[variant].report.folded_slices
        assert {"user", "candidate"} <= {f.side for f in folded}
        graph = results[variant].graph_module.graph
        embeddings = [n for n in graph.nodes if n.target == torch.ops.aten.embedding.default]
        at_batch_1 = [n for n in embeddings if n.meta["val"].shape[0] == 1]
        n_user_sparse = sum(1 for _, user, kind, _ in MODELS[model_name][1] if user and kind == "sparse")
        assert len(at_batch_1) >= n_user_sparse


def test_vani_graph_is_the_captured_graph_and_reads_the_flat_tensor():
    vani = built("deepctr", torch.float32)[1][Variant.VANI].graph_module.graph
    cats = [n for n in vani.nodes if n.target == torch.ops.aten.cat.default]
    slices_of_cat = [n for n in vani.nodes if n.target == torch.ops.aten.slice.Tensor and n.args[0] in cats]
    assert slices_of_cat  # nothing folded in VanI
