"""Are two runs of a model equivalent? The equivalence policy of docs/ARCHITECTURE.md section 3, in one place.

The variants are algebraically equal to VanI but not bitwise equal (a split GEMM sums in another order), so
two outputs are equivalent when
- every value is within a tolerance of the reference (`max_difference`), and
- the rankings agree, except between candidates whose reference scores differ by less than the tolerance
  (`rankings_agree`).
The tolerances are the rows of one table (`SCORES`, `LOGITS`, `BUILD_CHECK`). The engine's build-time
check, the service's warm-up and shadow comparisons, and the tests all compare with these functions.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor
from torch.utils import _pytree as pytree


@dataclass(frozen=True)
class Tolerance:
    """One row of the policy: the largest |actual - reference| allowed, per dtype, and why it is that large."""

    name: str
    float32: float  # also used for any dtype other than float64
    float64: float
    relative: bool  # True: scaled by max(1, largest |reference|), for unbounded outputs such as logits
    reason: str

    def absolute(self, dtype: torch.dtype) -> float:
        return self.float64 if dtype == torch.float64 else self.float32

    def bound(self, reference: Any, dtype: torch.dtype | None = None) -> float:
        """The bound for outputs compared with `reference` (a tensor, tuple or dict; dtype from its first tensor)."""
        tensors = _tensors(reference)
        if dtype is None:
            dtype = tensors[0].dtype if tensors else torch.float32
        if not self.relative:
            return self.absolute(dtype)
        scale = max((t.double().abs().max().item() for t in tensors if t.numel()), default=1.0)
        return self.absolute(dtype) * max(1.0, scale)


SCORES = Tolerance(
    "scores", 1e-5, 1e-10, relative=False,
    reason="the serving bound on post-sigmoid scores, per candidate and task (RANKER_TOLERANCE's default)",
)
LOGITS = Tolerance(
    "logits", 1e-5, 1e-10, relative=True,
    reason="raw logits are unbounded and a reordered float sum errs in proportion to the values summed, so the "
           "score bound is taken relative to the largest logit, never tighter than the absolute one",
)
BUILD_CHECK = Tolerance(
    "build_check", 1e-4, 1e-9, relative=True,
    reason="the engine's check of a built variant on its example call, for any model's raw outputs: ten times "
           "looser than SCORES because it only has to catch a wrong rewrite (errors of order 1), not rounding; "
           "the serving bound is checked at warm-up, in shadow mode and in the tests",
)
POLICY = (SCORES, LOGITS, BUILD_CHECK)


@dataclass(frozen=True)
class Comparison:
    """Two outputs under one tolerance: the largest difference and whether the rankings agree."""

    max_difference: float  # inf when the outputs differ in structure or shape, or hold NaN
    rankings_agree: bool
    tolerance: float

    @property
    def equivalent(self) -> bool:
        return self.max_difference <= self.tolerance and self.rankings_agree


def compare(
    actual: Any, reference: Any, tolerance: float, rank_by: Callable[[Any], Tensor] | None = None
) -> Comparison:
    """`actual` against `reference` (tensors, tuples or dicts of the same structure).

    Rankings are compared on `rank_by(output)` (e.g. task-weighted final scores), by default on every output
    tensor, column by column; candidates are rows.
    """
    difference = max_difference(actual, reference)
    if math.isinf(difference):
        return Comparison(difference, False, tolerance)
    if rank_by is not None:
        pairs = [(rank_by(actual), rank_by(reference))]
    else:
        pairs = list(zip(_tensors(_aligned(actual, reference)), _tensors(reference)))
    agree = all(rankings_agree(got, want, tolerance) for got, want in pairs)
    return Comparison(difference, agree, tolerance)


def max_difference(actual: Any, reference: Any) -> float:
    """Largest |actual - reference| over every tensor of two outputs (computed in float64).

    inf when the structures (tensor, tuple, dict keys), shapes or non-tensor leaves differ, or a value is NaN.
    """
    flat_actual, actual_spec = pytree.tree_flatten(_aligned(actual, reference))
    flat_reference, reference_spec = pytree.tree_flatten(reference)
    if actual_spec != reference_spec:
        return math.inf
    worst = 0.0
    for got, want in zip(flat_actual, flat_reference):
        if not isinstance(got, Tensor) or not isinstance(want, Tensor):
            if got != want:
                return math.inf
            continue
        if got.shape != want.shape:
            return math.inf
        if got.numel():
            difference = (got.double() - want.double()).abs().max().item()
            if math.isnan(difference):
                return math.inf
            worst = max(worst, difference)
    return worst


def rankings_agree(actual: Tensor, reference: Tensor, tolerance: float) -> bool:
    """Whether every pair of candidates (rows) whose reference scores differ by at least `tolerance` is
    ranked the same way by `actual` (strictly: a tie there counts as disagreement). Columns of [N, k]
    scores are ranked separately. O(N log N) per column."""
    if tolerance <= 0:
        raise ValueError(f"tolerance must be > 0, got {tolerance}")
    if actual.shape != reference.shape:
        return False
    if actual.dim() == 0 or actual.shape[0] < 2:
        return True
    columns = actual.reshape(actual.shape[0], -1).double(), reference.reshape(reference.shape[0], -1).double()
    return all(_column_agrees(columns[0][:, k], columns[1][:, k], tolerance) for k in range(columns[1].shape[1]))


def _column_agrees(actual: Tensor, reference: Tensor, tolerance: float) -> bool:
    if bool(reference.isnan().any()):
        return False
    order = torch.argsort(reference, descending=True, stable=True)
    ranked_reference, ranked_actual = reference[order], actual[order]
    # later_max[p]: the best actual score among positions p.. of the reference order
    later_max = torch.flip(torch.cummax(torch.flip(ranked_actual, [0]), 0).values, [0])
    # For each position, the first later one whose reference is at least `tolerance` lower (-reference ascends).
    descending = -ranked_reference
    first_clearly_lower = torch.searchsorted(descending, descending + tolerance, side="left")
    has_lower = first_clearly_lower < len(order)
    best_lower = later_max[first_clearly_lower.clamp(max=len(order) - 1)]
    return not bool((has_lower & ~(ranked_actual > best_lower)).any())


def _tensors(output: Any) -> list[Tensor]:
    return [leaf for leaf in pytree.tree_leaves(output) if isinstance(leaf, Tensor)]


def _aligned(actual: Any, reference: Any) -> Any:
    """`actual` with every dict's keys in the reference's order (the key order of an output carries no meaning)."""
    if type(actual) is dict and type(reference) is dict and set(actual) == set(reference):
        return {key: _aligned(actual[key], reference[key]) for key in reference}
    if type(actual) in (tuple, list) and type(actual) is type(reference) and len(actual) == len(reference):
        return type(actual)(_aligned(a, r) for a, r in zip(actual, reference))
    return actual
