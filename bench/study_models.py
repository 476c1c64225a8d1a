"""The paper's offline-study ranker: user, item and cross features -> concat -> MLP -> sigmoid.

A plain nn.Module with every size in `StudyConfig`; the engine derives VanI, UOI and MaRI from it like
from any other model. `chunk > 0` interleaves user and candidate columns in the concat (user chunk,
candidate chunk, ...) to reproduce the paper's fragmented-layout study.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import torch
from torch import Tensor, nn

USER_INPUTS = ("user",)


@dataclass(frozen=True)
class StudyConfig:
    user_width: int = 1024  # D_U: dense user features (profile, pooled behaviour sequence)
    item_width: int = 128  # D_I: dense item features
    cross_width: int = 64  # D_X: user x item cross features
    hidden: int = 512  # MLP [hidden, hidden // 2, 1]
    user_tower: int = 64  # bottleneck of a small user tower D_U -> user_tower -> D_U; 0 = none
    chunk: int = 0  # > 0: interleave user and candidate columns in chunks of this many columns

    def with_(self, **changes: int) -> StudyConfig:
        return replace(self, **changes)


class StudyRanker(nn.Module):
    def __init__(self, config: StudyConfig) -> None:
        super().__init__()
        self.config = config
        c = config
        self.user_tower = (
            nn.Sequential(nn.Linear(c.user_width, c.user_tower), nn.ReLU(),
                          nn.Linear(c.user_tower, c.user_width), nn.ReLU())
            if c.user_tower
            else nn.Identity()
        )
        width = c.user_width + c.item_width + c.cross_width
        self.mlp = nn.Sequential(
            nn.Linear(width, c.hidden), nn.ReLU(), nn.Linear(c.hidden, c.hidden // 2), nn.ReLU(),
            nn.Linear(c.hidden // 2, 1),
        )

    def forward(self, features: dict[str, Tensor]) -> Tensor:
        user = self.user_tower(features["user"])  # (N, D_U): written for a batch of (user, item) rows
        candidate = torch.cat([features["item"], features["cross"]], dim=-1)  # (N, D_I + D_X)
        if self.config.chunk:
            x = torch.cat(interleave(user, candidate, self.config.chunk), dim=-1)
        else:
            x = torch.cat([user, candidate], dim=-1)  # (N, D_U + D_I + D_X)
        return torch.sigmoid(self.mlp(x)).squeeze(-1)  # (N,)


def interleave(user: Tensor, candidate: Tensor, chunk: int) -> list[Tensor]:
    """Column slices in the order user chunk, candidate chunk, ...; the longer side's tail comes last."""
    user_parts = [user[:, i : i + chunk] for i in range(0, user.size(1), chunk)]
    cand_parts = [candidate[:, i : i + chunk] for i in range(0, candidate.size(1), chunk)]
    parts: list[Tensor] = []
    for i in range(max(len(user_parts), len(cand_parts))):
        parts += user_parts[i : i + 1] + cand_parts[i : i + 1]
    return parts


def study_inputs(config: StudyConfig, n: int, seed: int = 0) -> dict[str, Tensor]:
    """One request: the user at batch 1, n candidates."""
    g = torch.Generator().manual_seed(seed)
    return {
        "user": torch.randn(1, config.user_width, generator=g),
        "item": torch.randn(n, config.item_width, generator=g),
        "cross": torch.randn(n, config.cross_width, generator=g),
    }


def build_study_model(config: StudyConfig, seed: int = 0) -> StudyRanker:
    torch.manual_seed(seed)
    return StudyRanker(config).eval()
