"""Micro-batching that keeps the user split: M requests scored as ONE call of a built variant.

Triton-style dynamic batching concatenates requests, which tiles every user again. Here a built variant's
graph is cut in two where user-only values meet candidate data:

- the *user graph* computes every user-only value that the candidate side reads (the boundary values): at
  batch M, one row per request, when the graph allows it ("user side at batch M"), else once per request;
- the *candidate graph* runs on the candidates of all M requests concatenated (sum of N_i rows); each
  boundary value reaches it gathered by a segment index (`seg[j]` = the request of candidate j), aligned to
  the rank of the op that reads it, instead of being tiled per request.

Nothing is model specific: the cut is found from the graph (which nodes depend on user leaves only, which on
candidates or on N), and the result is accepted only when scoring a few random requests together equals
scoring each alone (equivalence.BUILD_CHECK). A variant that fails runs one request at a time, with a reason.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from enum import Enum
from typing import Any

import sympy
import torch
import torch.fx as fx
from torch import Tensor, nn
from torch.utils import _pytree as pytree

from service.engine.capture import InputLayout
from service.engine.colouring import Colour, colour_graph
from service.engine.equivalence import BUILD_CHECK, max_difference
from service.engine.graph_tools import (
    MATMUL_TARGETS,
    SHAPE_TARGETS,
    SIZE_LIST_TARGETS,
    Argument,
    NodeFactory,
    aten,
    batch_factor,
    depends_on,
    fake_mode_of,
    symbolic_expr,
)
from service.engine.variants import EngineError, first_line

Call = tuple[tuple[Any, ...], dict[str, Any]]  # (args, kwargs) of one request, user leaves at batch 1


class BatchingError(EngineError):
    """A variant cannot score several requests as one call; the message says why."""


class UserSide(str, Enum):  # noqa: UP042 (str() of the value goes into reports)
    """How the user graph runs for a batch of M requests."""

    BATCHED = "batch_m"  # once, user leaves concatenated: one row per request
    PER_REQUEST = "per_request"  # once per request at batch 1 (the graph is not batch-polymorphic)


@dataclass(frozen=True)
class Gather:
    """One candidate-graph input made from user-graph output `index`: gathered to one row per candidate, each
    row of shape `tail` (what the reading op broadcasts against its candidate operand); or, `per_request`, one
    operand of shape `tail` per request, for a matmul that multiplies each request's rows by its own."""

    index: int
    tail: tuple[int, ...]
    per_request: bool = False


class SegmentBatched(nn.Module):
    """Scores M requests in one call of a variant's graph; per-request outputs in the model's structure."""

    def __init__(
        self, user_graph: fx.GraphModule, candidate_graph: fx.GraphModule, gathers: Sequence[Gather],
        layout: InputLayout, out_spec: pytree.TreeSpec | None, user_side: UserSide,
    ) -> None:
        super().__init__()
        self.user_graph = user_graph
        self.candidate_graph = candidate_graph
        self.gathers = tuple(gathers)
        self.layout = layout
        self.out_spec = out_spec
        self.user_side = user_side
        is_user = [p in layout.user_positions for p in layout.tensor_positions]
        self._user_slots = [j for j, user in enumerate(is_user) if user]
        self._candidate_slots = [j for j, user in enumerate(is_user) if not user]

    def forward(self, calls: Sequence[Call]) -> list[Any]:
        """Outputs of each call, as the unbatched variant would return them."""
        leaves = [self.layout.tensor_leaves(args, kwargs) for args, kwargs in calls]
        sizes = self._check_shapes(leaves)
        user_values = self._user_values(leaves)
        segment = torch.repeat_interleave(torch.arange(len(calls)), torch.tensor(sizes))
        gathered = [user_values[g.index].reshape(len(calls), *g.tail) if g.per_request
                    else user_values[g.index].index_select(0, segment).reshape(-1, *g.tail) for g in self.gathers]
        candidates = [_concat([request[j] for request in leaves]) for j in self._candidate_slots]
        outputs = self.candidate_graph(*candidates, *gathered, sizes)
        per_request = zip(*(output.split(sizes) for output in outputs))
        return [list(out) if self.out_spec is None else pytree.tree_unflatten(list(out), self.out_spec)
                for out in per_request]

    def _user_values(self, leaves: list[list[Tensor]]) -> list[Tensor]:
        """Every boundary value with one leading row per request."""
        if self.user_side is UserSide.BATCHED:
            return list(self.user_graph(*[_concat([request[j] for request in leaves]) for j in self._user_slots]))
        per_request = [self.user_graph(*[request[j] for j in self._user_slots]) for request in leaves]
        return [torch.stack(values) for values in zip(*per_request)]

    def _check_shapes(self, leaves: list[list[Tensor]]) -> list[int]:
        """Candidates per request; ValueError unless the requests can share one call (same feature shapes)."""
        first = leaves[0]
        for request in leaves:
            for j in self._user_slots:
                if request[j].size(0) != 1 or request[j].shape != first[j].shape:
                    raise ValueError(f"user input '{self._name(j)}' has shape {tuple(request[j].shape)}; "
                                     f"batched requests need batch 1 and {tuple(first[j].shape)}")
            for j in self._candidate_slots:
                if request[j].shape[1:] != first[j].shape[1:] or request[j].dtype != first[j].dtype:
                    raise ValueError(f"candidate input '{self._name(j)}' differs in shape or dtype across requests")
        sizes = []
        for request in leaves:
            rows = {request[j].size(0) for j in self._candidate_slots}
            if len(rows) != 1:
                raise ValueError(f"candidate inputs disagree on the number of candidates: {sorted(rows)}")
            sizes.append(rows.pop())
        return sizes

    def _name(self, slot: int) -> str:
        return self.layout.leaf_names[self.layout.tensor_positions[slot]]


