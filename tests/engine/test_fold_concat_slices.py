"""The concat-read folding pass on small hand-made graphs: what it rewrites, into what, and that values are kept.

Each model builds X = cat(user and candidate parts) the way a user's adapter does and reads columns of X.
The graph is captured by the engine (user parts expanded to N, as in VanI), folded, and run again: folding
is pure data movement, so the outputs must be bitwise equal.
"""

from __future__ import annotations

import json

import pytest
import torch
from torch import Tensor, nn

from service.engine import Variant, reparameterize
from service.engine.capture import capture, describe_inputs
from service.engine.fold_concat_slices import READS, fold_concat_slices
from service.engine.graph_tools import CAT_TARGETS, RESHAPE_TARGETS

aten = torch.ops.aten
N = 5


def _fold(model: nn.Module, args: tuple, users: list[str]):
    layout = describe_inputs(model, args, {}, users)
    tensors = layout.tensor_leaves(args, {})
    captured = capture(model, layout, tensors)
    gm = captured.graph_module
    gm.recompile()  # capture erased the guard call from the graph, not from the generated code
    placeholders = [n for n in gm.graph.nodes if n.op == "placeholder"]
    user_nodes = {n for j, n in enumerate(placeholders) if layout.tensor_positions[j] in layout.user_positions}
    names = {n.name: layout.leaf_names[layout.tensor_positions[j]] for j, n in enumerate(placeholders)}
    before = gm(*tensors)
    records = fold_concat_slices(gm, user_nodes, captured.batch)
    after = gm(*tensors)
    for b, a in zip(torch.utils._pytree.tree_leaves(before), torch.utils._pytree.tree_leaves(after)):
        assert a.dtype == b.dtype and torch.equal(a, b)
    return gm, records, names


def _reads_of_a_concat(gm) -> list:
    return [n for n in gm.graph.nodes if n.target in (*READS, *RESHAPE_TARGETS) and n.args[0].target in CAT_TARGETS]


def _source(node):
    """The placeholder a chain of slices / selects / expands / casts reads."""
    while node.op != "placeholder":
        node = node.args[0]
    return node.name


class Reads(nn.Module):
    def __init__(self, read) -> None:
        super().__init__()
        self.read = read

    def forward(self, u: Tensor, c: Tensor) -> Tensor:
        return self.read(torch.cat([u, c], dim=1))


def _two_parts(read, u_width: int = 3, c_width: int = 4):
    return _fold(Reads(read), (torch.randn(1, u_width), torch.randn(N, c_width)), ["u"])


def test_slice_within_one_part_reads_only_that_part():
    gm, (record,), names = _two_parts(lambda x: x[:, 4:6])
    assert _reads_of_a_concat(gm) == []
    assert (record.op, record.columns, record.side) == ("slice", [4, 5], "candidate")
    (out,) = gm.graph.find_nodes(op="output")[0].args[0]
    assert out.target == aten.slice.Tensor and out.args[1:4] == (1, 1, 3) and names[_source(out)] == "c"


def test_slice_of_a_whole_user_part_is_the_part_itself():
    gm, (record,), names = _two_parts(lambda x: x[:, :3] * 2)
    assert (record.columns, record.side) == ([0, 1, 2], "user")
    mul = next(n for n in gm.graph.nodes if n.target == aten.mul.Tensor)
    assert mul.args[0].target == aten.expand.default and names[_source(mul)] == "u"


def test_slice_spanning_two_parts_becomes_a_concat_of_their_pieces():
    gm, (record,), names = _two_parts(lambda x: x[:, 1:5])
    assert (record.columns, record.side) == ([1, 2, 3, 4], "mixed")
    (out,) = gm.graph.find_nodes(op="output")[0].args[0]
    assert out.target == aten.cat.default
    head, tail = out.args[0]
    assert (names[_source(head)], head.args[1:4]) == ("u", (1, 1, 3))
    assert (names[_source(tail)], tail.args[1:4]) == ("c", (1, 0, 2))


def test_step_and_negative_bounds_fold():
    gm, (record,), _ = _two_parts(lambda x: x[:, -6::2])
    assert record.columns == [1, 3, 5]


class Interleaved(nn.Module):
    """X = [u1 (2) | c1 (3) | u2 (2)], read by an index list that jumps between the parts."""

    COLUMNS = [5, 0, 1, 4, 2, 6, 3]

    def forward(self, u1: Tensor, c1: Tensor, u2: Tensor) -> Tensor:
        return torch.cat([u1, c1, u2], dim=1)[:, self.COLUMNS]


def test_index_list_in_interleaved_order_becomes_one_piece_per_run_of_one_part():
    args = (torch.randn(1, 2), torch.randn(N, 3), torch.randn(1, 2))
    gm, (record,), names = _fold(Interleaved(), args, ["u1", "u2"])
    assert (record.op, record.columns, record.side) == ("index", Interleaved.COLUMNS, "mixed")
    (out,) = gm.graph.find_nodes(op="output")[0].args[0]
    pieces = out.args[0]
    assert [names[_source(p)] for p in pieces] == ["u2", "u1", "c1", "u2", "c1"]
    # runs: [5] -> u2[0]; [0, 1] -> u1 whole; [4, 2] -> c1 out of order; [6] -> u2[1]; [3] -> c1[1]
    assert [p.target for p in pieces] == [
        aten.slice.Tensor, aten.expand.default, aten.index_select.default, aten.slice.Tensor, aten.slice.Tensor,
    ]
    assert len(record.parts) == 5


