"""Both rankers are capturable by torch.export (non-strict) with a dynamic candidate batch."""

import torch

from tests.models.conftest import TileUserFeatures, small_model


def test_ranker_exports_with_a_dynamic_candidate_batch(architecture_name: str) -> None:
    _, _, model, schema = small_model(architecture_name)
    served = TileUserFeatures(model, schema).eval()
    example = schema.example_batch(4, torch.Generator().manual_seed(0))
    candidates = torch.export.Dim("candidates", min=2)
    dynamic = {"features": {spec.name: None if spec.is_user else {0: candidates} for spec in schema.features}}
    exported = torch.export.export(served, (example,), dynamic_shapes=dynamic, strict=False)
    for n in (1, 3, 33):
        batch = schema.example_batch(n, torch.Generator().manual_seed(n))
        with torch.no_grad():
            expected = served(batch)
            actual = exported.module()(batch)
        for task in expected:
            assert actual[task].shape == (n,)
            torch.testing.assert_close(actual[task], expected[task], rtol=0, atol=1e-6)
