"""The pass contract (service/engine/passes.py) on every reference model: each pass of each variant's pipeline
returns a PassResult that says what it changed or why not, and after every pass every node's recorded fake
value (`meta["val"]`) has the shape and dtype that a real run of the graph gives, at N = 3 (neither the trace
batch nor 1): tests/engine/metadata_check.py."""

from __future__ import annotations

import zlib
from collections.abc import Callable
from typing import Any

import pytest
import torch
import torch.fx as fx
from torch import Tensor, nn

from service.engine import Variant
from service.engine.capture import CapturedModel
from service.engine.graph_tools import NodeFactory
from service.engine.passes import PassContext, PassResult
from service.engine.pipeline import FOLD_JAGGED, PIPELINES, fresh_copy
from tests.engine import torchrec_models
from tests.engine.captured import capture_model
from tests.engine.conftest import CASES, build_model
from tests.engine.library_models import MODELS, randomize_weights
from tests.engine.metadata_check import metadata_mismatches

CHECK_N = 3


def _reference_case(name: str) -> tuple[nn.Module, Callable[[int, torch.Generator], tuple[Any, ...]], list[str]]:
    case = CASES[name]
    generator = torch.Generator().manual_seed(zlib.crc32(name.encode()))
    model = build_model(case, torch.float32, generator)
    return model, lambda n, g: case.call_args(case.random_inputs(n, torch.float32, g)), sorted(case.user_inputs)


def _library_model(name: str) -> tuple[nn.Module, Callable[[int, torch.Generator], tuple[Any, ...]], list[str]]:
    library = MODELS[name]
    model = randomize_weights(library.build("tiny"), torch.Generator().manual_seed(zlib.crc32(name.encode()))).eval()
    return model, lambda n, g: (library.schema("tiny").example_batch(n, g),), library.user_features("tiny")


def _torchrec_model(name: str) -> tuple[nn.Module, Callable[[int, torch.Generator], tuple[Any, ...]], list[str]]:
    case = torchrec_models.CASES[name]
    model = torchrec_models.build(case, torch.Generator().manual_seed(zlib.crc32(name.encode())))
    return model, lambda n, g: (case.random_inputs(n, g),), case.user_inputs


MODELS_UNDER_TEST = {
    **{f"reference:{name}": (_reference_case, name) for name in CASES},
    **{f"library:{name}": (_library_model, name) for name in MODELS},
    # the jagged fold's cases (per-key rows, sizes, splits, embedding_bag; jagged_to_padded_dense), not all six:
    # torchrec's KeyedJaggedTensor is slow to capture
    **{f"torchrec:{name}": (_torchrec_model, name) for name in ("multi_hot", "ec_seq")},
}


def run_pipeline(captured: CapturedModel, variant: Variant, leaves: list[Tensor]) -> list[tuple[str, PassResult]]:
    """Every pass of the variant's pipeline in turn, each result's metadata checked against a real run."""
    graph_module = fresh_copy(captured)
    assert metadata_mismatches(graph_module, leaves, captured.batch, CHECK_N) == [], "the captured graph itself"
    context = PassContext(captured.layout, captured.batch)
    results = []
    for step in PIPELINES[variant]:
        result = step.run(graph_module, context)
        assert isinstance(result, PassResult) and isinstance(result.graph_module, fx.GraphModule), step.name
        assert result.modified or result.reason, f"{step.name} changed nothing and did not say why"
        if step.report_field is None:
            assert all(isinstance(r, str) for r in result.records), step.name
        graph_module = result.graph_module
        problems = metadata_mismatches(graph_module, leaves, captured.batch, CHECK_N)
        assert problems == [], f"after {step.name} ({variant.value}): {problems[:5]}"
        results.append((step.name, result))
    return results


@pytest.mark.parametrize("model_name", list(MODELS_UNDER_TEST))
def test_every_pass_keeps_metadata_valid_and_says_what_it_did(model_name):
    make, name = MODELS_UNDER_TEST[model_name]
    model, inputs, user_inputs = make(name)
    generator = torch.Generator().manual_seed(11)
    captured = capture_model(model, inputs(5, generator), user_inputs)
    leaves = captured.layout.tensor_leaves(inputs(CHECK_N, generator), {})
    for variant in Variant:
        names = [name for name, _ in run_pipeline(captured, variant, leaves)]
        assert names == [step.name for step in PIPELINES[variant]]


def test_a_pass_that_changes_nothing_must_say_why():
    graph_module = fx.symbolic_trace(nn.Identity())
    with pytest.raises(ValueError, match="must say why"):
        PassResult(graph_module, False)
    assert PassResult(graph_module, False, reason="nothing to fold").reason == "nothing to fold"


def test_the_checker_catches_stale_metadata():
    """The check can fail: a node whose recorded shape no longer matches what it computes is reported."""
    model, inputs, user_inputs = _reference_case("user_mlp_tower")
    generator = torch.Generator().manual_seed(11)
    captured = capture_model(model, inputs(5, generator), user_inputs)
    leaves = captured.layout.tensor_leaves(inputs(CHECK_N, generator), {})
    graph_module = fresh_copy(captured)
    linear = next(n for n in graph_module.graph.nodes if n.target == torch.ops.aten.linear.default)
    linear.meta["val"] = linear.meta["val"][..., :1]  # as if a pass had changed the weight and not re-recorded
    assert any(linear.name in problem for problem in metadata_mismatches(graph_module, leaves, captured.batch, CHECK_N))


def test_the_checker_catches_sizes_left_over_from_a_replaced_node(monkeypatch):
    """The check can fail on data-dependent sizes too: if the jagged fold replaced `.item()` sizes without
    re-recording what reads them (NodeFactory.refresh), the readers keep sizes that no node introduces."""
    model, inputs, user_inputs = _torchrec_model("multi_hot")
    generator = torch.Generator().manual_seed(11)
    captured = capture_model(model, inputs(5, generator), user_inputs)
    leaves = captured.layout.tensor_leaves(inputs(CHECK_N, generator), {})
    monkeypatch.setattr(NodeFactory, "refresh", lambda self, changed: None)
    folded = FOLD_JAGGED.run(fresh_copy(captured), PassContext(captured.layout, captured.batch))
    assert folded.modified
    assert any("no node of the graph introduces" in p for p in metadata_mismatches(folded.graph_module, leaves,
                                                                                     captured.batch, CHECK_N))
