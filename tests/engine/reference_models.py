"""Reference rankers written only for the engine tests: plain nn.Modules, not the project's model zoo.

Each model is written the way a modeller would write it for training, i.e. for a batch of (user, item) rows
with the user's features tiled; the tests decide which inputs are user-side by name. Every size lives in the
model's config dataclass. Shapes: B = rows of a (tiled) user tensor, N = candidates.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn


def _mlp(widths: tuple[int, ...]) -> nn.Sequential:
    """Linear+ReLU layers through `widths`, without an activation after the last Linear."""
    layers: list[nn.Module] = []
    for i, (d_in, d_out) in enumerate(zip(widths[:-1], widths[1:])):
        layers.append(nn.Linear(d_in, d_out))
        if i < len(widths) - 2:
            layers.append(nn.ReLU())
    return nn.Sequential(*layers)


# (a) interleaved concat ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class InterleavedConfig:
    user_widths: tuple[int, int, int] = (3, 2, 6)
    candidate_widths: tuple[int, int] = (4, 5)
    hidden: tuple[int, ...] = (16, 8)


class InterleavedConcatMLP(nn.Module):
    """Features concatenated in a fragmented order (u1, c1, u2, c2, u3), then an MLP."""

    def __init__(self, config: InterleavedConfig = InterleavedConfig()) -> None:
        super().__init__()
        d_in = sum(config.user_widths) + sum(config.candidate_widths)
        self.mlp = _mlp((d_in, *config.hidden, 1))

    def forward(self, u1: Tensor, c1: Tensor, u2: Tensor, c2: Tensor, u3: Tensor) -> Tensor:
        x = torch.cat([u1, c1, u2, c2, u3], dim=-1)  # (N, 20)
        return torch.sigmoid(self.mlp(x)).squeeze(-1)  # (N,)


# (b) LayerNorm over the concat ------------------------------------------------------------------------


@dataclass(frozen=True)
class LayerNormConfig:
    user_profile: int = 4
    user_context: int = 3
    item_dense: int = 6
    hidden: int = 8


class LayerNormWideDeep(nn.Module):
    """Wide part: a Linear straight on the concat (splittable). Deep part: LayerNorm over the concat, then
    a Linear. LayerNorm mixes every feature of a row (mean/variance), so the deep Linear is not splittable."""

    def __init__(self, config: LayerNormConfig = LayerNormConfig()) -> None:
        super().__init__()
        d_in = config.user_profile + config.user_context + config.item_dense
        self.wide = nn.Linear(d_in, 1)
        self.norm = nn.LayerNorm(d_in)
        self.deep_in = nn.Linear(d_in, config.hidden)
        self.deep_out = nn.Linear(config.hidden, 1)

    def forward(self, features: dict[str, Tensor]) -> Tensor:
        x = torch.cat([features["user_profile"], features["item_dense"], features["user_context"]], dim=1)
        deep = self.deep_out(F.relu(self.deep_in(self.norm(x))))
        return torch.sigmoid(self.wide(x) + deep).squeeze(1)  # (N,)


# (c) eval-mode BatchNorm over the concat --------------------------------------------------------------


@dataclass(frozen=True)
class BatchNormConfig:
    user: int = 5
    item: int = 4
    cross: int = 3
    hidden: int = 8
    tasks: int = 2


class BatchNormConcat(nn.Module):
    """BatchNorm1d (eval mode: a per-feature affine map) over the concat, then an MLP with 2 task columns."""

    def __init__(self, config: BatchNormConfig = BatchNormConfig()) -> None:
        super().__init__()
        d_in = config.user + config.item + config.cross
        self.bn = nn.BatchNorm1d(d_in)
        self.fc1 = nn.Linear(d_in, config.hidden)
        self.fc2 = nn.Linear(config.hidden, config.tasks)

    def forward(self, user: Tensor, item: Tensor, cross: Tensor) -> Tensor:
        x = self.bn(torch.cat([item, user, cross], dim=1))
        return torch.sigmoid(self.fc2(F.relu(self.fc1(x))))  # (N, tasks)


# (d) user code that reads the batch size --------------------------------------------------------------


@dataclass(frozen=True)
class BatchSizeReadingConfig:
    seq_vocab: int = 20
    seq_len: int = 6
    emb_dim: int = 4
    user_dense: int = 3
    item_vocab: int = 15
    item_dense: int = 3
    hidden: int = 8


class BatchSizeReadingRanker(nn.Module):
    """User tower that reads the batch size (x.size(0), x.shape[0]) and reshapes with it: the engine must not
    bake the traced batch into a user-side view/reshape."""

    def __init__(self, config: BatchSizeReadingConfig = BatchSizeReadingConfig()) -> None:
        super().__init__()
        self.config = config
        self.seq_emb = nn.Embedding(config.seq_vocab, config.emb_dim)
        self.seq_proj = nn.Linear(config.emb_dim, config.emb_dim)
        self.item_emb = nn.Embedding(config.item_vocab, config.emb_dim)
        d_in = 2 * config.emb_dim + config.user_dense + config.item_dense
        self.mlp = _mlp((d_in, config.hidden, 1))

    def forward(self, features: dict[str, Tensor]) -> Tensor:
        ids = features["user_seq_ids"]  # (B, L), 0 = padding
        e = self.seq_emb(ids)  # (B, L, d)
        b = e.size(0)
        d = self.config.emb_dim
        h = F.relu(self.seq_proj(e.reshape(-1, d)))  # (B*L, d)
        h = h.view(b, -1, d)  # (B, L, d)
        mask = (ids != 0).unsqueeze(-1).to(h.dtype)  # (B, L, 1)
        pooled = (h * mask).sum(1) / mask.sum(1).clamp(min=1.0)  # (B, d)
        dense = features["user_dense"]
        dense = dense.view(dense.shape[0], -1)
        user_vec = torch.cat([pooled.reshape(b, d), dense], dim=1)
        x = torch.cat([user_vec, self.item_emb(features["item_id"]), features["item_dense"]], dim=1)
        x = x.view(x.size(0), -1)
        return torch.sigmoid(self.mlp(x)).flatten()  # (N,)


# (e) user-only MLP tower ------------------------------------------------------------------------------


@dataclass(frozen=True)
class UserTowerConfig:
    user: int = 8
    user_hidden: tuple[int, ...] = (16, 6)
    candidate: int = 5
    hidden: int = 8


class UserTowerConcat(nn.Module):
    """A user-only MLP whose output is concatenated with candidate features."""

    def __init__(self, config: UserTowerConfig = UserTowerConfig()) -> None:
        super().__init__()
        self.user_tower = nn.Sequential(_mlp((config.user, *config.user_hidden)), nn.ReLU())
        self.head = _mlp((config.user_hidden[-1] + config.candidate, config.hidden, 1))

    def forward(self, user_features: Tensor, candidate_features: Tensor) -> Tensor:
        x = torch.cat([self.user_tower(user_features), candidate_features], dim=1)
        return torch.sigmoid(self.head(x)).squeeze(-1)  # (N,)


# (f) target attention ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class TargetAttentionConfig:
    vocab: int = 30  # shared by the behaviour sequence and the candidate item id
    seq_len: int = 8
    emb_dim: int = 4
    attn_dim: int = 6
    user_dense: int = 3
    hidden: int = 8


class TargetAttention(nn.Module):
    """DIN-style: the candidate's embedding queries the user's behaviour sequence (keys/values user-side),
    with the projections as nn.Parameters used through @ and torch.matmul."""

    def __init__(self, config: TargetAttentionConfig = TargetAttentionConfig()) -> None:
        super().__init__()
        self.emb = nn.Embedding(config.vocab, config.emb_dim)
        self.w_q = nn.Parameter(torch.empty(config.emb_dim, config.attn_dim))
        self.w_k = nn.Parameter(torch.empty(config.emb_dim, config.attn_dim))
        self.w_v = nn.Parameter(torch.empty(config.emb_dim, config.attn_dim))
        self.scale = 1.0 / math.sqrt(config.attn_dim)
        self.mlp = _mlp((config.attn_dim + config.emb_dim + config.user_dense, config.hidden, 1))

    def forward(self, features: dict[str, Tensor]) -> Tensor:
        ids = features["user_behaviour_ids"]  # (B, L), 0 = padding
        behaviour = self.emb(ids)  # (B, L, d)
        item = self.emb(features["item_id"])  # (N, d)
        q = (item @ self.w_q).unsqueeze(1)  # (N, 1, a)
        k = torch.matmul(behaviour, self.w_k)  # (B, L, a)
        v = behaviour @ self.w_v  # (B, L, a)
        scores = torch.matmul(q, k.transpose(1, 2)) * self.scale  # (N, 1, L)
        scores = scores.masked_fill((ids == 0).unsqueeze(1), -1e9)
        attended = (torch.softmax(scores, dim=-1) @ v).squeeze(1)  # (N, a)
        x = torch.cat([attended, item, features["user_dense"]], dim=1)
        return torch.sigmoid(self.mlp(x)).squeeze(1)  # (N,)


# (g) one concat feeding many Linears (MMoE) -----------------------------------------------------------


@dataclass(frozen=True)
class MMoEConfig:
    user_a: int = 4
    item_a: int = 5
    user_b: int = 3
    cross_a: int = 2
    experts: int = 3
    expert_dim: int = 8
    tasks: int = 2
    tower_hidden: int = 4


class MMoE(nn.Module):
    """Experts, per-task gates and per-task tower skip-Linears all read the same concat; returns a tuple."""

    def __init__(self, config: MMoEConfig = MMoEConfig()) -> None:
        super().__init__()
        d_in = config.user_a + config.item_a + config.user_b + config.cross_a
        self.experts = nn.ModuleList(nn.Linear(d_in, config.expert_dim) for _ in range(config.experts))
        self.gates = nn.ModuleList(nn.Linear(d_in, config.experts) for _ in range(config.tasks))
        self.skips = nn.ModuleList(nn.Linear(d_in, config.expert_dim) for _ in range(config.tasks))
        self.towers = nn.ModuleList(
            _mlp((config.expert_dim, config.tower_hidden, 1)) for _ in range(config.tasks)
        )

    def forward(self, features: dict[str, Tensor]) -> tuple[Tensor, ...]:
        x = torch.cat(
            [features["user_a"], features["item_a"], features["user_b"], features["cross_a"]], dim=1
        )
        experts = torch.stack([F.relu(e(x)) for e in self.experts], dim=1)  # (N, E, d)
        scores = []
        for gate, skip, tower in zip(self.gates, self.skips, self.towers):
            weights = torch.softmax(gate(x), dim=-1).unsqueeze(-1)  # (N, E, 1)
            mixed = (weights * experts).sum(1) + skip(x)  # (N, d)
            scores.append(torch.sigmoid(tower(mixed)).squeeze(-1))
        return tuple(scores)


# (h) dict of features in, dict of task scores out -----------------------------------------------------


@dataclass(frozen=True)
class DictTasksConfig:
    user_vocab: int = 50
    item_vocab: int = 40
    emb_dim: int = 4
    cross: int = 2
    hidden: int = 8
    tasks: tuple[str, ...] = ("click", "like", "share")


class DictTasksRanker(nn.Module):
    """features dict -> {task: score}; user and item embeddings interleaved with dense features."""

    def __init__(self, config: DictTasksConfig = DictTasksConfig()) -> None:
        super().__init__()
        self.user_emb = nn.Embedding(config.user_vocab, config.emb_dim)
        self.item_emb = nn.Embedding(config.item_vocab, config.emb_dim)
        self.bottom = nn.Linear(2 * config.emb_dim + 2 + config.cross, config.hidden)
        self.heads = nn.ModuleDict({task: nn.Linear(config.hidden, 1) for task in config.tasks})

    def forward(self, features: dict[str, Tensor]) -> dict[str, Tensor]:
        x = torch.cat(
            [
                self.user_emb(features["user_id"]),
                self.item_emb(features["item_id"]),
                features["user_history_length"],
                features["item_price"],
                features["cross_ctr"],
            ],
            dim=1,
        )
        h = F.relu(self.bottom(x))
        return {task: torch.sigmoid(head(h)).squeeze(1) for task, head in self.heads.items()}


# (i) not traceable by torch.fx.symbolic_trace ---------------------------------------------------------


@dataclass(frozen=True)
class UntraceableConfig:
    user_seq: tuple[int, int] = (4, 3)  # (L, d)
    user_vec: int = 5
    item_vec: int = 4
    item_seq: tuple[int, int] = (3, 2)
    hidden: int = 8


class DictLoopRanker(nn.Module):
    """Loops over the feature dict and branches on tensor rank: symbolic tracing cannot follow either."""

    def __init__(self, config: UntraceableConfig = UntraceableConfig()) -> None:
        super().__init__()
        d_in = config.user_seq[1] + config.user_vec + config.item_vec + config.item_seq[1]
        self.mlp = _mlp((d_in, config.hidden, 1))

    def forward(self, features: dict[str, Tensor]) -> Tensor:
        parts = []
        for _, value in features.items():
            if value.dim() == 3:
                value = value.mean(dim=1)  # pool sequences to (B, d)
            parts.append(value)
        return torch.sigmoid(self.mlp(torch.cat(parts, dim=1))).squeeze(1)


# (j) matmul spelled four ways ------------------------------------------------------------------------


@dataclass(frozen=True)
class MatmulFlavoursConfig:
    user: int = 4
    candidate: int = 6
    hidden: int = 8


class MatmulFlavours(nn.Module):
    """The concat feeds F.linear, torch.matmul, @ (nn.Parameter weights) and an nn.Linear.
    Returns the raw logit (no sigmoid)."""

    def __init__(self, config: MatmulFlavoursConfig = MatmulFlavoursConfig()) -> None:
        super().__init__()
        d_in, h = config.user + config.candidate, config.hidden
        self.w_linear = nn.Parameter(torch.empty(h, d_in))  # F.linear layout (out, in)
        self.b_linear = nn.Parameter(torch.empty(h))
        self.w_matmul = nn.Parameter(torch.empty(d_in, h))  # (in, out)
        self.b_matmul = nn.Parameter(torch.empty(h))
        self.w_at = nn.Parameter(torch.empty(d_in, h))
        self.module_linear = nn.Linear(d_in, h)
        self.out = nn.Linear(4 * h, 1)

    def forward(self, user: Tensor, candidate: Tensor) -> Tensor:
        x = torch.cat([candidate, user], dim=1)
        h1 = F.linear(x, self.w_linear, self.b_linear)
        h2 = torch.matmul(x, self.w_matmul) + self.b_matmul
        h3 = x @ self.w_at
        h4 = self.module_linear(x)
        return self.out(torch.tanh(torch.cat([h1, h2, h3, h4], dim=1))).squeeze(1)  # (N,) logits


# property-test family: random interleaved concat models -----------------------------------------------


@dataclass(frozen=True)
class RandomConcatConfig:
    """`order` lists the concat's parts by input name ('u<i>' user, 'c<j>' candidate)."""

    user_widths: tuple[int, ...]
    candidate_widths: tuple[int, ...]
    order: tuple[str, ...]
    user_mlp: tuple[int, ...] = ()  # hidden widths of a user-only MLP applied to u0 before the concat
    consumer_widths: tuple[int, ...] = (4,)  # one Linear consumer of the concat per entry
    depth: int = 1  # Linear+ReLU layers after each consumer
    hidden: int = 4
    flatten_after_concat: bool = False  # x.view(x.size(0), -1) between the concat and its consumers


