"""colour_graph (docs/ARCHITECTURE.md section 2, step 4) on hand-made fx graphs and one captured graph: U for
user-only values, C for anything that reads a candidate (or the batch size), none for parameters and sizes."""

from __future__ import annotations

import sympy
import torch
import torch.fx as fx
from torch import Tensor, nn

from service.engine.colouring import Colour, colour_graph
from tests.engine.captured import pass_input

aten = torch.ops.aten
N = sympy.Symbol("N", positive=True, integer=True)


def _hand_made() -> tuple[fx.Graph, dict[str, fx.Node]]:
    """user @ weight -> + cand -> output, beside weight-only and user-only branches."""
    graph = fx.Graph()
    user, cand, weight = graph.placeholder("user"), graph.placeholder("cand"), graph.get_attr("weight")
    nodes = {
        "user": user,
        "cand": cand,
        "weight": weight,
        "user_proj": graph.call_function(aten.mm.default, (user, weight)),
        "weight_t": graph.call_function(aten.t.default, (weight,)),
    }
    nodes["user_act"] = graph.call_function(aten.relu.default, (nodes["user_proj"],))
    nodes["merged"] = graph.call_function(aten.add.Tensor, (nodes["user_act"], cand))
    nodes["scaled"] = graph.call_function(aten.mul.Tensor, (nodes["merged"], nodes["weight_t"]))
    graph.output((nodes["scaled"], nodes["user_act"]))
    return graph, nodes


def _colours_by_name() -> dict[str, Colour]:
    graph, nodes = _hand_made()
    colours = colour_graph(graph, {nodes["user"]}, N)
    return {name: colours[node] for name, node in nodes.items()}


def test_user_placeholders_are_user_and_every_other_placeholder_is_candidate():
    colours = _colours_by_name()
    assert (colours["user"], colours["cand"]) == (Colour.USER, Colour.CANDIDATE)


def test_a_node_reading_user_values_and_parameters_only_is_user():
    colours = _colours_by_name()
    assert colours["user_proj"] == colours["user_act"] == Colour.USER


def test_a_node_reading_any_candidate_value_is_candidate():
    colours = _colours_by_name()
    assert colours["merged"] == colours["scaled"] == Colour.CANDIDATE


def test_parameters_and_parameter_only_ops_have_no_colour():
    colours = _colours_by_name()
    assert colours["weight"] == colours["weight_t"] == Colour.NONE


class BatchSizedZeros(nn.Module):
    """A tensor built from the candidate count (`zeros(N, d)`) next to a user tower and a fixed-size constant."""

    def __init__(self) -> None:
        super().__init__()
        self.user_fc = nn.Linear(3, 2)

    def forward(self, user: Tensor, cand: Tensor) -> Tensor:
        padding = torch.zeros(cand.size(0), 2)
        bias = torch.ones(2) * 0.5
        return torch.cat([torch.relu(self.user_fc(user)) + bias, cand + padding], dim=1)


def _captured_colours() -> dict[fx.Node, Colour]:
    captured = pass_input(BatchSizedZeros(), (torch.randn(1, 3), torch.randn(4, 2)), ["user"])
    return colour_graph(captured.graph_module.graph, captured.users, captured.batch)


def test_a_tensor_built_from_the_batch_size_is_candidate_and_the_size_itself_has_no_colour():
    colours = _captured_colours()
    (zeros,) = [n for n in colours if n.target == aten.zeros.default]
    assert colours[zeros] == Colour.CANDIDATE
    sizes = [n for n in colours if n.target == aten.sym_size.int]
    assert sizes and all(colours[n] == Colour.NONE for n in sizes)


def test_a_tensor_of_fixed_size_has_no_colour_and_does_not_change_a_user_node():
    colours = _captured_colours()
    (ones,) = [n for n in colours if n.target == aten.ones.default]
    assert colours[ones] == Colour.NONE
    (relu,) = [n for n in colours if n.target == aten.relu.default]
    (user_plus_bias,) = [n for n in relu.users]
    assert colours[relu] == colours[user_plus_bias] == Colour.USER
    (cat,) = [n for n in colours if n.target == aten.cat.default]
    assert colours[cat] == Colour.CANDIDATE
