"""How far two model versions' rankings of the same candidates agree (the version comparison, issue 19 item 3).

Two versions are different models: unlike the variant shadow (same model, must be equal) nothing here is a
mismatch. The measures, on the final scores `primary` and `other` of the same N candidates:

- overlap: the share of the primary's top-k that is also in the other's top-k (1: the same k candidates);
- Kendall tau-b and Spearman rho of the two versions' scores over the primary's top-k candidates: whether
  the candidates the primary shows are ordered alike (1: same order, -1: reversed); None when k < 2 or one
  version scores those candidates all alike (no order to compare);
- p50, p90 and max of |primary - other| over all N candidates.

Ties in the top-k are broken by candidate index, as the response's ranking does (a stable sort).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

Scores = npt.NDArray[np.floating]


@dataclass(frozen=True)
class Agreement:
    """One comparison of two versions on one request."""

    k: int  # min(top_k, N)
    overlap: float  # in [0, 1]
    kendall_tau: float | None  # in [-1, 1]
    spearman_rho: float | None  # in [-1, 1]
    difference_p50: float
    difference_p90: float
    difference_max: float


def top_k(scores: Scores, k: int) -> npt.NDArray[np.intp]:
    """Indices of the k highest scores, highest first (ties: lower index first)."""
    return np.argsort(-scores, kind="stable")[:k]


def agreement(primary: Scores, other: Scores, k: int) -> Agreement:
    """The agreement of `other` with `primary` (final scores [N] of the same candidates) at top-k."""
    if primary.shape != other.shape or primary.ndim != 1 or primary.size == 0:
        raise ValueError(f"expected two score vectors [N] of the same N > 0, got {primary.shape} and {other.shape}")
    if k < 1:
        raise ValueError(f"k must be at least 1, got {k}")
    a, b = primary.astype(np.float64), other.astype(np.float64)
    k = min(k, a.size)
    mine = top_k(a, k)
    shared = np.intersect1d(mine, top_k(b, k)).size
    difference = np.abs(a - b)
    return Agreement(
        k=k, overlap=shared / k, kendall_tau=kendall_tau(a[mine], b[mine]),
        spearman_rho=spearman_rho(a[mine], b[mine]),
        difference_p50=float(np.quantile(difference, 0.5)), difference_p90=float(np.quantile(difference, 0.9)),
        difference_max=float(difference.max()),
    )


def kendall_tau(x: Scores, y: Scores) -> float | None:
    """Kendall's tau-b of two score vectors (ties counted as scipy.stats.kendalltau does); None when undefined."""
    dx = np.sign(x[:, None] - x[None, :])  # [k, k]; O(k^2), k is a top-k (tens)
    dy = np.sign(y[:, None] - y[None, :])
    upper = np.triu_indices(x.size, k=1)
    sx, sy = dx[upper], dy[upper]
    untied_x, untied_y = np.count_nonzero(sx), np.count_nonzero(sy)
    if untied_x == 0 or untied_y == 0:
        return None
    return _bounded(float(np.sum(sx * sy)) / float(np.sqrt(untied_x * untied_y)))


def spearman_rho(x: Scores, y: Scores) -> float | None:
    """Spearman's rho: the Pearson correlation of the ranks (ties get their average rank); None when undefined."""
    rx, ry = _average_ranks(x), _average_ranks(y)
    rx, ry = rx - rx.mean(), ry - ry.mean()
    norm = float(np.sqrt(np.sum(rx * rx) * np.sum(ry * ry)))
    if norm == 0.0:
        return None
    return _bounded(float(np.sum(rx * ry)) / norm)


def _average_ranks(values: Scores) -> npt.NDArray[np.float64]:
    order = np.argsort(values, kind="stable")
    ranks = np.empty(values.size, dtype=np.float64)
    ranks[order] = np.arange(1, values.size + 1)
    ordered = np.sort(values)
    for value in np.unique(ordered[1:][np.diff(ordered) == 0]):  # each value held by more than one candidate
        tied = values == value
        ranks[tied] = ranks[tied].mean()
    return ranks


def _bounded(value: float) -> float:
    """Clip float rounding (1.0000000000000002) back into [-1, 1]."""
    return min(1.0, max(-1.0, value))
