"""UOI: move every tile of user data down to the first op that also reads candidate data.

The pass rebuilds the captured (VanI) graph. Each user-coloured node gets a *compact* version that runs
at batch 1 when that provably equals tiling: the full value is the compact one repeated N times along
dim 0 (for a [k, ...] compact value, its row-major flattening repeated N times). Size arguments that
depend on N are evaluated at N = 1 there, so user code that reads `x.size(0)` or calls `view(B, -1)`
keeps working. A node that cannot be compact is computed at batch N from tiled inputs, exactly as in
VanI. A compact value is tiled (a zero-copy expand) only where a full value is needed: at merge points
with candidate data and at the outputs.
"""

from __future__ import annotations

import operator
from collections.abc import Callable
from dataclasses import dataclass, field

import sympy
import torch
import torch.fx as fx

from service.engine.batch_one import has_batch_rows, refusal
from service.engine.colouring import Colour, colour_graph, is_size_value
from service.engine.graph_tools import (
    BATCHED_MATMUL_TARGETS,
    Argument,
    NodeFactory,
    arg_node,
    aten,
    batch_factor,
    callable_target,
    fake_mode_of,
    op_name,
    substitute_batch,
    symbolic_expr,
)
from service.engine.passes import PassContext, PassResult


@dataclass
class MergeRecord:
    """A candidate op that reads user data: where UOI tiles (or avoids tiling)."""

    node: str
    op: str
    user_inputs: list[str]
    how: str  # "tiled", "user operand shared (one GEMM)", "user part as bias"


@dataclass
class SinkResult:
    graph_module: fx.GraphModule
    merges: list[MergeRecord] = field(default_factory=list)


