"""Every variant the engine derives reproduces the original eager model with tiled user inputs
(docs/ARCHITECTURE.md section 3).

The reference is always the ORIGINAL model called on user leaves tiled to N rows; the variant module gets
user leaves at batch 1. Each (model, dtype) gets random weights seeded from that id and is captured once, at an
example batch of 7 candidates, its three variants derived from that capture (a capture costs ~1 s, so the tests
share it); every test draws its own fresh inputs, seeded from the test id, and each variant's one module is
called at N = 1, 7 and 1000.
"""

from __future__ import annotations

import functools
import zlib
from dataclasses import dataclass

import pytest
import torch
import torch.fx
from torch import Tensor, nn

from service.engine import Reparameterized, Variant, reparameterize_all
from tests.engine.conftest import (
    CASES,
    ReferenceCase,
    assert_equivalent,
    build_model,
    reference_scores,
    run_variant,
    score_bound,
    score_matrix,
)

VARIANTS = [Variant.VANI, Variant.UOI, Variant.MARI]
DTYPES = [torch.float32, torch.float64]
CASE_NAMES = list(CASES)
BUILD_N = 7

# What MaRI must find in each reference model: the one user/candidate concat, its user and candidate widths,
# and the out_features of every Linear/matmul it splits (sorted).
EXPECTED_SPLITS: dict[str, tuple[int, int, list[int]]] = {
    "interleaved_concat": (3 + 2 + 6, 4 + 5, [16]),
    "layer_norm_over_concat": (4 + 3, 6, [1]),  # only the wide Linear; the deep one sits behind LayerNorm
    "batch_norm_over_concat": (5, 4 + 3, [8]),  # BatchNorm folded into fc1
    "batch_size_reading_user_tower": (4 + 3, 4 + 3, [8]),
    "user_mlp_tower": (6, 5, [8]),
    "target_attention": (3, 6 + 4, [8]),  # attended (N-side) + item embedding vs user_dense
    "mmoe_shared_concat": (4 + 3, 5 + 2, [3, 3, 8, 8, 8, 8, 8]),  # 2 gates, 3 experts, 2 tower skips
    "dict_in_dict_out": (4 + 1, 4 + 1 + 2, [8]),
    "untraceable_dict_loop": (3 + 5, 4 + 2, [8]),
    "matmul_flavours": (4, 6, [8, 8, 8, 8]),  # F.linear, torch.matmul, @, nn.Linear
}
# Models with user-only arithmetic before the merge: UOI must do less work than VanI.
USER_ONLY_COMPUTE = [
    "batch_size_reading_user_tower",
    "user_mlp_tower",
    "target_attention",
    "untraceable_dict_loop",
]


@dataclass
class Built:
    """A reference model, the variant the engine built from it, and the model's weights before the build."""

    model: nn.Module
    result: Reparameterized
    state_before: dict[str, Tensor]


def _seed(*parts: object) -> int:
    return zlib.crc32("/".join(map(str, parts)).encode())


@functools.cache
def _built_all(case_name: str, dtype: torch.dtype) -> dict[Variant, Built]:
    """One model per (case, dtype) and its three variants from ONE capture (reparameterize_all, what a server builds
    at start-up): reparameterize() per variant re-ran torch.export and rebuilt VanI for UOI and MaRI."""
    case = CASES[case_name]
    generator = torch.Generator().manual_seed(_seed(case_name, dtype))
    model = build_model(case, dtype, generator)
    state_before = {k: v.clone() for k, v in model.state_dict().items()}
    example = case.call_args(case.random_inputs(BUILD_N, dtype, generator))
    results = reparameterize_all(model, example, case.user_inputs, VARIANTS)
    return {variant: Built(model, result, state_before) for variant, result in results.items()}


def built(case_name: str, variant: Variant, dtype: torch.dtype) -> Built:
    return _built_all(case_name, dtype)[variant]


def _check_at(case: ReferenceCase, build: Built, dtype: torch.dtype, n: int, generator) -> None:
    values = case.random_inputs(n, dtype, generator)
    actual = run_variant(build.result.module, case, values)
    reference = reference_scores(build.model, case, values, n)
    assert score_matrix(reference).shape[0] == n
    assert_equivalent(actual, reference, dtype, case.post_sigmoid)


# -- equivalence -----------------------------------------------------------------------------------


