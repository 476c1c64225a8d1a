"""Rankers shaped like the public libraries' (tests/engine/library_models.py), live modules: every variant
equals the user's own eager model on tiled features, at several N including 1, and MaRI does less arithmetic."""

from __future__ import annotations

import functools
import zlib

import pytest
import torch

from service.engine import Reparameterized, Variant, reparameterize_all
from tests.engine.conftest import assert_built_with_less_arithmetic, assert_equivalent
from tests.engine.library_models import MODELS, randomize_weights

SIZE = "tiny"


@functools.cache
def built(name: str) -> tuple[torch.nn.Module, dict[Variant, Reparameterized]]:
    library = MODELS[name]
    model = randomize_weights(library.build(SIZE), torch.Generator().manual_seed(zlib.crc32(name.encode()))).eval()
    example = library.schema(SIZE).example_batch(5, torch.Generator().manual_seed(3))
    return model, reparameterize_all(model, (example,), library.user_features(SIZE))


@pytest.mark.parametrize("n", [1, 7, 300])
@pytest.mark.parametrize("variant", list(Variant), ids=lambda v: v.value)
@pytest.mark.parametrize("name", list(MODELS))
def test_variant_matches_the_library_models_eager_scores_on_tiled_features(name, variant, n, generator):
    model, results = built(name)
    served, tiled = MODELS[name].schema(SIZE).example_batches(n, generator)
    with torch.inference_mode():
        actual = results[variant].module(served)
        reference = model(tiled)
    assert_equivalent(actual, reference, torch.float32)


@pytest.mark.parametrize("name", list(MODELS))
def test_every_variant_is_built_and_mari_does_less_arithmetic_than_vani(name):
    assert_built_with_less_arithmetic(built(name)[1])