class TileSinker:
    """Rebuilds a captured graph with compact (batch-1) user sub-graphs; one instance per rebuild.

    Every source node lands in one map: `compact` (runs at batch 1), `full` (batch N; a compact node also gets
    its tiled value here on first request), `constant` (no colour: parameters and what is made from them) or
    `sizes` (a size that depends on N, re-derived from the candidate batch)."""

    def __init__(
        self,
        source: fx.GraphModule,
        colours: dict[fx.Node, Colour],
        user_placeholders: set[fx.Node],
        batch: sympy.Symbol,
        compact: bool,
    ) -> None:
        self.source = source
        self.colours = colours
        self.user_placeholders = user_placeholders
        self.batch = batch
        self.compact_enabled = compact
        self.graph = fx.Graph()
        self.factory = NodeFactory(self.graph, fake_mode_of(source.graph))
        self.full: dict[fx.Node, fx.Node] = {}
        self.compact: dict[fx.Node, fx.Node] = {}
        self.constant: dict[fx.Node, fx.Node] = {}
        self.sizes: dict[fx.Node, fx.Node] = {}
        self.merges: list[MergeRecord] = []
        self._batch_node: fx.Node | None = None
        self._first_candidate: fx.Node | None = None

    # -- driver ---------------------------------------------------------------------------------
    def run(self) -> SinkResult:
        for node in self.source.graph.nodes:
            if node.op == "placeholder":
                self._placeholder(node)
            elif node.op == "get_attr":
                new = self.graph.get_attr(node.target)
                new.meta = dict(node.meta)
                self.constant[node] = new
            elif node.op == "output":
                self.graph.output(fx.node.map_arg(node.args[0], self.full_value))
            elif node.op == "call_function" and node.users and not is_size_value(node):
                self._call(node)
        self.graph.eliminate_dead_code()
        module = fx.GraphModule(self.source, self.graph)
        return SinkResult(module, self.merges)

    def _placeholder(self, node: fx.Node) -> None:
        new = self.graph.placeholder(node.name)
        new.meta = dict(node.meta)
        if node in self.user_placeholders:
            self.compact[node] = new
        else:
            self.full[node] = new
            self._first_candidate = self._first_candidate or new

    def _call(self, node: fx.Node) -> None:
        colour = self.colours[node]
        if colour == Colour.NONE:
            self.constant[node] = self._emit(node, self.full_argument)
            return
        if colour == Colour.USER and self.compact_enabled and self._emit_compact(node):
            return
        self.full[node] = self._emit_full(node)

    # -- emitting -------------------------------------------------------------------------------
    def _emit(self, node: fx.Node, argument: Callable[[Argument], Argument]) -> fx.Node:
        args = fx.node.map_aggregate(node.args, argument)
        kwargs = fx.node.map_aggregate(node.kwargs, argument)
        return self.factory.call(callable_target(node), args, kwargs)

    def _emit_compact(self, node: fx.Node) -> bool:
        """Run `node` at batch 1 when the batch-1 rules allow it and the op accepts the compact shapes."""
        if refusal(node, self.compact, self._same_at_every_batch, self.batch) is not None:
            return False
        try:
            self.compact[node] = self._emit(node, self._compact_argument)
        except Exception:  # the op's own shape checks refuse compact inputs (fake-run first: no node left)
            return False
        return True

    def _emit_full(self, node: fx.Node) -> fx.Node:
        """`node` at batch N: a merge rule's rewrite when one applies, else the op on tiled user inputs."""
        for rule in MERGE_RULES:
            merged = rule(self, node)
            if merged is not None:
                return merged
        tiled = [i.name for i in node.all_input_nodes if self.compact_only(i) is not None]
        if tiled:
            self.merges.append(MergeRecord(node.name, op_name(node), tiled, "tiled"))
        return self._emit(node, self.full_argument)

    def _same_at_every_batch(self, node: fx.Node) -> bool:
        """An input a batch-1 op may read as it is: a constant, or a batch-N value without batch rows."""
        return node in self.constant or (node in self.full and not has_batch_rows(node, self.batch))

    def _compact_argument(self, arg: Argument) -> Argument:
        """An argument at batch 1 (the batch-1 rules checked that each input has such a value)."""
        if not isinstance(arg, fx.Node):
            return arg
        if is_size_value(arg):
            value = substitute_batch(symbolic_expr(arg.meta["val"]), self.batch, 1)
            assert value is not None, f"{arg.name}: refusal() admits only sizes of N alone"
            return value
        if arg in self.constant:
            return self.constant[arg]
        return self.compact[arg] if arg in self.compact else self.full[arg]

    def full_argument(self, arg: Argument) -> Argument:
        """An argument at batch N: sizes re-derived from the candidate batch, user values tiled."""
        if not isinstance(arg, fx.Node):
            return arg
        if is_size_value(arg):
            return self._size(arg)
        if arg in self.constant:
            return self.constant[arg]
        return self.full_value(arg)

    def _size(self, node: fx.Node) -> Argument:
        expr = symbolic_expr(node.meta["val"])
        if isinstance(expr, int) or expr.is_Integer:
            return int(expr)
        if expr == self.batch:
            return self.batch_size()
        k = batch_factor(expr, self.batch)
        if k is not None:
            return self.factory.call(operator.mul, (self.batch_size(), k))
        if node not in self.sizes:
            self.sizes[node] = self._emit(node, self.full_argument)
        return self.sizes[node]

    def batch_size(self) -> fx.Node:
        """N, read once from the first candidate input."""
        if self._batch_node is None:
            self._batch_node = self.factory.call(aten.sym_size.int, (self._first_candidate, 0))
        return self._batch_node

    def full_value(self, node: fx.Node) -> fx.Node:
        """The batch-N value of a node, tiling its compact value on first request (zero-copy expand)."""
        if node in self.full:
            return self.full[node]
        if node in self.constant:
            return self.constant[node]
        compact = self.compact[node]
        k, *rest = compact.meta["val"].shape
        if k == 1:
            tiled = self.factory.call(aten.expand.default, (compact, [self.batch_size(), *rest]))
        else:  # [k, ...] repeated N times along dim 0, in row-major order
            grown = self.factory.call(aten.unsqueeze.default, (compact, 0))
            grown = self.factory.call(aten.expand.default, (grown, [self.batch_size(), k, *rest]))
            tiled = self.factory.call(aten.reshape.default, (grown, [-1, *rest]))
        self.full[node] = tiled
        return tiled

    def compact_only(self, node: fx.Node) -> torch.Size | None:
        """The batch-1 shape of a node that exists only compact so far (no tiled value yet), else None."""
        if node in self.compact and node not in self.full:
            shape: torch.Size = self.compact[node].meta["val"].shape
            return shape
        return None


