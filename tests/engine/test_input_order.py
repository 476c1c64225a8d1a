"""A features dict in another key order than the capture's still feeds every tensor to its own placeholder.

The /rank codec once built its dict user features first while the capture (schema.example_batch) used the
schema's order; with a schema that interleaves user and candidate features, each variant then received one
feature's tensor in another's place and every request failed (or, with equal shapes, scored wrong)."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from service.engine import Variant
from service.features.schema import FeatureSchema, FeatureSpec, Kind, Side
from service.serving.build import build_variants
from tests.tiling import tile_user_features

SCHEMA = FeatureSchema((
    FeatureSpec("item_dense", Side.ITEM, Kind.DENSE, dim=4),
    FeatureSpec("user_dense", Side.USER, Kind.DENSE, dim=4),  # same width as item_dense: a swap would still run
    FeatureSpec("item_id", Side.ITEM, Kind.SPARSE_ID, vocab_size=30),
    FeatureSpec("user_id", Side.USER, Kind.SPARSE_ID, vocab_size=20),
    FeatureSpec("cross_dense", Side.CROSS, Kind.DENSE, dim=2),
))


class Interleaved(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.items = nn.Embedding(31, 3)
        self.users = nn.Embedding(21, 3)
        self.mlp = nn.Sequential(nn.Linear(4 + 4 + 3 + 3 + 2, 16), nn.ReLU(), nn.Linear(16, 2))

    def forward(self, f: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        x = torch.cat([f["item_dense"], f["user_dense"], self.items(f["item_id"]), self.users(f["user_id"]),
                       f["cross_dense"]], dim=1)
        logits = self.mlp(x)
        return {"click": torch.sigmoid(logits[:, 0]), "like": torch.sigmoid(logits[:, 1])}


@pytest.mark.parametrize("n", [1, 7])
def test_every_variant_scores_a_reordered_features_dict_like_the_eager_model(n: int) -> None:
    torch.manual_seed(0)
    model = Interleaved().eval()
    built = build_variants(model, [s.name for s in SCHEMA.user_features], SCHEMA.example_batch)
    features = SCHEMA.example_batch(n, torch.Generator().manual_seed(n))
    with torch.no_grad():
        expected = model(tile_user_features(SCHEMA, features, n))
    orders = {"schema": list(features), "user first": [s.name for s in (*SCHEMA.user_features,
                                                                        *SCHEMA.candidate_features)],
              "reversed": list(reversed(features))}
    for variant in Variant:
        for label, order in orders.items():
            with torch.inference_mode():
                scores = built[variant].module({name: features[name] for name in order})
            for task in ("click", "like"):
                assert torch.allclose(scores[task], expected[task], atol=1e-6), (variant, label, task)
