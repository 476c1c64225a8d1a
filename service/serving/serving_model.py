"""The loaded model: one artifact with every variant built, checked and warmed, never mutated (a reload builds a
new one); and the task-weighted score that orders candidates."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from service.engine import Variant
from service.serving.codec import RequestCodec
from service.serving.fastest import FastestForms
from service.serving.variant_status import VariantStatus


@dataclass(frozen=True)
class ServingModel:
    """One artifact with every variant built, checked against VanI and warmed; never mutated."""

    name: str
    version: str
    path: Path
    architecture: str
    tasks: tuple[str, ...]
    task_weights: Tensor  # [T], float32, in `tasks` order
    codec: RequestCodec
    variants: dict[Variant, nn.Module]
    statuses: dict[Variant, VariantStatus]  # what each variant runs as, and whether it batches
    analysis: dict[str, Any]
    manifest: dict[str, Any]
    loaded_at: str
    fastest: FastestForms  # every form timed at the warm-up sizes: what `auto` serves per request size
    compilation: dict[str, Any] = field(default_factory=dict)  # compile.CompileReport.to_dict()
    batched: dict[Variant, nn.Module] = field(default_factory=dict)  # segment-batched forms (batching on)

    def score(self, variant: Variant, features: dict[str, Tensor]) -> dict[str, Tensor]:
        """Per-task scores [N] of one request (user leaves at batch 1, candidates at batch N)."""
        with torch.inference_mode():
            scores: dict[str, Tensor] = self.variants[variant](features)
        return scores

    def score_batch(self, variant: Variant, requests: list[dict[str, Tensor]]) -> list[dict[str, Tensor]]:
        """Per-task scores of several requests scored as one call (the user side kept split); KeyError when
        `variant` has no batched form."""
        batched = self.batched[variant]
        with torch.inference_mode():
            scores: list[dict[str, Tensor]] = batched([((features,), {}) for features in requests])
        return scores

    def final_scores(self, scores: dict[str, Tensor]) -> Tensor:
        """Task-weighted sum [N] that orders the candidates."""
        return final_scores(scores, self.tasks, self.task_weights)


@dataclass(frozen=True)
class Scored:
    """One request's per-task scores [N] and their task-weighted sum [N], both checked finite on the inference
    slot, so the response is written without another torch call on the event loop."""

    scores: dict[str, Tensor]
    final: Tensor


def final_scores(scores: dict[str, Tensor], tasks: tuple[str, ...], task_weights: Tensor) -> Tensor:
    """Task-weighted sum [N] of per-task scores, the order of the candidates."""
    stacked = torch.stack([scores[task] for task in tasks])  # [T, N]
    return task_weights @ stacked
