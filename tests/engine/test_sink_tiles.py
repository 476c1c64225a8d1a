"""sink_tiles (docs/ARCHITECTURE.md section 2, step 7) on tiny captured models: which nodes run at batch 1,
where the tile lands, the two merge points that avoid it, and that the rebuilt graph still computes VanI."""

from __future__ import annotations

import pytest
import torch
import torch.fx as fx
from torch import Tensor, nn

from service.engine.colouring import colour_graph
from service.engine.sink_tiles import SinkResult, sink_tiles
from tests.engine.captured import pass_input

aten = torch.ops.aten
N = 5


class UserTower(nn.Module):
    """A user MLP that reads its own batch size (`view(B, -1)`), concatenated with the candidate features."""

    def __init__(self) -> None:
        super().__init__()
        self.user_fc = nn.Linear(3, 4)
        self.out = nn.Linear(4 + 2, 1)

    def forward(self, user: Tensor, cand: Tensor) -> Tensor:
        hidden = torch.relu(self.user_fc(user))
        hidden = hidden.view(hidden.size(0), -1)
        return self.out(torch.cat([hidden, cand], dim=1))


class BatchSum(nn.Module):
    """Sums user rows over the batch axis: with the user tiled to N rows that is N times the row."""

    def forward(self, user: Tensor, cand: Tensor) -> Tensor:
        return torch.relu(user).sum(0, keepdim=True) + cand


class UserBias(nn.Module):
    """A candidate Linear without bias plus a user Linear: the user product can ride as the GEMM's bias."""

    def __init__(self) -> None:
        super().__init__()
        self.cand_fc = nn.Linear(2, 4, bias=False)
        self.user_fc = nn.Linear(3, 4)

    def forward(self, user: Tensor, cand: Tensor) -> Tensor:
        return self.cand_fc(cand) + self.user_fc(user)


class TargetAttention(nn.Module):
    """Candidate queries [N, 1, d] against the user's keys [1, d, L]: one (N x d) @ (d x L) GEMM."""

    def forward(self, user_keys: Tensor, cand: Tensor) -> Tensor:
        return torch.matmul(cand.unsqueeze(1), user_keys).squeeze(1)


def _sink(model: nn.Module, args: tuple[Tensor, ...], compact: bool = True) -> SinkResult:
    captured = pass_input(model, args, ["user_keys" if isinstance(model, TargetAttention) else "user"])
    colours = colour_graph(captured.graph_module.graph, captured.users, captured.batch)
    return sink_tiles(captured.graph_module, colours, captured.users, captured.batch, compact=compact)


def _calls(result: SinkResult, target: object) -> list[fx.Node]:
    return [n for n in result.graph_module.graph.nodes if n.target == target]


def _rows(node: fx.Node) -> object:
    return node.meta["val"].shape[0]


def _tiles(result: SinkResult) -> list[fx.Node]:
    """Expands to the candidate batch (capture's own expand of a user input, compacted, stays at 1 row)."""
    return [n for n in _calls(result, aten.expand.default) if isinstance(_rows(n), torch.SymInt)]


def _reading(result: SinkResult, attribute: str) -> fx.Node:
    """The one node that reads the parameter `attribute` (e.g. the Linear of `user_fc.weight`)."""
    (getter,) = [n for n in result.graph_module.graph.nodes if n.op == "get_attr" and n.target.endswith(attribute)]
    (reader,) = getter.users
    return reader


def _assert_computes_vani(model: nn.Module, result: SinkResult, user: Tensor, cand: Tensor) -> None:
    with torch.no_grad():
        (got,) = result.graph_module(user, cand)
        want = model(user.expand(cand.size(0), *user.shape[1:]), cand)
    torch.testing.assert_close(got, want)


def test_user_tower_runs_at_batch_1_and_the_tile_moves_down_to_the_concat():
    result = _sink(UserTower(), (torch.randn(1, 3), torch.randn(4, 2)))
    user_linear = _reading(result, "user_fc.weight")
    assert _rows(user_linear) == 1
    (view,) = _calls(result, aten.view.default)
    assert _rows(view) == 1 and view.args[1] == [1, -1]  # view(B, -1) of the user tower at B = 1
    (merge,) = result.merges
    assert (merge.op, merge.how) == ("cat", "tiled")
    (tile,) = _tiles(result)
    (cat,) = _calls(result, aten.cat.default)
    assert tile.args[0] is view and list(tile.users) == [cat]


def test_with_compact_off_every_user_node_runs_at_batch_n_as_in_vani():
    result = _sink(UserTower(), (torch.randn(1, 3), torch.randn(4, 2)), compact=False)
    assert isinstance(_rows(_reading(result, "user_fc.weight")), torch.SymInt)
    assert _tiles(result)[0].args[0].op == "placeholder"  # tiled right at the user input, where capture tiles
    assert [m.op for m in result.merges] == ["expand"]


@pytest.mark.parametrize("model", [UserTower(), BatchSum(), UserBias()], ids=lambda m: type(m).__name__)
def test_the_rebuilt_graph_computes_the_model_on_tiled_user_inputs(model):
    width = 2 if isinstance(model, BatchSum) else 3
    user, cand = torch.randn(1, width), torch.randn(N, 2)
    _assert_computes_vani(model, _sink(model, (user, torch.randn(4, 2))), user, cand)


def test_a_reduction_over_the_batch_axis_of_user_data_runs_at_batch_n_on_the_tiled_rows():
    result = _sink(BatchSum(), (torch.randn(1, 2), torch.randn(4, 2)))
    (relu,) = _calls(result, aten.relu.default)
    (total,) = _calls(result, aten.sum.dim_IntList)
    (tile,) = _tiles(result)
    assert _rows(relu) == 1 and tile.args[0] is relu and total.args[0] is tile
    assert [(m.op, m.how) for m in result.merges] == [("sum", "tiled")]


def test_a_user_linear_added_to_a_candidate_linear_becomes_its_bias():
    result = _sink(UserBias(), (torch.randn(1, 3), torch.randn(4, 2)))
    (merge,) = result.merges
    assert merge.how == "user part as bias"
    cand_linear = _reading(result, "cand_fc.weight")
    assert len(cand_linear.args) == 3 and _rows(cand_linear.args[2]) == 4  # bias [4]: the user row, reshaped
    assert _rows(_reading(result, "user_fc.weight")) == 1
    assert _tiles(result) == []  # no tile at all


def test_a_candidate_by_user_matmul_becomes_one_gemm_over_the_shared_user_operand():
    user_keys, cand = torch.randn(1, 3, 6), torch.randn(4, 3)
    model = TargetAttention()
    result = _sink(model, (user_keys, cand))
    (merge,) = result.merges
    assert merge.how == "user operand shared (one GEMM)"
    (gemm,) = _calls(result, aten.mm.default)
    assert tuple(gemm.args[1].meta["val"].shape) == (3, 6)  # the user's keys, once, not tiled
    assert _calls(result, aten.matmul.default) == []
    _assert_computes_vani(model, result, user_keys, torch.randn(N, 3))
