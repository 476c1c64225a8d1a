"""A ranker as a user of MaRI Serve writes it: their own model (a wide & deep over a dense matrix and a
matrix of sparse ids, two positional arguments) plus the few adapter lines and a `build` function for
`ranker package tests/store/my_ranker.py:build --name my_ranker`. Nothing here imports the project's models."""

import torch
from torch import nn

from service.features.schema import FeatureSchema, FeatureSpec

VOCABS = {"user_id": 1000, "user_city": 50, "item_id": 5000, "item_category": 40}


class WideDeep(nn.Module):
    """The user's own model: knows nothing of users and candidates, only columns."""

    def __init__(self, vocabs: list[int], dense_dim: int, embedding_dim: int = 32, hidden: int = 256) -> None:
        super().__init__()
        self.embeddings = nn.ModuleList(nn.Embedding(v + 1, embedding_dim) for v in vocabs)
        self.wide = nn.Linear(dense_dim, 2)
        width = len(vocabs) * embedding_dim + dense_dim
        self.deep = nn.Sequential(nn.Linear(width, hidden), nn.ReLU(), nn.Linear(hidden, hidden // 2), nn.ReLU(),
                                  nn.Linear(hidden // 2, 2))

    def forward(self, dense: torch.Tensor, sparse: torch.Tensor) -> torch.Tensor:
        embedded = [table(sparse[:, i]) for i, table in enumerate(self.embeddings)]
        deep_in = torch.cat(embedded + [dense], dim=1)
        return self.wide(dense) + self.deep(deep_in)  # [N, 2] logits: click, like


class Adapter(nn.Module):
    """The user's adapter: the service's feature dict -> the model's two matrices."""

    def __init__(self, model: WideDeep) -> None:
        super().__init__()
        self.model = model

    def forward(self, features: dict[str, torch.Tensor]) -> torch.Tensor:
        dense = torch.cat([features["user_dense"], features["item_dense"]], dim=1)
        sparse = torch.stack([features[name] for name in VOCABS], dim=1)
        return self.model(dense, sparse)


def schema() -> FeatureSchema:
    return FeatureSchema((
        FeatureSpec("user_id", "user", "sparse_id", vocab_size=VOCABS["user_id"]),
        FeatureSpec("user_city", "user", "sparse_id", vocab_size=VOCABS["user_city"]),
        FeatureSpec("user_dense", "user", "dense", dim=12),
        FeatureSpec("item_id", "item", "sparse_id", vocab_size=VOCABS["item_id"]),
        FeatureSpec("item_category", "item", "sparse_id", vocab_size=VOCABS["item_category"]),
        FeatureSpec("item_dense", "item", "dense", dim=4),
    ))


def build(seed: int = 0):
    torch.manual_seed(seed)
    model = Adapter(WideDeep(list(VOCABS.values()), dense_dim=16)).eval()
    features = schema().example_batch(8, torch.Generator().manual_seed(seed))
    return model, features, schema(), {"tasks": ["click", "like"], "scores": "logit", "task_weights": {"like": 0.5}}
