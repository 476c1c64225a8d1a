"""Synthetic ranking data with a planted, learnable signal.

A seeded "world" holds user and item latent factors (items cluster around their category's centroid),
per-user profile fields and dense statistics derived from the user factor, per-item authors, quality and
dense statistics. A training row is (user, candidate item); its labels are Bernoulli draws from
sigmoid(mix of: user-item affinity, sequence affinity (candidate vs. items in the user's history),
item quality, user activity, and a per-row context that only the cross statistics reveal).
Each task uses a different mix. Features are emitted by the feature schema, so any architecture whose
features come from the catalogue below (see `_emit`) gets data; user features are per row (batch B).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from service.features.schema import PADDING_ID, FeatureSchema, FeatureSpec, Kind, Side

LATENT_DIM = 16
CATEGORY_SPREAD = 0.5  # item factor = category centroid + CATEGORY_SPREAD * noise
INTEREST_TEMPERATURE = 2.0  # how sharply a user's history concentrates on preferred categories
MIN_HISTORY = 5
PREFERRED_CANDIDATE_SHARE = 0.5  # share of candidates drawn from the user's preferred categories
DENSE_NOISE = 0.3
CROSS_NOISE = 0.5
CALIBRATION_ROWS = 4096
GENERATION_CHUNK = 8192
SIGNALS = ("affinity", "sequence", "quality", "activity", "context")
# Per-task weights over SIGNALS and a bias: click is broad, long_view follows the history, like is rarer.
TASK_MIXES: dict[str, tuple[tuple[float, ...], float]] = {
    "click": ((1.0, 0.8, 0.6, 0.5, 0.8), -0.5),
    "long_view": ((0.4, 1.4, 0.3, 0.2, 1.0), -1.0),
    "like": ((1.2, 0.3, 1.2, 0.6, 0.4), -1.5),
}


@dataclass(frozen=True)
class LabeledBatch:
    features: dict[str, Tensor]  # every feature at batch n (user features included)
    labels: dict[str, Tensor]  # task -> float32 {0, 1} [n]
    probabilities: dict[str, Tensor]  # task -> the true label probability [n] (the oracle's score)

    def __len__(self) -> int:
        return next(iter(self.labels.values())).shape[0]

    def slice(self, start: int, stop: int) -> LabeledBatch:
        return LabeledBatch(
            {name: value[start:stop] for name, value in self.features.items()},
            {task: value[start:stop] for task, value in self.labels.items()},
            {task: value[start:stop] for task, value in self.probabilities.items()},
        )


def _vocab(schema: FeatureSchema, name: str, default: int) -> int:
    return schema.get(name).vocab_size if name in schema else default


class SyntheticWorld:
    """Deterministic (under `seed`) generator of labelled rows for one feature schema and task list."""

    def __init__(self, schema: FeatureSchema, tasks: list[str] | tuple[str, ...], seed: int = 0) -> None:
        self.schema = schema
        self.tasks = tuple(tasks)
        self.generator = torch.Generator().manual_seed(seed)
        g = self.generator
        self.num_users = _vocab(schema, "user_id", 1000)
        self.num_items = _vocab(schema, "item_id", 1000)
        self.num_categories = min(_vocab(schema, "item_category", 50), self.num_items - 1)
        self.num_authors = _vocab(schema, "item_author", 100)
        scale = LATENT_DIM ** -0.25  # so that a dot product of two factors has about unit variance
        self.user_factors = torch.randn(self.num_users, LATENT_DIM, generator=g) * scale
        self.centroids = torch.randn(self.num_categories, LATENT_DIM, generator=g) * scale
        # Item 0 is never a real item: it is the padding id of the behaviour sequence.
        categories = torch.randperm(self.num_items - 1, generator=g) % self.num_categories
        self.item_category = torch.cat([torch.zeros(1, dtype=torch.long), categories])
        self.item_factors = self.centroids[self.item_category] + CATEGORY_SPREAD * scale * torch.randn(
            self.num_items, LATENT_DIM, generator=g
        )
        self.item_author = torch.randint(0, self.num_authors, (self.num_items,), generator=g)
        author_quality = torch.randn(self.num_authors, generator=g)
        self.item_quality = 0.7 * author_quality[self.item_author] + 0.7 * torch.randn(self.num_items, generator=g)
        self.activity_direction = torch.randn(LATENT_DIM, generator=g)
        self.user_activity = self.user_factors @ self.activity_direction / LATENT_DIM ** 0.25
        # items 1..num_items-1 sorted by category, so "a random item of category c" is one index lookup
        order = torch.argsort(self.item_category[1:], stable=True) + 1
        self.items_by_category = order
        counts = torch.bincount(self.item_category[1:], minlength=self.num_categories)
        self.category_count = counts
        self.category_start = torch.cumsum(counts, 0) - counts
        self.mixes = {task: self._task_mix(task) for task in self.tasks}
        self.projections: dict[str, Tensor] = {}
        self.user_tables = {spec.name: self._user_table(spec) for spec in schema.user_features
                            if spec.kind is not Kind.ID_SEQUENCE and spec.name != "user_id"}
        self.signal_mean, self.signal_std = self._calibrate()

    def _task_mix(self, task: str) -> tuple[Tensor, float]:
        if task in TASK_MIXES:
            weights, bias = TASK_MIXES[task]
            return torch.tensor(weights), bias
        return torch.rand(len(SIGNALS), generator=self.generator) + 0.2, -1.0

    def _projection(self, name: str, rows: int, cols: int) -> Tensor:
        """A fixed random map, drawn once per feature, from latent signals to a feature's columns."""
        if name not in self.projections:
            self.projections[name] = torch.randn(rows, cols, generator=self.generator) / rows**0.5
        return self.projections[name]

    def _user_table(self, spec: FeatureSpec) -> Tensor:
        """Per-user value of a profile field or dense statistic, derived from the user's factor."""
        basis = torch.cat([self.user_factors, self.user_activity.unsqueeze(1)], dim=1)  # (U, K+1)
        if spec.kind is Kind.DENSE:
            projection = self._projection(spec.name, basis.shape[1], spec.dim)
            return basis @ projection + DENSE_NOISE * torch.randn(self.num_users, spec.dim, generator=self.generator)
        direction = self._projection(spec.name, basis.shape[1], 1).squeeze(1)
        score = basis @ direction / direction.norm() + 0.5 * torch.randn(self.num_users, generator=self.generator)
        buckets = torch.special.ndtr(score / 1.1) * spec.vocab_size  # roughly uniform over the vocabulary
        ids: Tensor = buckets.long().clamp(0, spec.vocab_size - 1)
        return ids

    def _sample_preferred_items(self, users: Tensor, count: int) -> Tensor:
        """Items from categories a user likes, [n, count]."""
        logits = INTEREST_TEMPERATURE * self.user_factors[users] @ self.centroids.T  # (n, C)
        categories = torch.multinomial(torch.softmax(logits, dim=-1), count, replacement=True, generator=self.generator)
        offsets = (torch.rand(categories.shape, generator=self.generator) * self.category_count[categories]).long()
        return self.items_by_category[self.category_start[categories] + offsets]

    def _rows(self, n: int) -> dict[str, Tensor]:
        """Latent draw of n rows: users, histories, candidates, and the raw signals."""
        g = self.generator
        users = torch.randint(0, self.num_users, (n,), generator=g)
        max_len = self.schema.get("user_seq").max_len if "user_seq" in self.schema else 50
        history = self._sample_preferred_items(users, max_len)
        lengths = torch.randint(min(MIN_HISTORY, max_len), max_len + 1, (n, 1), generator=g)
        valid = torch.arange(max_len).unsqueeze(0) < lengths
        history = torch.where(valid, history, torch.full_like(history, PADDING_ID))
        preferred = self._sample_preferred_items(users, 1).squeeze(1)
        random_items = torch.randint(1, self.num_items, (n,), generator=g)
        use_preferred = torch.rand(n, generator=g) < PREFERRED_CANDIDATE_SHARE
        items = torch.where(use_preferred, preferred, random_items)
        item_factors = self.item_factors[items]
        history_affinity = (self.item_factors[history] * item_factors.unsqueeze(1)).sum(-1)  # (n, L)
        signals = torch.stack(
            [
                (self.user_factors[users] * item_factors).sum(-1),
                (history_affinity * valid).sum(-1) / valid.sum(-1),
                self.item_quality[items],
                self.user_activity[users],
                torch.randn(n, generator=g),
            ],
            dim=1,
        )  # (n, len(SIGNALS))
        return {"users": users, "history": history, "items": items, "signals": signals}

    def _calibrate(self) -> tuple[Tensor, Tensor]:
        signals = self._rows(CALIBRATION_ROWS)["signals"]
        return signals.mean(0), signals.std(0).clamp(min=1e-6)

    def _emit(self, spec: FeatureSpec, rows: dict[str, Tensor], signals: Tensor) -> Tensor:
        users, items, n = rows["users"], rows["items"], rows["users"].shape[0]
        if spec.kind is Kind.ID_SEQUENCE:
            return rows["history"]
        if spec.name == "user_id":
            return users
        if spec.side is Side.USER:
            return self.user_tables[spec.name][users]
        if spec.name == "item_id":
            return items
        if spec.name == "item_category":
            return self.item_category[items]
        if spec.name == "item_author":
            return self.item_author[items]
        if spec.side is Side.ITEM and spec.kind is Kind.SPARSE_ID:
            return items % spec.vocab_size
        if spec.side is Side.ITEM:
            basis = torch.cat([self.item_factors[items], self.item_quality[items].unsqueeze(1)], dim=1)
            noise = DENSE_NOISE * torch.randn(n, spec.dim, generator=self.generator)
            return basis @ self._projection(spec.name, basis.shape[1], spec.dim) + noise
        if spec.kind is Kind.SPARSE_ID:  # cross id: a bucketed context
            cross: Tensor = (torch.special.ndtr(signals[:, -1]) * spec.vocab_size).long().clamp(0, spec.vocab_size - 1)
            return cross
        # cross statistics: noisy views of the affinity, sequence and context signals
        noise = CROSS_NOISE * torch.randn(n, spec.dim, generator=self.generator)
        return signals @ self._projection(spec.name, signals.shape[1], spec.dim) + noise

    def sample(self, n: int) -> LabeledBatch:
        """n labelled rows (every feature at batch n); advances the world's generator."""
        chunks = [self._sample_chunk(min(GENERATION_CHUNK, n - start)) for start in range(0, n, GENERATION_CHUNK)]
        return LabeledBatch(
            {name: torch.cat([chunk.features[name] for chunk in chunks]) for name in self.schema.names},
            {task: torch.cat([chunk.labels[task] for chunk in chunks]) for task in self.tasks},
            {task: torch.cat([chunk.probabilities[task] for chunk in chunks]) for task in self.tasks},
        )

    def _sample_chunk(self, n: int) -> LabeledBatch:
        rows = self._rows(n)
        signals = (rows["signals"] - self.signal_mean) / self.signal_std
        features = {spec.name: self._emit(spec, rows, signals) for spec in self.schema.features}
        probabilities = {task: torch.sigmoid(signals @ weights + bias) for task, (weights, bias) in self.mixes.items()}
        labels = {task: torch.bernoulli(p, generator=self.generator) for task, p in probabilities.items()}
        return LabeledBatch(features, labels, probabilities)


def make_dataset(
    schema: FeatureSchema, tasks: list[str] | tuple[str, ...], n_train: int, n_holdout: int, seed: int = 0
) -> tuple[LabeledBatch, LabeledBatch]:
    """(train, holdout) rows from one world; identical for identical arguments."""
    world = SyntheticWorld(schema, tasks, seed)
    return world.sample(n_train), world.sample(n_holdout)