@pytest.mark.parametrize("n", [1, 7, 1000])
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("variant", VARIANTS, ids=lambda v: v.value)
@pytest.mark.parametrize("case_name", CASE_NAMES)
def test_variant_built_with_7_candidates_matches_eager_model_on_tiled_user_inputs_at_n(
    case_name, variant, dtype, n, generator
):
    # One build (example batch of 7) serves N = 1, 7 and 1000: the module must be batch-polymorphic.
    _check_at(CASES[case_name], built(case_name, variant, dtype), dtype, n, generator)


@pytest.mark.parametrize("variant", VARIANTS, ids=lambda v: v.value)
@pytest.mark.parametrize("case_name", CASE_NAMES)
def test_candidate_scored_in_batch_of_1000_equals_candidate_scored_alone(case_name, variant, generator):
    case, dtype = CASES[case_name], torch.float32
    module = built(case_name, variant, dtype).result.module
    values = case.random_inputs(1000, dtype, generator)
    in_batch = score_matrix(run_variant(module, case, values))
    bound = score_bound(in_batch, dtype, case.post_sigmoid)
    for row in (0, 1, 499, 998, 999):
        alone_values = {
            name: value if name in case.user_inputs else value[row : row + 1] for name, value in values.items()
        }
        alone = score_matrix(run_variant(module, case, alone_values))
        worst = (alone[0] - in_batch[row]).abs().max().item()
        assert worst <= bound, f"candidate {row}: alone vs in batch differ by {worst:.3e} > {bound:.1e}"


@pytest.mark.parametrize("variant", VARIANTS, ids=lambda v: v.value)
@pytest.mark.parametrize("case_name", CASE_NAMES)
def test_reparameterize_leaves_the_trained_model_untouched(case_name, variant):
    build = built(case_name, variant, torch.float32)
    after = build.model.state_dict()
    assert list(after) == list(build.state_before)
    for key, value in build.state_before.items():
        assert torch.equal(after[key], value), f"reparameterize modified {key}"


def test_untraceable_reference_model_really_defeats_symbolic_trace():
    with pytest.raises(torch.fx.proxy.TraceError):
        torch.fx.symbolic_trace(CASES["untraceable_dict_loop"].build())


# -- report ----------------------------------------------------------------------------------------


@pytest.mark.parametrize("variant", VARIANTS, ids=lambda v: v.value)
@pytest.mark.parametrize("case_name", CASE_NAMES)
def test_requested_variant_is_built_without_falling_back_to_vani(case_name, variant):
    report = built(case_name, variant, torch.float32).result.report
    assert report.requested == variant
    assert (report.variant, report.fallback_reason) == (variant, None)


@pytest.mark.parametrize("case_name", CASE_NAMES)
def test_mari_report_lists_the_split_matmuls_of_the_user_candidate_concat(case_name):
    report = built(case_name, Variant.MARI, torch.float32).result.report
    user_width, candidate_width, out_features = EXPECTED_SPLITS[case_name]
    assert [(c.user_width, c.candidate_width) for c in report.concats] == [(user_width, candidate_width)]
    assert sorted(c.out_features for c in report.rewritten) == out_features
    if case_name != "layer_norm_over_concat":
        assert report.not_rewritten == []


def test_mari_report_says_layer_norm_stops_the_split_of_the_deep_linear():
    # LayerNorm's mean and variance run over the whole concatenated row, so LN(concat(U, C)) @ W cannot be
    # written as f(U) + g(C): the Linear after it must stay whole, and the report must say why.
    report = built("layer_norm_over_concat", Variant.MARI, torch.float32).result.report
    deep_hidden = 8
    assert deep_hidden not in [c.out_features for c in report.rewritten]
    reasons = [c.reason for c in report.not_rewritten]
    assert any("layer_norm" in reason for reason in reasons), reasons


@pytest.mark.parametrize("variant", [Variant.VANI, Variant.UOI], ids=lambda v: v.value)
def test_vani_and_uoi_split_no_matmul(variant):
    for case_name in CASE_NAMES:
        assert built(case_name, variant, torch.float32).result.report.rewritten == []


def test_uoi_reports_where_user_data_meets_candidates():
    for case_name in CASE_NAMES:
        assert built(case_name, Variant.UOI, torch.float32).result.report.merges, case_name


@pytest.mark.parametrize("case_name", CASE_NAMES)
def test_each_variant_does_less_arithmetic_than_the_one_before(case_name):
    flops = {v: built(case_name, v, torch.float32).result.flops(1000) for v in VARIANTS}
    assert flops[Variant.MARI] < flops[Variant.UOI] <= flops[Variant.VANI]
    if case_name in USER_ONLY_COMPUTE:
        assert flops[Variant.UOI] < flops[Variant.VANI]