class IndexSelectBuffer(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.register_buffer("columns", torch.tensor([3, 0, 1]))
        self.mask = torch.tensor([True, False, False, True, False, False, True])

    def forward(self, u: Tensor, c: Tensor) -> tuple[Tensor, ...]:
        x = torch.cat([u, c], dim=1)
        return torch.index_select(x, 1, self.columns), x[:, 2], x[:, -1], x[:, [-7, 6]], x[:, self.mask]


def test_index_select_with_a_buffer_select_negative_indices_and_a_mask_fold():
    gm, records, _ = _fold(IndexSelectBuffer(), (torch.randn(1, 3), torch.randn(N, 4)), ["u"])
    assert _reads_of_a_concat(gm) == []
    assert [(r.op, r.columns, r.side) for r in records] == [
        ("index_select", [3, 0, 1], "mixed"),
        ("select", [2], "user"),
        ("select", [6], "candidate"),
        ("index", [0, 6], "mixed"),
        ("index", [0, 3, 6], "mixed"),  # the mask's width was unbacked (runtime-asserted): now static
    ]
    assert not [n for n in gm.graph.nodes if n.target == aten.sym_size.int and n.args[0].op != "placeholder"]


def test_split_outputs_and_unbind_fold():
    def read(x):
        a, b, c = torch.split(x, [2, 3, 2], dim=1)
        return a, b, c, x.unbind(1)[3]

    gm, records, _ = _two_parts(read)
    assert sorted((r.columns, r.side) for r in records) == [
        ([0, 1], "user"), ([2, 3, 4], "mixed"), ([3], "candidate"), ([5, 6], "candidate"),
    ]


def test_int_ids_promoted_by_the_concat_are_cast_before_they_are_read():
    class Ids(nn.Module):
        def forward(self, user_id: Tensor, price: Tensor, item_id: Tensor) -> Tensor:
            x = torch.cat([user_id, price, item_id], dim=1)  # int64 and float32: cat promotes to float32
            return x[:, 0:2], x[:, 0].long(), x[:, 3].long() + x[:, 3:].long()

    args = (torch.tensor([[123456]]), torch.randn(N, 2), torch.randint(0, 1000, (N, 1)))
    gm, records, names = _fold(Ids(), args, ["user_id"])
    assert [r.side for r in records] == ["mixed", "user", "candidate", "candidate"]
    casts = [n for n in gm.graph.nodes if n.target == aten._to_copy.default and n.kwargs.get("dtype") == torch.float32]
    assert sorted(names[_source(c)] for c in casts) == ["item_id", "user_id"]  # one cast per part, shared


def test_cast_of_the_whole_concat_moves_onto_the_parts_so_its_columns_fold():
    gm, records, names = _two_parts(lambda x: x.long()[:, 1] + x.long()[:, 5])
    assert _reads_of_a_concat(gm) == []
    selects = [n for n in gm.graph.nodes if n.target == aten.select.int]
    assert sorted(names[_source(s)] for s in selects) == ["c", "u"]
    assert {r.side for r in records if r.op == "select"} == {"user", "candidate"}


def test_flatten_of_an_embedding_concat_moves_onto_the_parts():
    class Flatten(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.user_emb, self.item_emb = nn.Embedding(10, 4), nn.Embedding(10, 3)

        def forward(self, user_id: Tensor, item_id: Tensor) -> Tensor:
            embedded = torch.cat([self.user_emb(user_id), self.item_emb(item_id)], dim=-1)  # [N, 1, 7]
            return torch.flatten(embedded, start_dim=1)

    args = (torch.randint(0, 10, (1, 1)), torch.randint(0, 10, (N, 1)))
    gm, (record,), _ = _fold(Flatten(), args, ["user_id"])
    assert (record.op, record.side) == ("view", "mixed")
    (out,) = gm.graph.find_nodes(op="output")[0].args[0]
    assert out.target == aten.cat.default and all(p.target == aten.reshape.default for p in out.args[0])


@pytest.mark.parametrize(
    "read",
    [
        lambda x: x[:2, 1:3],  # rows first: a slice along the batch axis is not a column read
        lambda x: x.reshape(-1, 7, 1)[:, 1:3],  # a reshape that does not only drop size-1 dims
        lambda x: x[:, torch.argsort(x[0])],  # data-dependent column order
    ],
    ids=["batch_rows", "regrouping_reshape", "data_dependent_index"],
)
def test_reads_the_pass_cannot_prove_are_left_alone(read):
    gm, records, _ = _two_parts(read)
    assert all(r.op not in ("index", "index_select") for r in records)


def test_pipeline_folds_for_uoi_and_mari_only_and_the_report_serializes():
    class Flat(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.fc = nn.Linear(4, 1)

        def forward(self, u: Tensor, c: Tensor) -> Tensor:
            x = torch.cat([u, c], dim=1)
            return torch.sigmoid(self.fc(x[:, [0, 4, 1, 5]]))

    model = Flat().eval()
    args = (torch.randn(1, 3), torch.randn(N, 4))
    reference = model(args[0].expand(N, -1), args[1])
    for variant in Variant:
        result = reparameterize(model, args, ["u"], variant)
        assert result.report.variant == variant
        assert bool(result.report.folded_slices) == (variant != Variant.VANI)
        torch.testing.assert_close(result.module(*args), reference, rtol=0, atol=1e-6)
        data = json.loads(json.dumps(result.report.to_dict()))
        assert len(data["folded_slices"]) == len(result.report.folded_slices)
    mari = reparameterize(model, args, ["u"], Variant.MARI).report
    assert [(c.user_width, c.candidate_width) for c in mari.concats] == [(2, 2)]
    assert [k.out_features for k in mari.rewritten] == [1]
