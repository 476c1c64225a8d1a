"""Rankers written the way public libraries write them, with the adapter a user of this service writes.

- `deepctr_dcn_matrix`: DeepCTR-Torch's DCN with `cross_parameterization="matrix"` (DCN-M): one flat float
  tensor X read by column ranges, a CrossNet of raw Parameter kernels `[layers, d, d]` applied as
  `torch.matmul(kernel, x_l)` to `x.unsqueeze(2)`, a DNN, a linear logit of 1-wide embeddings.
- `rechub_mmoe`: torch-rechub's MMOE: a dict of features, EmbeddingLayer(squeeze_dim=True) concatenating every
  embedding into one flat vector, experts and softmax gates as rechub's MLP (Linear, BatchNorm1d, activation,
  Dropout), towers and a sigmoid PredictionLayer per task.
- `rechub_din`: torch-rechub's DIN: the behaviour sequence (padded with 0, sharing the item table) pooled by an
  ActivationUnit over `cat([target, history, target - history, target * history])`, masked at padding as
  DeepCTR does, then an MLP over the pooled history, the target and the other features.

Each comes tiny (for tests) and at a production size (for bench.conventions), with a feature schema that
interleaves user and candidate features, so each can go the user's whole way: package() -> store -> serve.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from service.features.schema import FeatureSchema, FeatureSpec

SIZES = ("tiny", "production")


@dataclass(frozen=True)
class LibraryModel:
    """One library-shaped ranker: its schema, how to build the user's adapter at a size, its tasks."""

    name: str
    library: str
    schema: Callable[[str], FeatureSchema]
    build: Callable[[str], nn.Module]  # size -> the adapter: features dict (every feature at batch N) -> [N, T]
    tasks: tuple[str, ...]

    def user_features(self, size: str) -> list[str]:
        return [spec.name for spec in self.schema(size).user_features]


def mlp(dims: list[int], activation: Callable[[], nn.Module] = nn.ReLU, output_layer: bool = False) -> nn.Sequential:
    """torch-rechub's MLP: Linear, BatchNorm1d, activation, Dropout per hidden layer, then Linear(., 1)."""
    layers: list[nn.Module] = []
    for d_in, d_out in zip(dims[:-1], dims[1:]):
        layers += [nn.Linear(d_in, d_out), nn.BatchNorm1d(d_out), activation(), nn.Dropout(0.2)]
    if output_layer:
        layers.append(nn.Linear(dims[-1], 1))
    return nn.Sequential(*layers)


# -- DeepCTR-Torch DCN-M over one flat column tensor ---------------------------------------------------------
DCN_SPARSE = (("user_id", True, 1000), ("item_id", False, 5000), ("user_city", True, 60),
              ("item_category", False, 40), ("user_gender", True, 3), ("item_brand", False, 300))
DCN_DENSE = (("user_age", True, 1), ("item_price", False, 2), ("user_ctr", True, 3))
DCN_SIZES = {"tiny": {"embedding_dim": 4, "hidden": (16, 8), "cross_layers": 2},
             "production": {"embedding_dim": 16, "hidden": (256, 128), "cross_layers": 3}}


def _dcn_columns() -> list[tuple[str, bool, str, int]]:
    """(name, user, kind, vocab or width) in the model's column order: sparse and dense interleaved."""
    sparse = [(name, user, "sparse", vocab) for name, user, vocab in DCN_SPARSE]
    dense = [(name, user, "dense", width) for name, user, width in DCN_DENSE]
    return [sparse[0], dense[0], sparse[1], sparse[2], dense[1], sparse[3], sparse[4], dense[2], sparse[5]]


class CrossNetMatrix(nn.Module):
    """deepctr_torch.layers.CrossNet(parameterization='matrix'): x_{l+1} = x_0 * (W_l x_l + b_l) + x_l."""

    def __init__(self, in_features: int, layer_num: int) -> None:
        super().__init__()
        self.layer_num = layer_num
        self.kernels = nn.Parameter(torch.empty(layer_num, in_features, in_features))
        self.bias = nn.Parameter(torch.zeros(layer_num, in_features, 1))
        for i in range(layer_num):
            nn.init.xavier_normal_(self.kernels[i])

    def forward(self, inputs: Tensor) -> Tensor:
        x_0 = inputs.unsqueeze(2)
        x_l = x_0
        for i in range(self.layer_num):
            xl_w = torch.matmul(self.kernels[i], x_l)  # W * xi  (bs, in_features, 1)
            dot_ = xl_w + self.bias[i]
            x_l = x_0 * dot_ + x_l
        return torch.squeeze(x_l, dim=2)