# -- merge rules: a candidate op reading a compact user value, computed without tiling it -----------------
def shared_user_operand(sinker: TileSinker, node: fx.Node) -> fx.Node | None:
    """C[B, m, d] @ U[1, d, L] as one (B*m x d) @ (d x L) GEMM: target attention over a user sequence."""
    if node.target not in BATCHED_MATMUL_TARGETS or len(node.args) != 2:
        return None
    left, right = node.args
    if not isinstance(left, fx.Node) or not isinstance(right, fx.Node):
        return None
    right_shape = sinker.compact_only(right)
    left_val = left.meta.get("val")
    if right_shape is None or len(right_shape) != 3 or right_shape[0] != 1:
        return None
    if sinker.colours.get(left) != Colour.CANDIDATE:
        return None
    if left_val is None or left_val.dim() != 3:
        return None
    m, d = int(left_val.shape[1]), int(left_val.shape[2])
    length = int(right_shape[2])
    call = sinker.factory.call
    rows = call(aten.reshape.default, (sinker.full_value(left), [-1, d]))
    shared = call(aten.reshape.default, (sinker.compact[right], [d, length]))
    product = call(aten.mm.default, (rows, shared))
    out = call(aten.reshape.default, (product, [sinker.batch_size(), m, length]))
    sinker.merges.append(MergeRecord(node.name, op_name(node), [right.name], "user operand shared (one GEMM)"))
    return out


def user_part_as_bias(sinker: TileSinker, node: fx.Node) -> fx.Node | None:
    """add(linear(C, W), U[1, out]) -> linear(C, W, bias=U): the broadcast add rides inside the GEMM."""
    if node.target != aten.add.Tensor or len(node.args) != 2 or node.kwargs:
        return None
    for lin, user in (node.args, node.args[::-1]):
        if not (isinstance(lin, fx.Node) and lin.target == aten.linear.default and len(lin.users) == 1):
            continue
        if not isinstance(user, fx.Node):
            continue
        if len(lin.args) > 2 and lin.args[2] is not None:
            continue
        shape = sinker.compact_only(user)
        lin_val = lin.meta["val"]
        if shape is None or len(shape) != 2 or shape[0] != 1 or lin_val.dim() != 2 or shape[1] != lin_val.shape[1]:
            continue
        if sinker.colours.get(lin) != Colour.CANDIDATE:
            continue
        bias = sinker.factory.call(aten.reshape.default, (sinker.compact[user], [int(shape[1])]))
        x, weight = sinker.full_value(arg_node(lin, 0)), sinker.full_argument(lin.args[1])
        sinker.merges.append(MergeRecord(node.name, op_name(node), [user.name], "user part as bias"))
        return sinker.factory.call(aten.linear.default, (x, weight, bias))
    return None


# Tried in order on every candidate op; the first that applies replaces the op, else it reads tiled values.
MERGE_RULES: tuple[Callable[[TileSinker, fx.Node], fx.Node | None], ...] = (shared_user_operand, user_part_as_bias)


def sink_tiles(
    source: fx.GraphModule,
    colours: dict[fx.Node, Colour],
    user_placeholders: set[fx.Node],
    batch: sympy.Symbol,
    compact: bool = True,
) -> SinkResult:
    """UOI when compact=True; with compact=False the same rebuild yields plain VanI."""
    return TileSinker(source, colours, user_placeholders, batch, compact).run()


def sink_tiles_pass(gm: fx.GraphModule, context: PassContext) -> PassResult:
    """UOI's step: a new module with compact user sub-graphs; records the merge points."""
    users = context.user_placeholders(gm)
    result = sink_tiles(gm, colour_graph(gm.graph, users, context.batch), users, context.batch, compact=True)
    return PassResult(result.graph_module, True, result.merges)


def rebuild_pass(gm: fx.GraphModule, context: PassContext) -> PassResult:
    """VanI's step: the same rebuild with every node at batch N (sizes re-derived from the candidate batch)."""
    users = context.user_placeholders(gm)
    result = sink_tiles(gm, colour_graph(gm.graph, users, context.batch), users, context.batch, compact=False)
    return PassResult(result.graph_module, True)
