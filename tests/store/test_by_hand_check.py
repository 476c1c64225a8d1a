"""README's by-hand check: schema.example_batches gives a request both ways, and the three lines compare the
user's own eager model with the packaged program on it."""

from __future__ import annotations

from pathlib import Path

import torch

from service.store import load_artifact, package
from tests.store.my_ranker import build


def test_example_batches_holds_one_request_at_batch_one_and_tiled() -> None:
    _, _, schema, _ = build(seed=0)
    served, tiled = schema.example_batches(5, torch.Generator().manual_seed(4))
    assert served.keys() == tiled.keys() == set(schema.names)
    again = schema.example_batch(5, torch.Generator().manual_seed(4))
    for spec in schema.features:
        assert torch.equal(served[spec.name], again[spec.name])  # the service's form is example_batch's
        assert tiled[spec.name].shape[0] == 5
        expected = served[spec.name].expand_as(tiled[spec.name]) if spec.is_user else served[spec.name]
        assert torch.equal(tiled[spec.name], expected)


def test_the_readme_lines_compare_the_eager_model_with_the_packaged_program(tmp_path: Path) -> None:
    adapter, features, schema, options = build(seed=1)
    package(adapter, features, schema, store=tmp_path, name="my_ranker", **options)
    # README, "Check it by hand" (Adapter(my_trained_model) is `adapter` here)
    served, tiled = schema.example_batches(8)
    packaged = load_artifact(tmp_path / "my_ranker").model
    eager, stored = torch.sigmoid(adapter(tiled)), packaged(tiled)
    assert eager.shape == (8, 2) and set(stored) == {"click", "like"}
    for column, task in enumerate(("click", "like")):
        assert torch.allclose(eager[:, column], stored[task], atol=1e-5)