class DeepCTRDCN(nn.Module):
    """deepctr_torch.models.DCN(cross_parameterization='matrix'): forward(X) over DeepCTR's feature_index."""

    def __init__(self, columns: list[tuple[str, bool, str, int]], embedding_dim: int, hidden: tuple[int, ...],
                 cross_layers: int) -> None:
        super().__init__()
        self.feature_index: OrderedDict[str, tuple[int, int]] = OrderedDict()
        start = 0
        for name, _, kind, size in columns:
            width = 1 if kind == "sparse" else size
            self.feature_index[name] = (start, start + width)
            start += width
        self.sparse = [name for name, _, kind, _ in columns if kind == "sparse"]
        self.dense = [name for name, _, kind, _ in columns if kind == "dense"]
        vocab = {name: size for name, _, kind, size in columns if kind == "sparse"}
        dense_width = sum(size for _, _, kind, size in columns if kind == "dense")
        self.embedding_dict = nn.ModuleDict({n: nn.Embedding(vocab[n] + 1, embedding_dim) for n in self.sparse})
        self.linear_embedding_dict = nn.ModuleDict({n: nn.Embedding(vocab[n] + 1, 1) for n in self.sparse})
        self.linear_weight = nn.Parameter(torch.randn(dense_width, 1) * 1e-2)
        d_in = len(self.sparse) * embedding_dim + dense_width
        widths = (d_in, *hidden)
        self.dnn = nn.Sequential(*[layer for a, b in zip(widths[:-1], widths[1:])
                                   for layer in (nn.Linear(a, b), nn.ReLU())])
        self.crossnet = CrossNetMatrix(d_in, cross_layers)
        self.dnn_linear = nn.Linear(d_in + hidden[-1], 1, bias=False)

    def _columns(self, X: Tensor, name: str) -> Tensor:
        start, end = self.feature_index[name]
        return X[:, start:end]

    def forward(self, X: Tensor) -> Tensor:
        sparse_embedding_list = [self.embedding_dict[n](self._columns(X, n).long()) for n in self.sparse]
        dense_value_list = [self._columns(X, n) for n in self.dense]
        linear_sparse = torch.cat([self.linear_embedding_dict[n](self._columns(X, n).long()) for n in self.sparse],
                                  dim=-1)
        logit = torch.sum(linear_sparse, dim=-1) + torch.cat(dense_value_list, dim=-1).matmul(self.linear_weight)
        dnn_input = torch.cat([torch.flatten(torch.cat(sparse_embedding_list, dim=-1), start_dim=1),
                               torch.flatten(torch.cat(dense_value_list, dim=-1), start_dim=1)], dim=-1)
        deep_out = self.dnn(dnn_input)
        cross_out = self.crossnet(dnn_input)
        logit = logit + self.dnn_linear(torch.cat((cross_out, deep_out), dim=-1))
        return torch.sigmoid(logit)


class FlatColumnsAdapter(nn.Module):
    """The user's adapter for a DeepCTR model: schema features -> X in the model's column order."""

    def __init__(self, model: nn.Module, columns: list[tuple[str, bool, str, int]]) -> None:
        super().__init__()
        self.model, self.columns = model, [(name, kind) for name, _, kind, _ in columns]

    def forward(self, features: dict[str, Tensor]) -> Tensor:
        return self.model(torch.cat([features[name].unsqueeze(1).float() if kind == "sparse" else features[name]
                                     for name, kind in self.columns], dim=1))


def _dcn_schema(size: str) -> FeatureSchema:
    return FeatureSchema(tuple(
        FeatureSpec(name, "user" if user else "item", "sparse_id", vocab_size=size_)
        if kind == "sparse" else FeatureSpec(name, "user" if user else "item", "dense", dim=size_)
        for name, user, kind, size_ in _dcn_columns()))


def _dcn(size: str) -> nn.Module:
    return FlatColumnsAdapter(DeepCTRDCN(_dcn_columns(), **DCN_SIZES[size]), _dcn_columns())  # type: ignore[arg-type]


