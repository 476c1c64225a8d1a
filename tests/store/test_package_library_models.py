"""Library-shaped rankers (tests/engine/library_models.py) the user's whole way: package() -> the store's JSON
program -> load -> every variant built from the loaded program, as the service builds it. Scores equal the
user's own eager model; the stored program keeps eager's one GEMM for a 2-D kernel times a batch."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from service.engine import Variant
from service.engine.graph_tools import aten
from service.serving.build import build_variants
from service.store import load_artifact, package
from tests.engine.library_models import MODELS, randomize_weights

SIZE = "tiny"
TOLERANCE = 1e-5  # post-sigmoid scores, docs/ARCHITECTURE.md section 3


@pytest.mark.parametrize("name", list(MODELS))
def test_a_packaged_library_model_serves_every_variant_equal_to_its_eager_model(name: str, tmp_path: Path) -> None:
    library = MODELS[name]
    schema = library.schema(SIZE)
    generator = torch.Generator().manual_seed(17)
    model = randomize_weights(library.build(SIZE), generator).eval()
    package(model, schema.example_batch(8, generator), schema, tasks=list(library.tasks), store=tmp_path, name="m")
    loaded = load_artifact(tmp_path / "m")
    built = build_variants(loaded.model, loaded.user_features, schema.example_batch)
    for variant in Variant:
        assert (built[variant].report.variant, built[variant].report.fallback_reason) == (variant, None)
    for n in (1, 6, 200):
        served, tiled = schema.example_batches(n, generator)
        with torch.no_grad():
            reference = model(tiled)
            for variant in Variant:
                scores = built[variant].module(served)
                for column, task in enumerate(library.tasks):
                    difference = (scores[task] - reference[:, column]).abs().max().item()
                    assert difference <= TOLERANCE, (name, variant, n, task, difference)


def test_the_stored_cross_network_multiplies_its_kernels_as_one_gemm_not_a_bmm_over_copies(tmp_path: Path) -> None:
    """Without grad on the loaded weights, matmul(kernel[d, d], x[B, d, 1]) expands the kernel B times."""
    library = MODELS["deepctr_dcn_matrix"]
    schema = library.schema(SIZE)
    package(library.build(SIZE).eval(), schema.example_batch(8), schema, tasks=list(library.tasks),
            store=tmp_path, name="m")
    loaded = load_artifact(tmp_path / "m")
    stored = loaded.model.graph
    batched = [n for n in stored.nodes if n.target == aten.bmm.default or n.target == aten.matmul.default
               and n.args[1].meta["val"].dim() >= 3]
    assert not batched
    kernels = [n for n in stored.nodes if n.target == aten.linear.default and n.args[1].target == aten.select.int
               and "kernels" in str(n.args[1].args[0].target)]
    assert len(kernels) == 2  # one per cross layer
    assert not any(p.requires_grad for p in loaded.model.parameters())  # why eager's mm was lost
