"""The operator allow-list admits what public rankers are built from: a model with a GRU (DIEN-style interest
evolution), a 1-d convolution (CCPM/FGCNN-style), scaled-dot-product and multi-head attention (BST-style),
one-hot, padding and cosine similarity packages, loads and serves every variant like its eager model."""

from pathlib import Path

import torch
from torch import nn

from service.engine import Variant
from service.engine.equivalence import SCORES, max_difference
from service.features.schema import FeatureSchema, FeatureSpec
from service.serving.build import build_variants
from service.store import load_artifact, package
from tests.tiling import tile_user_features

SCHEMA = FeatureSchema((
    FeatureSpec("user_dense", "user", "dense", dim=4),
    FeatureSpec("user_seq", "user", "id_sequence", vocab_size=20, max_len=5),
    FeatureSpec("item_id", "item", "sparse_id", vocab_size=10),
    FeatureSpec("item_dense", "item", "dense", dim=4),
))


class LayeredRanker(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.items, self.history = nn.Embedding(11, 4), nn.Embedding(21, 4, padding_idx=0)
        self.gru = nn.GRU(4, 4, batch_first=True)
        self.conv = nn.Conv1d(4, 4, kernel_size=2)
        self.attention = nn.MultiheadAttention(4, 2, batch_first=True)
        self.head = nn.Linear(4 + 4 + 4 + 4 + 5 + 1, 2)

    def forward(self, f: dict[str, torch.Tensor]) -> torch.Tensor:
        history = self.history(f["user_seq"])  # [B, 5, 4]
        evolved, _ = self.gru(history)  # [B, 5, 4]
        item = self.items(f["item_id"])[:, None, :]  # [B, 1, 4]
        attended, _ = self.attention(item, evolved, evolved)  # [B, 1, 4]
        sdpa = nn.functional.scaled_dot_product_attention(item, history, history)  # [B, 1, 4]
        convolved = self.conv(history.transpose(1, 2)).amax(dim=2)  # [B, 4]
        one_hot = nn.functional.one_hot(f["item_id"].clamp(max=4), 5).float()  # [B, 5]
        dense = nn.functional.pad(f["user_dense"], (0, 0))
        similarity = nn.functional.cosine_similarity(dense, f["item_dense"]).unsqueeze(1)  # [B, 1]
        x = torch.cat([attended.squeeze(1), sdpa.squeeze(1), convolved, dense, one_hot, similarity], dim=1)
        return self.head(x)  # [B, 2] logits


def test_recurrent_convolution_and_attention_layers_package_and_serve_like_eager(tmp_path: Path) -> None:
    torch.manual_seed(0)
    model = LayeredRanker().eval()
    package(model, SCHEMA.example_batch(8), SCHEMA, tasks=["click", "like"], scores="logit", store=tmp_path,
            name="layered")
    loaded = load_artifact(tmp_path / "layered")
    built = build_variants(loaded.model, loaded.manifest.user_features, loaded.schema.example_batch)
    for variant in Variant:  # the GRU once fixed the batch to the trace's 4 rows and every variant fell back
        assert (built[variant].report.variant, built[variant].report.fallback_reason) == (variant, None)
    for n in (1, 7):
        features = SCHEMA.example_batch(n, torch.Generator().manual_seed(n))
        with torch.no_grad():
            eager = torch.sigmoid(model(tile_user_features(SCHEMA, features, n)))  # [n, 2]
            expected = {"click": eager[:, 0], "like": eager[:, 1]}
            for variant in Variant:
                scores = built[variant].module(features)
                assert max_difference(scores, expected) <= SCORES.bound(expected), (variant, n)
