"""Property: for random interleaved-concat rankers, UOI and MaRI equal VanI (the eager model on tiled user
inputs) in float64 within 1e-10, for random layouts, widths, depths, consumers and batch sizes."""

from __future__ import annotations

import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from service.engine import Variant, reparameterize_all
from tests.engine.conftest import (
    ReferenceCase,
    assert_equivalent,
    candidate_input,
    randomize_,
    reference_scores,
    run_variant,
    user_input,
)
from tests.engine.reference_models import RandomConcatConfig, RandomConcatRanker

widths = st.integers(min_value=1, max_value=5)


@st.composite
def random_configs(draw: st.DrawFn) -> RandomConcatConfig:
    user_widths = tuple(draw(st.lists(widths, min_size=1, max_size=3)))
    candidate_widths = tuple(draw(st.lists(widths, min_size=1, max_size=3)))
    names = [f"u{i}" for i in range(len(user_widths))] + [f"c{j}" for j in range(len(candidate_widths))]
    return RandomConcatConfig(
        user_widths=user_widths,
        candidate_widths=candidate_widths,
        order=tuple(draw(st.permutations(names))),
        user_mlp=tuple(draw(st.lists(st.integers(1, 6), max_size=2))),
        consumer_widths=tuple(draw(st.lists(st.integers(1, 6), min_size=1, max_size=3))),
        depth=draw(st.integers(0, 2)),
        hidden=draw(st.integers(1, 6)),
        flatten_after_concat=draw(st.booleans()),
    )


def _case(config: RandomConcatConfig) -> ReferenceCase:
    inputs = tuple(user_input(f"u{i}", w) for i, w in enumerate(config.user_widths))
    inputs += tuple(candidate_input(f"c{j}", w) for j, w in enumerate(config.candidate_widths))
    return ReferenceCase("random_concat", lambda: RandomConcatRanker(config), inputs, takes_dict=True)


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    config=random_configs(),
    seed=st.integers(0, 2**31 - 1),
    build_n=st.integers(2, 50),
    n=st.integers(1, 50),
)
def test_uoi_and_mari_equal_vani_in_float64_on_random_interleaved_models(config, seed, build_n, n):
    case, dtype = _case(config), torch.float64
    generator = torch.Generator().manual_seed(seed)
    model = randomize_(case.build(), generator).to(dtype).eval()
    example = case.call_args(case.random_inputs(build_n, dtype, generator))
    values = case.random_inputs(n, dtype, generator)
    reference = reference_scores(model, case, values, n)

    # one capture derives both (what a server builds at start-up); reparameterize(variant) is this for one variant
    variants = (Variant.UOI, Variant.MARI)
    built = reparameterize_all(model, example, case.user_inputs, variants)
    for variant in variants:
        result = built[variant]
        assert result.report.variant == variant, result.report.fallback_reason
        assert_equivalent(run_variant(result.module, case, values), reference, dtype)
