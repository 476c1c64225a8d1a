"""The equivalence policy (docs/ARCHITECTURE.md section 3) on hand-made outputs: differences over output
structures, ranking agreement with its tolerance band, and the tolerance table."""

from __future__ import annotations

import itertools
import math

import pytest
import torch

from service.engine.equivalence import (
    BUILD_CHECK,
    LOGITS,
    POLICY,
    SCORES,
    compare,
    max_difference,
    rankings_agree,
)


def test_the_table_holds_the_serving_bounds_and_the_looser_build_check() -> None:
    assert SCORES.bound(torch.zeros(3)) == 1e-5 and SCORES.bound(torch.zeros(3, dtype=torch.float64)) == 1e-10
    assert SCORES.bound(torch.full((3,), 50.0)) == 1e-5  # post-sigmoid: absolute
    assert LOGITS.bound(torch.full((3,), 50.0)) == pytest.approx(5e-4)  # logits: relative to the largest
    assert LOGITS.bound(torch.full((3,), 0.1)) == 1e-5  # never tighter than the absolute bound
    assert BUILD_CHECK.absolute(torch.float32) == 1e-4 and BUILD_CHECK.absolute(torch.float64) == 1e-9
    assert BUILD_CHECK.bound({"a": torch.tensor([-20.0]), "b": torch.tensor([3.0])}) == pytest.approx(2e-3)
    assert all(row.reason for row in POLICY) and len({row.name for row in POLICY}) == len(POLICY)


def test_max_difference_spans_every_tensor_of_tuples_and_dicts_in_any_key_order() -> None:
    reference = {"click": torch.tensor([0.5, 0.2]), "like": (torch.tensor([0.1]), torch.tensor([0.3, 0.4]))}
    actual = {"like": (torch.tensor([0.1]), torch.tensor([0.3, 0.4003])), "click": torch.tensor([0.5, 0.2001])}
    assert max_difference(actual, reference) == pytest.approx(3e-4, rel=1e-3)
    assert max_difference(torch.tensor([1.0]), torch.tensor([1.0])) == 0.0
    assert max_difference(torch.empty(0), torch.empty(0)) == 0.0


@pytest.mark.parametrize("actual", [
    {"click": torch.tensor([0.5, 0.2])},  # a task missing
    {"click": torch.tensor([0.5]), "like": torch.tensor([0.1, 0.3])},  # a shape changed
    {"click": torch.tensor([float("nan"), 0.2]), "like": torch.tensor([0.1, 0.3])},  # NaN
    (torch.tensor([0.5, 0.2]), torch.tensor([0.1, 0.3])),  # another structure
], ids=["missing key", "shape", "nan", "structure"])
def test_outputs_that_differ_in_structure_shape_or_hold_nan_are_infinitely_apart(actual) -> None:
    reference = {"click": torch.tensor([0.5, 0.2]), "like": torch.tensor([0.1, 0.3])}
    assert max_difference(actual, reference) == math.inf
    assert not compare(actual, reference, 1e-5).equivalent


def test_candidates_closer_than_the_tolerance_may_swap_but_clearly_ordered_ones_may_not() -> None:
    reference = torch.tensor([0.9, 0.5, 0.5000001, 0.1], dtype=torch.float64)
    assert rankings_agree(torch.tensor([0.9, 0.5000001, 0.5, 0.1], dtype=torch.float64), reference, 1e-5)
    assert not rankings_agree(torch.tensor([0.9, 0.1, 0.5, 0.5], dtype=torch.float64), reference, 1e-5)
    assert not rankings_agree(torch.tensor([0.5, 0.9, 0.5, 0.1], dtype=torch.float64), reference, 1e-5)
    # a tie between clearly ordered candidates could sort either way: it is a disagreement
    assert not rankings_agree(torch.tensor([0.9, 0.9, 0.5, 0.1], dtype=torch.float64), reference, 1e-5)


def test_columns_are_ranked_separately() -> None:
    reference = torch.tensor([[0.9, 0.1], [0.1, 0.9]])
    assert rankings_agree(reference.clone(), reference, 1e-5)
    assert not rankings_agree(torch.tensor([[0.9, 0.9], [0.1, 0.1]]), reference, 1e-5)


def test_ranking_agreement_equals_the_all_pairs_definition_on_random_scores() -> None:
    generator = torch.Generator().manual_seed(0)
    tolerance = 0.045  # reference scores on a 0.01 grid: no pair sits on the boundary
    for _ in range(200):
        n = int(torch.randint(1, 9, (1,), generator=generator))
        reference = torch.rand(n, generator=generator, dtype=torch.float64).round(decimals=2)
        actual = reference + (torch.rand(n, generator=generator, dtype=torch.float64) - 0.5) * 0.2
        pairs_agree = all(
            actual[i] > actual[j]
            for i, j in itertools.permutations(range(n), 2)
            if reference[i] - reference[j] >= tolerance
        )
        assert rankings_agree(actual, reference, tolerance) == pairs_agree, (reference, actual)


def test_compare_ranks_by_what_the_caller_orders_candidates_by() -> None:
    weights = torch.tensor([1.0, 0.5])

    def final(scores: dict[str, torch.Tensor]) -> torch.Tensor:
        return weights @ torch.stack([scores["a"], scores["b"]])

    primary = {"a": torch.tensor([0.5, 0.5000001, 0.2]), "b": torch.tensor([0.1, 0.1, 0.3])}
    shadow = {"a": torch.tensor([0.5000001, 0.5, 0.2]), "b": torch.tensor([0.1, 0.1, 0.3000004])}
    result = compare(shadow, primary, 1e-5, rank_by=final)
    assert result.equivalent and result.rankings_agree
    assert result.max_difference == pytest.approx(4e-7, abs=1e-7)
    off = compare({"a": torch.tensor([0.5, 0.5001, 0.2]), "b": primary["b"]}, primary, 1e-5, rank_by=final)
    assert not off.equivalent and off.max_difference == pytest.approx(1e-4, rel=1e-2)


def test_a_tolerance_must_be_positive() -> None:
    with pytest.raises(ValueError, match="tolerance"):
        rankings_agree(torch.ones(3), torch.ones(3), 0.0)