# -- torch-rechub MMOE over a dict of features ---------------------------------------------------------------
MMOE_SPARSE = (("user_id", True, 2000), ("item_id", False, 10000), ("user_city", True, 100),
               ("item_category", False, 60), ("user_level", True, 8), ("item_author", False, 500))
MMOE_SIZES = {"tiny": {"embedding_dim": 4, "expert": (16, 8), "tower": (8,), "experts": 3},
              "production": {"embedding_dim": 16, "expert": (256, 128), "tower": (64,), "experts": 4}}


class RechubMMOE(nn.Module):
    """torch_rechub.models.multi_task.MMOE: shared experts, one softmax gate and one tower per task."""

    def __init__(self, sparse: tuple[tuple[str, bool, int], ...], dense_dim: int, embedding_dim: int,
                 expert: tuple[int, ...], tower: tuple[int, ...], experts: int, tasks: int = 2) -> None:
        super().__init__()
        self.names = [name for name, _, _ in sparse]
        self.embedding = nn.ModuleDict({name: nn.Embedding(vocab + 1, embedding_dim) for name, _, vocab in sparse})
        input_dims = len(sparse) * embedding_dim + dense_dim
        self.experts = nn.ModuleList(mlp([input_dims, *expert]) for _ in range(experts))
        self.gates = nn.ModuleList(mlp([input_dims, experts], lambda: nn.Softmax(dim=1)) for _ in range(tasks))
        self.towers = nn.ModuleList(mlp([expert[-1], *tower], output_layer=True) for _ in range(tasks))

    def forward(self, x: dict[str, Tensor]) -> Tensor:
        embed_x = torch.cat([self.embedding[name](x[name]) for name in self.names] + [x["user_dense"], x["item_dense"]],
                            dim=1)  # EmbeddingLayer(squeeze_dim=True): [B, input_dims]
        expert_outs = torch.cat([expert(embed_x).unsqueeze(1) for expert in self.experts], dim=1)  # [B, E, d]
        ys = []
        for gate, tower in zip(self.gates, self.towers):
            gate_out = gate(embed_x).unsqueeze(-1)  # [B, E, 1]
            expert_pooling = torch.sum(torch.mul(gate_out, expert_outs), dim=1)
            ys.append(torch.sigmoid(tower(expert_pooling)))  # PredictionLayer(task_type="classification")
        return torch.cat(ys, dim=1)


def _mmoe_schema(size: str) -> FeatureSchema:
    specs = [FeatureSpec(name, "user" if user else "item", "sparse_id", vocab_size=vocab)
             for name, user, vocab in MMOE_SPARSE]
    specs.insert(3, FeatureSpec("user_dense", "user", "dense", dim=8))
    specs.insert(1, FeatureSpec("item_dense", "item", "dense", dim=4))
    return FeatureSchema(tuple(specs))


def _mmoe(size: str) -> nn.Module:
    return RechubMMOE(MMOE_SPARSE, 12, **MMOE_SIZES[size])  # type: ignore[arg-type]  # takes the features dict


# -- torch-rechub DIN: target attention over a padded behaviour sequence ----------------------------------------
DIN_SIZES = {"tiny": {"embedding_dim": 4, "max_len": 6, "attention": (8,), "hidden": (16, 8)},
             "production": {"embedding_dim": 16, "max_len": 50, "attention": (36,), "hidden": (200, 80)}}
DIN_ITEMS, DIN_CATEGORIES = 5000, 100


class ActivationUnit(nn.Module):
    """torch_rechub.basic.layers.ActivationUnit: an MLP scores each behaviour against the target."""

    def __init__(self, emb_dim: int, dims: tuple[int, ...]) -> None:
        super().__init__()
        self.emb_dim = emb_dim
        self.attention = mlp([4 * emb_dim, *dims], nn.PReLU, output_layer=True)

    def forward(self, history: Tensor, target: Tensor) -> Tensor:
        seq_length = history.size(1)
        target = target.unsqueeze(1).expand(-1, seq_length, -1)
        att_input = torch.cat([target, history, target - history, target * history], dim=-1)
        att_weight = self.attention(att_input.view(-1, 4 * self.emb_dim))
        return att_weight.view(-1, seq_length)