def _concat(tensors: list[Tensor]) -> Tensor:
    return tensors[0] if len(tensors) == 1 else torch.cat(tensors)


def segmented_matmul(rows: Tensor, operands: Tensor, candidates: list[int], rows_per_candidate: int) -> Tensor:
    """Each request's block of `rows` (its candidates' rows, in request order) times that request's operand:
    the same GEMMs as scoring the requests alone, with no per-candidate copy of the user operand."""
    blocks = torch.split(rows, [n * rows_per_candidate for n in candidates])
    return torch.cat([torch.matmul(block, operands[m]) for m, block in enumerate(blocks)])


def segment_batch(
    graph_module: nn.Module, layout: InputLayout, out_spec: pytree.TreeSpec | None, batch: sympy.Symbol,
    reference: Callable[..., Any], examples: Sequence[Call],
) -> SegmentBatched:
    """The batched form of one built variant, checked on `examples` against `reference` (the variant itself).

    `examples` are calls of different users with different N (include N = 1). Tries the user side at batch M
    first, then once per request; BatchingError with both reasons when neither reproduces every call.
    """
    if not isinstance(graph_module, fx.GraphModule):
        raise BatchingError("the variant runs eagerly (no captured graph to cut)")
    cut = _Cut(graph_module, layout, batch)
    want = [reference(*args, **kwargs) for args, kwargs in examples]
    reasons = []
    for user_side in UserSide:
        try:
            batched = SegmentBatched(cut.user_graph(batched=user_side is UserSide.BATCHED), cut.candidate_graph(),
                                     cut.gathers, layout, out_spec, user_side)
            _check(batched, examples, want)
            return batched
        except Exception as exc:  # a graph that is not batch-polymorphic fails here: try the next form
            reasons.append(f"{user_side.value}: {first_line(exc)}")
    raise BatchingError("; ".join(reasons))


def _check(batched: SegmentBatched, examples: Sequence[Call], want: list[Any]) -> None:
    """All examples together, then the first alone and the last two together: each equal to its own call."""
    groups = [list(range(len(examples))), [0], list(range(len(examples)))[-2:]]
    with torch.no_grad():
        for group in groups:
            got = batched([examples[i] for i in group])
            for i, output in zip(group, got):
                difference = max_difference(output, want[i])
                if not difference <= BUILD_CHECK.bound(want[i]):
                    raise BatchingError(f"request {i} of {len(group)} scored together differs from alone by "
                                        f"{difference:.3g}")


