"""Train a registered ranker on seeded synthetic data, report holdout AUC, and store it as an artifact."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, cast

import torch
from torch import Tensor, nn
from torch.nn import functional as F

from service.engine.variants import CAPTURE_CANDIDATES
from service.models import RankerConfig, get_architecture
from service.store.packaging import builtin_source, package
from service.store.versions import next_version
from service.training.auc import roc_auc
from service.training.progress import StepProgress, TrainProgress
from service.training.synthetic import LabeledBatch, make_dataset


@dataclass(frozen=True)
class TrainSettings:
    """Optimisation settings; the defaults train the default ranker in about a minute on 2 cores."""

    steps: int = 500
    batch_size: int = 512
    learning_rate: float = 2e-3
    holdout_rows: int = 16_384
    eval_batch_size: int = 4096


@dataclass
class TrainResult:
    model: nn.Module  # in eval mode
    config: RankerConfig
    metrics: dict[str, Any] = field(default_factory=dict)


def train_model(
    architecture: str,
    seed: int = 0,
    steps: int | None = None,
    config_overrides: dict[str, Any] | None = None,
    settings: TrainSettings | None = None,
    progress: TrainProgress | None = None,
) -> TrainResult:
    """Train `architecture` for `steps` Adam steps (one pass over fresh synthetic rows); deterministic in seed.
    `progress` hears each phase and step (`ranker train` prints them)."""
    settings = settings or TrainSettings()
    steps = settings.steps if steps is None else steps
    if steps < 1:
        raise ValueError(f"steps must be >= 1, got {steps}")
    arch = get_architecture(architecture)
    config = arch.default_config().with_overrides(config_overrides)
    tasks = list(config.tasks)
    if progress:
        progress.phase(f"{architecture}: drawing {steps * settings.batch_size:,} synthetic training rows "
                       f"and {settings.holdout_rows:,} holdout rows")
    train_rows, holdout = make_dataset(
        config.schema(), tasks, steps * settings.batch_size, settings.holdout_rows, seed=seed
    )
    torch.manual_seed(seed)
    model = arch.build(config)
    started = time.perf_counter()
    final_loss = _fit(model, train_rows, steps, settings, progress)
    train_seconds = time.perf_counter() - started
    model.eval()
    if progress:
        progress.phase("holdout AUC")
    metrics = {
        "holdout_auc": evaluate_auc(model, holdout, settings.eval_batch_size),
        # the ceiling: AUC of the true label probabilities the synthetic world drew the labels from
        "oracle_holdout_auc": {task: round(roc_auc(holdout.labels[task], holdout.probabilities[task]), 6)
                               for task in tasks},
        "final_train_loss": final_loss,
        "steps": steps,
        "batch_size": settings.batch_size,
        "learning_rate": settings.learning_rate,
        "train_rows": len(train_rows),
        "holdout_rows": len(holdout),
        "seed": seed,
        "train_seconds": round(train_seconds, 3),
    }
    return TrainResult(model=model, config=config, metrics=metrics)


def _fit(model: nn.Module, rows: LabeledBatch, steps: int, settings: TrainSettings,
         progress: TrainProgress | None = None) -> float:
    """Adam on the sum of per-task BCE losses; returns the mean loss of the last 10% of steps."""
    optimizer = torch.optim.Adam(model.parameters(), lr=settings.learning_rate)
    model.train()
    # Adam moments of rarely seen embedding rows decay into denormals, which are ~10x slower on CPU.
    flushed = torch.set_flush_denormal(True)
    try:
        return _run_steps(model, optimizer, rows, steps, settings.batch_size, progress)
    finally:
        if flushed:
            torch.set_flush_denormal(False)


def _run_steps(
    model: nn.Module, optimizer: torch.optim.Optimizer, rows: LabeledBatch, steps: int, batch_size: int,
    progress: TrainProgress | None = None,
) -> float:
    recent: list[float] = []
    window = max(1, steps // 10)
    started = time.perf_counter()
    for step in range(steps):
        batch = rows.slice(step * batch_size, (step + 1) * batch_size)
        scores = model(batch.features)
        loss = cast(Tensor, sum(F.binary_cross_entropy(scores[task], batch.labels[task]) for task in batch.labels))
        optimizer.zero_grad(set_to_none=True)
        torch.autograd.backward(loss)  # Tensor.backward is untyped in torch (mypy strict)
        optimizer.step()
        recent = (recent + [loss.item()])[-window:]
        if progress:
            progress.step(StepProgress(step + 1, steps, recent[-1], time.perf_counter() - started))
    return sum(recent) / len(recent)


@torch.no_grad()
def evaluate_auc(model: nn.Module, rows: LabeledBatch, batch_size: int = 4096) -> dict[str, float]:
    """Holdout ROC AUC per task of a model in eval mode."""
    chunks = [model(rows.slice(start, start + batch_size).features) for start in range(0, len(rows), batch_size)]
    return {
        task: round(roc_auc(labels, torch.cat([chunk[task] for chunk in chunks])), 6)
        for task, labels in rows.labels.items()
    }


def train_and_save(
    architecture: str,
    store_root: Path | str,
    name: str,
    version: str | None = None,
    seed: int = 0,
    steps: int | None = None,
    config_overrides: dict[str, Any] | None = None,
    progress: TrainProgress | None = None,
) -> Path:
    """Train and write model_store/<name>/<version>/ (version None: the next "vN"); returns that folder."""
    store_root = Path(store_root)
    result = train_model(architecture, seed=seed, steps=steps, config_overrides=config_overrides, progress=progress)
    if progress:
        progress.phase("packaging: torch.export capture, then the stored program checked against the model")
    return save_trained(result, architecture, store_root, name, version or next_version(store_root, name), seed)


def save_trained(result: TrainResult, architecture: str, store_root: Path | str, name: str, version: str,
                 seed: int = 0) -> Path:
    """Package a trained built-in ranker like any user's model: the same store format, one loading path."""
    config = result.config
    if not isinstance(config, get_architecture(architecture).config_cls):
        raise TypeError(f"a {type(config).__name__} does not configure architecture {architecture!r}")
    schema = config.schema()
    example = schema.example_batch(CAPTURE_CANDIDATES, torch.Generator().manual_seed(seed))
    loaded = package(
        result.model, example, schema, tasks=list(config.tasks), task_weights=config.weights_by_task(),
        store=store_root, name=name, version=version, metrics=result.metrics,
        source=builtin_source(architecture, config.to_dict()),
    )
    return loaded.path