class RechubDIN(nn.Module):
    """torch_rechub.models.ranking.DIN, with DeepCTR's mask of padded behaviours."""

    def __init__(self, embedding_dim: int, max_len: int, attention: tuple[int, ...], hidden: tuple[int, ...]) -> None:
        super().__init__()
        self.item_embedding = nn.Embedding(DIN_ITEMS + 1, embedding_dim)  # shared by item_id and hist_item_id
        self.category_embedding = nn.Embedding(DIN_CATEGORIES + 1, embedding_dim)
        self.user_embedding = nn.Embedding(3000 + 1, embedding_dim)
        self.attention_layer = ActivationUnit(embedding_dim, attention)
        self.mlp = mlp([4 * embedding_dim + 4, *hidden], nn.ReLU, output_layer=True)

    def forward(self, x: dict[str, Tensor]) -> Tensor:
        history_ids = x["hist_item_id"]  # [B, L], 0 = padding
        history = self.item_embedding(history_ids)  # [B, L, E]
        target = self.item_embedding(x["item_id"])  # [B, E]
        att_weight = self.attention_layer(history, target) * (history_ids != 0).to(history.dtype)
        pooled = (att_weight.unsqueeze(-1) * history).sum(dim=1)  # [B, E]
        mlp_in = torch.cat([pooled, target, self.user_embedding(x["user_id"]), self.category_embedding(x["item_cat"]),
                            x["context"]], dim=1)
        return torch.sigmoid(self.mlp(mlp_in))


def _din_schema(size: str) -> FeatureSchema:
    return FeatureSchema((
        FeatureSpec("item_id", "item", "sparse_id", vocab_size=DIN_ITEMS),
        FeatureSpec("hist_item_id", "user", "id_sequence", vocab_size=DIN_ITEMS, max_len=DIN_SIZES[size]["max_len"]),
        FeatureSpec("item_cat", "item", "sparse_id", vocab_size=DIN_CATEGORIES),
        FeatureSpec("user_id", "user", "sparse_id", vocab_size=3000),
        FeatureSpec("context", "cross", "dense", dim=4),
    ))


def _din(size: str) -> nn.Module:
    return RechubDIN(**DIN_SIZES[size])  # type: ignore[arg-type]


MODELS: dict[str, LibraryModel] = {
    "deepctr_dcn_matrix": LibraryModel("deepctr_dcn_matrix", "DeepCTR-Torch", _dcn_schema, _dcn, ("ctr",)),
    "rechub_mmoe": LibraryModel("rechub_mmoe", "torch-rechub", _mmoe_schema, _mmoe, ("click", "like")),
    "rechub_din": LibraryModel("rechub_din", "torch-rechub", _din_schema, _din, ("ctr",)),
}


def randomize_weights(model: nn.Module, generator: torch.Generator) -> nn.Module:
    """Fresh weights of a trained model's scale (embeddings ~0.3, fan-in scaled matrices, BatchNorm statistics
    away from identity), so scores spread over (0, 1) instead of saturating through a 3-layer cross net."""
    for module in model.modules():
        for name, param in module.named_parameters(recurse=False):
            if isinstance(module, nn.Embedding):
                nn.init.normal_(param, 0.0, 0.3, generator=generator)
            elif isinstance(module, nn.BatchNorm1d) and name == "weight":
                nn.init.uniform_(param, 0.5, 1.5, generator=generator)
            elif isinstance(module, nn.PReLU):
                nn.init.uniform_(param, 0.1, 0.4, generator=generator)
            elif param.dim() == 1 or param.shape[-1] == 1 and param.dim() == 3:  # biases, cross-layer biases
                nn.init.uniform_(param, -0.1, 0.1, generator=generator)
            else:  # Linear (out, in), raw matmul weights (in, out) and cross kernels (d, d): fan-in scaled
                fan_in = param.shape[1] if isinstance(module, nn.Linear) else param.shape[-2]
                nn.init.normal_(param, 0.0, 0.5 / fan_in**0.5, generator=generator)
        if isinstance(module, nn.BatchNorm1d):
            nn.init.normal_(module.running_mean, 0.0, 0.3, generator=generator)
            nn.init.uniform_(module.running_var, 0.5, 2.0, generator=generator)
    return model