class _Cut:
    """Where a variant's graph splits into user-only values and the candidate side that reads them.

    The graph's metadata describes one request (M = 1): the user graph's values at one row, the candidate
    graph's at N candidates; each node made here records its value at M = 1 (passes.py's rule)."""

    def __init__(self, graph_module: fx.GraphModule, layout: InputLayout, batch: sympy.Symbol) -> None:
        self.root = graph_module
        self.batch = batch
        graph = graph_module.graph
        self.placeholders = [n for n in graph.nodes if n.op == "placeholder"]
        self.user_placeholders = [n for j, n in enumerate(self.placeholders)
                                  if layout.tensor_positions[j] in layout.user_positions]
        self.side = self._sides(graph)
        self.outputs = self._outputs(graph)
        self.boundary: list[fx.Node] = []  # user-graph outputs, in order
        self.gathers: list[Gather] = []
        self._gather_of: dict[tuple[fx.Node, tuple[int, ...], bool], int] = {}
        self._constants: dict[fx.Node, int] = {}
        self._segmented = {node for node in graph.nodes if self._is_segmented_matmul(node)}
        self._reads: dict[tuple[fx.Node, fx.Node], int] = {}  # (candidate op, user value it reads) -> its gather
        for node in graph.nodes:
            if self.side.get(node) is Colour.CANDIDATE and node.op == "call_function":
                for source in node.all_input_nodes:
                    if self.side[source] is Colour.USER:
                        self._plan_input(source, node)

    # -- analysis -----------------------------------------------------------------------------------
    def _sides(self, graph: fx.Graph) -> dict[fx.Node, Colour]:
        """The engine's colouring (colour_graph), closed for the cut: what reads a candidate-side value or changes
        with N (a tile of user data) is candidate-side, and a size takes the side of the value it measures (the
        colouring leaves sizes uncoloured)."""
        colours = colour_graph(graph, set(self.user_placeholders), self.batch)
        side: dict[fx.Node, Colour] = {}
        for node in graph.nodes:
            if node.op == "output":
                continue
            inputs = {side[i] for i in node.all_input_nodes}
            if colours[node] is Colour.CANDIDATE or Colour.CANDIDATE in inputs or \
                    self._depends_on_batch(node.meta.get("val")):
                side[node] = Colour.CANDIDATE
            elif colours[node] is Colour.USER or Colour.USER in inputs:
                side[node] = Colour.USER
            else:
                side[node] = Colour.NONE
        return side

    def _depends_on_batch(self, value: Any) -> bool:
        """Does a node's value (a tensor's shape, a size, or a tuple of them) change with N?"""
        if isinstance(value, Tensor):
            return any(depends_on(symbolic_expr(size), self.batch) for size in value.shape)
        if isinstance(value, torch.SymInt):
            return depends_on(symbolic_expr(value), self.batch)
        if isinstance(value, (tuple, list)):
            return any(self._depends_on_batch(v) for v in value)
        return False

    def _outputs(self, graph: fx.Graph) -> list[fx.Node]:
        (output,) = [n for n in graph.nodes if n.op == "output"]
        nodes = pytree.tree_leaves(output.args[0])
        for node in nodes:
            value = node.meta.get("val") if isinstance(node, fx.Node) else None
            if not isinstance(value, Tensor) or value.dim() == 0 or symbolic_expr(value.shape[0]) != self.batch:
                raise BatchingError(f"output {node} is not one row per candidate")
            if self.side[node] is not Colour.CANDIDATE:
                raise BatchingError(f"output {node.name} depends on user data only")
        return nodes

    def _plan_input(self, source: fx.Node, reader: fx.Node) -> None:
        """How the candidate op `reader` gets the user value `source`: gathered per candidate, or a constant."""
        value = source.meta.get("val")
        if isinstance(value, int):  # a size of user data: the same for every request (only N varies)
            self._constants[source] = value
            return
        if not isinstance(value, Tensor) or not all(isinstance(s, int) for s in value.shape):
            raise BatchingError(f"{reader.name} reads {source.name}, a user value of unknown shape")
        self._reads[(reader, source)] = self._gather_for(source, reader)

    def _tail(self, source: fx.Node, reader: fx.Node) -> tuple[int, ...]:
        """Per-candidate shape of `source` such that broadcasting against `reader`'s rows is what one request
        alone computed: aligned right to the reader's rank, its leading size-1 dimension taken by the rows."""
        shape = tuple(int(s) for s in source.meta["val"].shape)
        out = reader.meta.get("val")
        if not isinstance(out, Tensor):
            raise BatchingError(f"{reader.name} reads user value {source.name} and returns no single tensor")
        rank = out.dim()
        if reader in self._segmented:
            return shape  # the request's own operand, as the matmul read it
        if len(shape) <= rank - 1:
            return (1,) * (rank - 1 - len(shape)) + shape
        if len(shape) == rank and shape[0] == 1:
            return shape[1:]
        raise BatchingError(f"{reader.name} ({reader.target}) reads user value {source.name} of shape "
                            f"{list(shape)} other than by broadcasting over candidates")

    def _gather_for(self, source: fx.Node, reader: fx.Node) -> int:
        key = (source, self._tail(source, reader), reader in self._segmented)
        if key not in self._gather_of:
            origin = self._before_reshapes(source)
            if origin not in self.boundary:
                self.boundary.append(origin)
            self._gather_of[key] = len(self.gathers)
            self.gathers.append(Gather(self.boundary.index(origin), key[1], key[2]))
        return self._gather_of[key]

    def _before_reshapes(self, source: fx.Node) -> fx.Node:
        """The user value `source` is a reshape of, while that value has one leading row: the user graph
        returns it (its rows batch to M), and the gather's own reshape redoes the shape change per candidate."""
        node = source
        while node.target in SHAPE_TARGETS and isinstance(node.args[0], fx.Node):
            parent = node.args[0]
            value = parent.meta.get("val")
            if self.side.get(parent) is not Colour.USER or not isinstance(value, Tensor) or value.dim() == 0:
                break
            if not isinstance(value.shape[0], int) or value.shape[0] != 1:
                break
            node = parent
        return node

    def _is_segmented_matmul(self, node: fx.Node) -> bool:
        """A matmul of candidate rows by a user matrix (attention over a user sequence, UOI's shared operand):
        batched, each request's rows meet its own matrix (segmented_matmul) instead of a copy per candidate."""
        if node.target not in MATMUL_TARGETS or len(node.args) != 2 or node.kwargs:
            return False
        left, right = node.args
        if not isinstance(left, fx.Node) or not isinstance(right, fx.Node):
            return False
        if self.side.get(left) is not Colour.CANDIDATE or self.side.get(right) is not Colour.USER:
            return False
        right_value, left_value = right.meta.get("val"), left.meta.get("val")
        if not isinstance(right_value, Tensor) or not isinstance(left_value, Tensor) or left_value.dim() < 2:
            return False
        matrix = [int(s) for s in right_value.shape]
        while len(matrix) > 2 and matrix[0] == 1:
            matrix = matrix[1:]
        return len(matrix) == 2 and batch_factor(symbolic_expr(left_value.shape[0]), self.batch) is not None

    # -- the two graphs -------------------------------------------------------------------------------
    def user_graph(self, batched: bool) -> fx.GraphModule:
        """User placeholders -> boundary values. `batched`: literal batch-1 sizes become the batch M."""
        if batched and any(int(node.meta["val"].shape[0]) != 1 for node in self.boundary if node.meta["val"].dim()):
            raise BatchingError("a user value meeting candidates has no batch dimension")
        if batched and any(node.meta["val"].dim() == 0 for node in self.boundary):
            raise BatchingError("a user value meeting candidates is a scalar")
        graph = fx.Graph()
        env: dict[fx.Node, fx.Node] = {}
        for node in self.user_placeholders:
            env[node] = graph.placeholder(node.name)
            env[node].meta = dict(node.meta)
        rows: fx.Node | None = None
        if batched and self.user_placeholders:  # M, recorded as 1 (one request)
            rows = NodeFactory(graph, fake_mode_of(self.root.graph)).call(
                aten.sym_size.int, (env[self.user_placeholders[0]], 0))
        for node in self.root.graph.nodes:
            if node.op in ("placeholder", "output") or self.side[node] is Colour.CANDIDATE:
                continue
            copy = graph.node_copy(node, lambda n: env[n])
            if rows is not None and self.side[node] is Colour.USER and node.target in SIZE_LIST_TARGETS:
                _batch_leading_size(copy, node, rows)
            env[node] = copy
        graph.output(tuple(env[node] for node in self.boundary))
        graph.eliminate_dead_code()
        return fx.GraphModule(self.root, graph)

    def candidate_graph(self) -> fx.GraphModule:
        """Candidate placeholders, then one placeholder per gather -> the variant's flat outputs."""
        graph = fx.Graph()
        env: dict[fx.Node, fx.Node] = {}
        for node in self.placeholders:
            if node not in self.user_placeholders:
                env[node] = graph.placeholder(node.name)
                env[node].meta = dict(node.meta)
        candidates = self._candidates()
        gathered = []
        for i, gather in enumerate(self.gathers):
            origin = self.boundary[gather.index]
            name = f"{origin.name}_per_{'request' if gather.per_request else 'row'}_{i}"
            gathered.append(graph.placeholder(name))
            gathered[-1].meta["val"] = self._gathered_value(gather, candidates)
        candidates_per_request = graph.placeholder("candidates_per_request")
        candidates_per_request.meta["val"] = [candidates]
        for node in self.root.graph.nodes:
            if node.op in ("placeholder", "output") or self.side[node] is Colour.USER:
                continue
            read = functools.partial(self._read, env, gathered, reader=node)
            if node in self._segmented:
                left, right = node.args
                assert isinstance(left, fx.Node) and isinstance(right, fx.Node)
                factor = _rows_per_candidate(left, self.batch)
                env[node] = graph.call_function(segmented_matmul, (env[left], read(right), candidates_per_request,
                                                                   factor))
                env[node].meta["val"] = node.meta["val"]  # one request: the matmul it replaces, value for value
            else:
                env[node] = graph.node_copy(node, read)
        graph.output(tuple(env[node] for node in self.outputs))
        graph.eliminate_dead_code()
        return fx.GraphModule(self.root, graph)

    def _read(self, env: dict[fx.Node, fx.Node], gathered: list[fx.Node], source: fx.Node, reader: fx.Node) -> Argument:
        """What candidate op `reader` reads for `source` in the candidate graph (planned in __init__)."""
        if self.side[source] is not Colour.USER:
            return env[source]
        if source in self._constants:
            return self._constants[source]
        return gathered[self._reads[(reader, source)]]

    def _candidates(self) -> torch.SymInt | int:
        """N as the candidate placeholders record it."""
        for node in self.placeholders:
            value = node.meta.get("val")
            if node not in self.user_placeholders and isinstance(value, Tensor) and value.dim() and \
                    symbolic_expr(value.shape[0]) == self.batch:
                return value.shape[0]
        raise BatchingError("no candidate input has N rows")

    def _gathered_value(self, gather: Gather, candidates: torch.SymInt | int) -> Tensor:
        """A gather's value at one request: one row per candidate, or the request's one operand."""
        origin = self.boundary[gather.index].meta["val"]
        with fake_mode_of(self.root.graph):
            return torch.empty((1 if gather.per_request else candidates, *gather.tail), dtype=origin.dtype)


def _rows_per_candidate(node: fx.Node, batch: sympy.Symbol) -> int:
    rows = symbolic_expr(node.meta["val"].shape[0])
    factor = batch_factor(rows, batch)
    if factor is None:
        raise BatchingError(f"{node.name} has {rows} rows, not a multiple of the candidates")
    return factor


def _batch_leading_size(copy: fx.Node, original: fx.Node, rows: fx.Node) -> None:
    """view/reshape/expand of a user value to [1, ...] -> [M, ...]: the literal 1 was the request's row."""
    value = original.meta.get("val")
    sizes = copy.args[1] if len(copy.args) > 1 else None
    if not isinstance(value, Tensor) or value.dim() == 0 or int(value.shape[0]) != 1:
        return
    if isinstance(sizes, (list, tuple)) and sizes and sizes[0] == 1:
        copy.args = (copy.args[0], [rows, *sizes[1:]], *copy.args[2:])
