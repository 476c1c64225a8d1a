"""Default ranker: industrial-style coarse/fine ranking model with target attention and an MMoE head.

Concat layout (one 2-D [B, D] tensor), user side first:
    user_id emb | profile embs | user MLP(user_dense) | mean-pooled user_seq
    | item_id emb | item_author emb | item_category emb | item_dense
    | cross_dense | target attention(item_id emb over user_seq)
The concat feeds 4 experts (MLP D->512->256), one softmax gate per task and one tower per task.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor, nn

from service.features.schema import FeatureSchema, FeatureSpec, Kind, Side
from service.models.catalog import CoreFeatureSizes, catalog_specs
from service.models.layers import MLP, OOVEmbedding, TargetAttention, TaskTowers, masked_mean, padding_mask

DEFAULT_PROFILE_FIELDS: tuple[tuple[str, int], ...] = (
    ("user_gender", 3),
    ("user_age_bucket", 8),
    ("user_city", 200),
    ("user_device", 20),
    ("user_os", 5),
    ("user_language", 30),
    ("user_membership", 4),
    ("user_activity_level", 10),
    ("user_region", 50),
    ("user_income_bucket", 12),
)


@dataclass(frozen=True)
class MMoEConfig(CoreFeatureSizes):
    """Every size of the model (ids and dense widths from CoreFeatureSizes); benchmarks sweep these as overrides."""

    profile_fields: tuple[tuple[str, int], ...] = DEFAULT_PROFILE_FIELDS  # (feature name, vocab)
    # user side
    user_id_dim: int = 128
    profile_dim: int = 48
    user_dense_dim: int = 32
    user_mlp_dims: tuple[int, ...] = (128, 256)
    seq_len: int = 50
    # item side (the item-id table is shared with user_seq)
    item_dim: int = 64
    author_dim: int = 32
    category_dim: int = 32
    item_dense_dim: int = 32
    # cross side
    cross_dense_dim: int = 16
    attention_dim: int = 64
    # MMoE head
    num_experts: int = 4
    expert_dims: tuple[int, ...] = (512, 256)
    tower_dims: tuple[int, ...] = (128,)
    tasks: tuple[str, ...] = ("click", "long_view", "like")
    task_weights: tuple[float, ...] = (1.0, 0.5, 0.3)

    def __post_init__(self) -> None:
        super().__post_init__()
        if not self.expert_dims or not self.user_mlp_dims:
            raise ValueError("expert_dims and user_mlp_dims must be non-empty")
        sizes = (self.seq_len, self.user_id_dim, self.profile_dim, self.item_dim, self.author_dim,
                 self.category_dim, self.attention_dim, self.num_experts)
        if min(sizes) < 1 or min(self.expert_dims + self.user_mlp_dims + self.tower_dims, default=1) < 1:
            raise ValueError("every size in MMoEConfig must be >= 1")

    def schema(self) -> FeatureSchema:
        """User features first (id, profile fields, dense statistics, behaviour sequence), then item, then cross."""
        user_id, user_dense = catalog_specs(self, ("user_id", "user_dense"))
        profile = [FeatureSpec(name, Side.USER, Kind.SPARSE_ID, vocab_size=vocab)
                   for name, vocab in self.profile_fields]
        sequence = FeatureSpec("user_seq", Side.USER, Kind.ID_SEQUENCE, vocab_size=self.item_vocab,
                               max_len=self.seq_len)
        candidate = catalog_specs(self, ("item_id", "item_author", "item_category", "item_dense", "cross_dense"))
        return FeatureSchema((user_id, *profile, user_dense, sequence, *candidate))


def concat_widths(config: MMoEConfig) -> list[tuple[str, Side, int]]:
    """(block name, side, width) of every block of the concat, in order."""
    blocks = [("user_id", Side.USER, config.user_id_dim)]
    blocks += [(name, Side.USER, config.profile_dim) for name, _ in config.profile_fields]
    blocks += [
        ("user_dense_mlp", Side.USER, config.user_mlp_dims[-1]),
        ("user_seq_pool", Side.USER, config.item_dim),
        ("item_id", Side.ITEM, config.item_dim),
        ("item_author", Side.ITEM, config.author_dim),
        ("item_category", Side.ITEM, config.category_dim),
        ("item_dense", Side.ITEM, config.item_dense_dim),
        ("cross_dense", Side.CROSS, config.cross_dense_dim),
        ("target_attention", Side.CROSS, config.attention_dim),
    ]
    return blocks


class MMoE(nn.Module):
    """Multi-gate mixture of experts: every task mixes the shared experts with its own softmax gate."""

    def __init__(self, in_dim: int, num_experts: int, expert_dims: tuple[int, ...], tasks: tuple[str, ...]) -> None:
        super().__init__()
        self.experts = nn.ModuleList(MLP(in_dim, expert_dims) for _ in range(num_experts))
        self.gates = nn.ModuleDict({task: nn.Linear(in_dim, num_experts) for task in tasks})
        self.out_dim = expert_dims[-1]

    def forward(self, x: Tensor) -> dict[str, Tensor]:
        experts = torch.stack([expert(x) for expert in self.experts], dim=1)  # (B, E, H)
        mixed = {}
        for task, gate in self.gates.items():
            weights = torch.softmax(gate(x), dim=-1).unsqueeze(-1)  # (B, E, 1)
            mixed[task] = (weights * experts).sum(dim=1)  # (B, H)
        return mixed


class MMoERanker(nn.Module):
    """Dict of feature tensors (all at batch B) -> dict task -> sigmoid score [B]."""

    def __init__(self, config: MMoEConfig) -> None:
        super().__init__()
        self.config = config
        self.profile_names = tuple(name for name, _ in config.profile_fields)
        self.user_id = OOVEmbedding(config.user_vocab, config.user_id_dim)
        self.profile = nn.ModuleDict(
            {name: OOVEmbedding(vocab, config.profile_dim) for name, vocab in config.profile_fields}
        )
        self.user_mlp = MLP(config.user_dense_dim, config.user_mlp_dims)
        self.item_id = OOVEmbedding(config.item_vocab, config.item_dim)  # shared with user_seq
        self.item_author = OOVEmbedding(config.author_vocab, config.author_dim)
        self.item_category = OOVEmbedding(config.category_vocab, config.category_dim)
        self.attention = TargetAttention(config.item_dim, config.item_dim, config.attention_dim)
        self.concat_dim = sum(width for _, _, width in concat_widths(config))
        self.mmoe = MMoE(self.concat_dim, config.num_experts, config.expert_dims, config.tasks)
        self.towers = TaskTowers(self.mmoe.out_dim, config.tower_dims, config.tasks)

    def forward(self, features: dict[str, Tensor]) -> dict[str, Tensor]:
        sequence = features["user_seq"]
        mask = padding_mask(sequence)  # (B, L)
        sequence_emb = self.item_id(sequence)  # (B, L, E)
        item_emb = self.item_id(features["item_id"])  # (B, E)
        user_blocks = [self.user_id(features["user_id"])]
        user_blocks += [self.profile[name](features[name]) for name in self.profile_names]
        user_blocks += [self.user_mlp(features["user_dense"]), masked_mean(sequence_emb, mask)]
        item_blocks = [
            item_emb,
            self.item_author(features["item_author"]),
            self.item_category(features["item_category"]),
            features["item_dense"],
        ]
        cross_blocks = [features["cross_dense"], self.attention(item_emb, sequence_emb, mask)]
        x = torch.cat(user_blocks + item_blocks + cross_blocks, dim=-1)  # (B, D)
        scores: dict[str, Tensor] = self.towers(self.mmoe(x))
        return scores