class RandomConcatRanker(nn.Module):
    """Interleaved user/candidate concat read by several Linear consumers, each with its own MLP head."""

    def __init__(self, config: RandomConcatConfig) -> None:
        super().__init__()
        self.config = config
        widths = {f"u{i}": w for i, w in enumerate(config.user_widths)}
        widths |= {f"c{j}": w for j, w in enumerate(config.candidate_widths)}
        self.user_mlp = None
        if config.user_mlp:
            self.user_mlp = nn.Sequential(_mlp((widths["u0"], *config.user_mlp)), nn.ReLU())
            widths["u0"] = config.user_mlp[-1]
        d_in = sum(widths[name] for name in config.order)
        self.consumers = nn.ModuleList(nn.Linear(d_in, w) for w in config.consumer_widths)
        self.heads = nn.ModuleList(
            _mlp((w, *([config.hidden] * config.depth), 1)) for w in config.consumer_widths
        )

    def forward(self, features: dict[str, Tensor]) -> Tensor:
        parts = dict(features)
        if self.user_mlp is not None:
            parts["u0"] = self.user_mlp(parts["u0"])
        x = torch.cat([parts[name] for name in self.config.order], dim=1)
        if self.config.flatten_after_concat:
            x = x.view(x.size(0), -1)
        logit = sum(head(F.relu(consumer(x))) for consumer, head in zip(self.consumers, self.heads))
        return torch.sigmoid(logit).squeeze(1)  # (N,)
