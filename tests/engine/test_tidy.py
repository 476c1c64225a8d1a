"""tidy_graph: repeated pure ops and views to an input's own shape go, every value stays bit for bit."""

from __future__ import annotations

import torch
import torch.fx as fx
from torch import Tensor, nn

from service.engine.graph_tools import aten
from service.engine.tidy import tidy_graph


class Repeats(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.table = nn.Embedding(10, 3)
        self.other = nn.Embedding(10, 3)

    def forward(self, ids: Tensor, x: Tensor) -> Tensor:
        a = self.table(ids.long()) + self.other(ids.long())  # the same cast twice, as DeepCTR writes it
        whole = x.expand(x.shape[0], x.shape[1])  # a view to x's own shape
        as_int, as_float = ids.long() + 1, ids.long() + 1.0  # equal scalars of two types: two different ops
        return a.sum((1, 2)) + whole.sum(1) + as_int.sum(1) + as_float.sum(1)


def _aten_graph() -> fx.GraphModule:
    example = (torch.tensor([[1.0], [2.0]]), torch.randn(2, 4))  # ids in a float column, as DeepCTR's X holds them
    return torch.export.export(Repeats().eval(), example).run_decompositions({}).module()


def test_repeated_casts_and_identity_expands_go_and_the_values_stay_bitwise():
    gm = _aten_graph()
    ids, x = torch.tensor([[3.0], [9.0]]), torch.randn(2, 4)
    before = gm(ids, x)
    casts = sum(1 for n in gm.graph.nodes if n.target == aten._to_copy.default)
    removed = tidy_graph(gm)
    assert removed >= 1
    assert torch.equal(gm(ids, x), before)
    assert sum(1 for n in gm.graph.nodes if n.target == aten._to_copy.default) < casts


def test_an_integer_and_a_float_scalar_are_never_merged():
    gm = _aten_graph()
    tidy_graph(gm)
    adds = [n for n in gm.graph.nodes if n.target == aten.add.Tensor and not isinstance(n.args[1], fx.Node)]
    assert sorted(type(n.args[1]).__name__ for n in adds) == ["float", "int"]
