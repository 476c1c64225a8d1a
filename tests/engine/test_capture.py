"""capture (docs/ARCHITECTURE.md section 2, step 1) on tiny models: leaf names, which leaves are user-side,
a graph whose user placeholders stay at batch 1 while candidates get one symbolic N, and the tile inside it."""

from __future__ import annotations

import pytest
import sympy
import torch
from torch import Tensor, nn

from service.engine.capture import CapturedModel, describe_inputs, user_placeholders
from service.engine.graph_tools import symbolic_expr
from service.engine.variants import EngineError
from tests.engine.captured import capture_model

aten = torch.ops.aten


class DictRanker(nn.Module):
    """forward(features: dict): a user tower, a concat with the item features, one score per candidate."""

    def __init__(self) -> None:
        super().__init__()
        self.user_fc = nn.Linear(3, 4)
        self.out = nn.Linear(4 + 2, 1)

    def forward(self, features: dict[str, Tensor]) -> dict[str, Tensor]:
        user = torch.relu(self.user_fc(features["user"]))
        return {"score": self.out(torch.cat([user, features["item"]], dim=1)).squeeze(1)}


class PositionalRanker(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(2 + 3, 1)

    def forward(self, user: Tensor, cand: Tensor) -> Tensor:
        return self.fc(torch.cat([user, cand], dim=-1))


def _features(n: int) -> dict[str, Tensor]:
    return {"user": torch.randn(1, 3), "item": torch.randn(n, 2)}


def _placeholders(captured: CapturedModel) -> dict[str, torch.fx.Node]:
    nodes = [n for n in captured.graph_module.graph.nodes if n.op == "placeholder"]
    return dict(zip(captured.layout.leaf_names, nodes))


def test_describe_inputs_names_dict_leaves_by_path_and_marks_the_user_ones():
    layout = describe_inputs(DictRanker(), (_features(4),), {}, ["user"])
    assert layout.leaf_names == ("features.user", "features.item")
    assert layout.user_leaf_names == ["features.user"]


def test_describe_inputs_names_positional_leaves_by_parameter_name():
    layout = describe_inputs(PositionalRanker(), (torch.randn(1, 2), torch.randn(4, 3)), {}, ["user"])
    assert layout.leaf_names == ("user", "cand")
    assert layout.user_leaf_names == ["user"]


def test_describe_inputs_refuses_a_user_input_name_that_matches_no_leaf():
    with pytest.raises(EngineError, match="user_idz"):
        describe_inputs(PositionalRanker(), (torch.randn(1, 2), torch.randn(4, 3)), {}, ["user_idz"])


def test_user_placeholders_stay_at_batch_1_and_candidates_have_the_symbolic_batch():
    captured = capture_model(DictRanker(), (_features(4),), ["user"])
    placeholders = _placeholders(captured)
    assert user_placeholders(captured.graph_module, captured.layout) == {placeholders["features.user"]}
    assert tuple(placeholders["features.user"].meta["val"].shape) == (1, 3)
    item_rows = symbolic_expr(placeholders["features.item"].meta["val"].shape[0])
    assert isinstance(captured.batch, sympy.Symbol) and item_rows == captured.batch


def test_the_user_leaf_is_tiled_to_the_candidate_batch_inside_the_graph():
    captured = capture_model(DictRanker(), (_features(4),), ["user"])
    user = _placeholders(captured)["features.user"]
    (tile,) = user.users
    assert tile.target == aten.expand.default
    assert symbolic_expr(tile.meta["val"].shape[0]) == captured.batch


def test_an_example_with_one_candidate_still_captures_a_dynamic_batch():
    captured = capture_model(DictRanker(), (_features(1),), ["user"])
    item_rows = _placeholders(captured)["features.item"].meta["val"].shape[0]
    assert isinstance(item_rows, torch.SymInt) and symbolic_expr(item_rows) == captured.batch


def test_a_user_leaf_with_more_than_one_row_is_refused():
    with pytest.raises(EngineError, match="batch size 1"):
        capture_model(DictRanker(), ({"user": torch.randn(2, 3), "item": torch.randn(4, 2)},), ["user"])


def test_a_call_without_candidate_inputs_is_refused():
    with pytest.raises(EngineError, match="no candidate-side tensor input"):
        capture_model(PositionalRanker(), (torch.randn(1, 2), torch.randn(1, 3)), ["user", "cand"])
