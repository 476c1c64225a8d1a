"""How far two versions' rankings agree: hand-computed small cases (scipy is not installed to check against)."""

from __future__ import annotations

import math

import numpy as np
import pytest

from service.serving.agreement import agreement, kendall_tau, spearman_rho, top_k


def scores(*values: float) -> np.ndarray:
    return np.array(values, dtype=np.float32)


def test_identical_rankings_agree_fully_and_differ_by_nothing() -> None:
    primary = np.random.default_rng().normal(size=50).astype(np.float32)
    result = agreement(primary, primary.copy(), k=10)
    assert (result.k, result.overlap, result.kendall_tau, result.spearman_rho) == (10, 1.0, 1.0, 1.0)
    assert result.difference_p50 == result.difference_p90 == result.difference_max == 0.0


def test_a_reversed_ranking_has_tau_and_rho_minus_one_and_a_small_overlap() -> None:
    result = agreement(scores(4, 3, 2, 1, 0), scores(0, 1, 2, 3, 4), k=3)
    # primary top-3 {0, 1, 2}, other top-3 {4, 3, 2}: one shared; over the primary's top-3 the other's order is reversed
    assert result.overlap == pytest.approx(1 / 3)
    assert result.kendall_tau == -1.0 and result.spearman_rho == -1.0
    # |differences| = 4, 2, 0, 2, 4: median 2; p90 at position 3.6 of [0, 2, 2, 4, 4] -> 4
    assert (result.difference_p50, result.difference_p90, result.difference_max) == (2.0, 4.0, 4.0)


def test_one_swapped_pair_in_five() -> None:
    result = agreement(scores(4, 3, 2, 1, 0), scores(3, 4, 2, 1, 0), k=5)
    # 10 pairs, 1 discordant: tau = (9 - 1) / 10; ranks differ by 1 at two places: rho = 1 - 6 * 2 / (5 * 24)
    assert result.kendall_tau == pytest.approx(0.8) and result.spearman_rho == pytest.approx(0.9)
    assert result.overlap == 1.0


def test_ties_follow_tau_b_and_average_ranks() -> None:
    x, y = scores(1, 2, 2, 3), scores(1, 2, 3, 4)
    # 6 pairs: 5 concordant, 1 tied in x only: tau_b = 5 / sqrt(5 * 6)
    assert kendall_tau(x, y) == pytest.approx(5 / math.sqrt(30))
    # ranks x = 1, 2.5, 2.5, 4; y = 1, 2, 3, 4: Pearson of the ranks = 4.5 / sqrt(4.5 * 5)
    assert spearman_rho(x, y) == pytest.approx(4.5 / math.sqrt(22.5))


def test_no_order_to_compare_is_none_not_a_number() -> None:
    result = agreement(scores(1.0), scores(2.0), k=10)
    assert result.k == 1 and result.overlap == 1.0 and result.kendall_tau is None and result.spearman_rho is None
    assert kendall_tau(scores(1, 1, 1), scores(1, 2, 3)) is None and spearman_rho(scores(1, 2), scores(5, 5)) is None


def test_top_k_breaks_ties_by_index_as_the_response_ranking_does() -> None:
    assert top_k(scores(1, 3, 3, 2), 3).tolist() == [1, 2, 3]


def test_the_measures_stay_in_their_ranges_on_random_scores() -> None:
    rng = np.random.default_rng()
    for _ in range(200):
        n = int(rng.integers(1, 40))
        result = agreement(rng.normal(size=n), rng.normal(size=n), k=int(rng.integers(1, 15)))
        assert 0.0 <= result.overlap <= 1.0
        assert all(v is None or -1.0 <= v <= 1.0 for v in (result.kendall_tau, result.spearman_rho))
        assert 0.0 <= result.difference_p50 <= result.difference_p90 <= result.difference_max


def test_mismatched_shapes_and_k_below_one_are_refused() -> None:
    with pytest.raises(ValueError, match="same N"):
        agreement(scores(1, 2), scores(1, 2, 3), k=2)
    with pytest.raises(ValueError, match="k must be"):
        agreement(scores(1, 2), scores(1, 2), k=0)
