"""The running copy of a variant's graph calls torch's dispatcher directly and gives the same scores bitwise."""

from __future__ import annotations

import torch

from service.engine import Variant, reparameterize_all
from tests.engine.library_models import MODELS, randomize_weights


def test_the_running_copy_calls_no_op_overload_and_scores_bitwise_as_the_aten_graph(generator):
    library = MODELS["rechub_mmoe"]
    model = randomize_weights(library.build("tiny"), generator).eval()
    schema = library.schema("tiny")
    built = reparameterize_all(model, (schema.example_batch(4, generator),), library.user_features("tiny"))
    served, _ = schema.example_batches(9, generator)
    for variant in Variant:
        runner = built[variant].module
        aten_graph, running = runner.graph_module, runner.running
        assert not [n for n in running.graph.nodes if isinstance(n.target, torch._ops.OpOverload)]
        assert [n for n in aten_graph.graph.nodes if isinstance(n.target, torch._ops.OpOverload)]
        leaves = runner.layout.tensor_leaves((served,), {})
        with torch.inference_mode():
            for got, want in zip(running(*leaves), aten_graph(*leaves), strict=True):
                assert torch.equal(got, want)
