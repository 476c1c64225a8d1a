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
from dataclasses import dataclass, field

import sympy
import torch
import torch.fx as fx

from service.engine.colouring import Colour, colour_graph, is_size_value
from service.engine.graph_tools import (
    Argument,
    NodeFactory,
    arg_node,
    as_list,
    as_nodes,
    aten,
    batch_factor,
    bound_arguments,
    callable_target,
    depends_on,
    fake_mode_of,
    normalize_dim,
    op_name,
    shape_exprs,
    substitute_batch,
    symbolic_expr,
)
from service.engine.passes import PassContext, PassResult

DIM_ARGUMENTS = frozenset({"dim", "dims", "dim0", "dim1", "dimension"})
# Ops whose output rows may regroup the batch (k changes); correct because they follow row-major order.
REGROUPING_OPS = frozenset(
    {
        aten.view.default,
        aten._unsafe_view.default,
        aten.reshape.default,
        aten.expand.default,
        aten.flatten.using_ints,
        aten.unflatten.int,
        aten.squeeze.dim,
        aten.squeeze.dims,
        aten.unsqueeze.default,
    }
)
USER_RIGHT_MATMULS = (aten.matmul.default, aten.bmm.default)


class _NotCompact(Exception):
    pass


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
    """Rebuilds a captured graph with compact (batch-1) user sub-graphs; one instance per rebuild."""

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
                outputs = fx.node.map_aggregate(node.args[0], lambda a: self._full(a) if isinstance(a, fx.Node) else a)
                self.graph.output(outputs)
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
            self.constant[node] = self._emit(node, "full")
            return
        if colour == Colour.USER and self.compact_enabled:
            try:
                self._check_compactible(node)
                self.compact[node] = self._emit(node, "compact")
                return
            except _NotCompact:
                pass
        self.full[node] = self._emit_full(node)

    # -- emitting -------------------------------------------------------------------------------
    def _emit(self, node: fx.Node, mode: str) -> fx.Node:
        args = fx.node.map_aggregate(node.args, lambda a: self._arg(a, mode))
        kwargs = fx.node.map_aggregate(node.kwargs, lambda a: self._arg(a, mode))
        try:
            return self.factory.call(callable_target(node), args, kwargs)
        except Exception as exc:  # the op refused compact shapes: compute it at batch N instead
            if mode == "compact":
                raise _NotCompact(str(exc)) from exc
            raise

    def _emit_full(self, node: fx.Node) -> fx.Node:
        users_of_compact = [i for i in node.all_input_nodes if i in self.compact and i not in self.full]
        special = self._shared_user_matmul(node) or self._user_part_as_bias(node)
        if users_of_compact and not special:
            self.merges.append(MergeRecord(node.name, op_name(node), [i.name for i in users_of_compact], "tiled"))
        return special or self._emit(node, "full")

    def _arg(self, arg: Argument, mode: str) -> Argument:
        if not isinstance(arg, fx.Node):
            return arg
        if is_size_value(arg):
            return self._size(arg, mode)
        if arg in self.constant:
            return self.constant[arg]
        if mode == "compact":
            if arg in self.compact:
                return self.compact[arg]
            if arg in self.full and not _has_batch(arg, self.batch):
                return self.full[arg]
            raise _NotCompact(f"{arg.name} exists only at batch N")
        return self._full(arg)

    def _size(self, node: fx.Node, mode: str) -> Argument:
        expr = symbolic_expr(node.meta["val"])
        if mode == "compact":
            value = substitute_batch(expr, self.batch, 1)
            if value is None:
                raise _NotCompact(f"size {expr} has symbols other than the batch")
            return value
        if isinstance(expr, int) or expr.is_Integer:
            return int(expr)
        if expr == self.batch:
            return self._batch()
        k = batch_factor(expr, self.batch)
        if k is not None:
            return self.factory.call(operator.mul, (self._batch(), k))
        if node not in self.sizes:
            self.sizes[node] = self._emit(node, "full")
        return self.sizes[node]

    def _batch(self) -> fx.Node:
        if self._batch_node is None:
            self._batch_node = self.factory.call(aten.sym_size.int, (self._first_candidate, 0))
        return self._batch_node

    def _full(self, node: fx.Node) -> fx.Node:
        """The batch-N value of a node, tiling its compact value on first request (zero-copy expand)."""
        if node in self.full:
            return self.full[node]
        if node in self.constant:
            return self.constant[node]
        compact = self.compact[node]
        k, *rest = compact.meta["val"].shape
        if k == 1:
            tiled = self.factory.call(aten.expand.default, (compact, [self._batch(), *rest]))
        else:  # [k, ...] repeated N times along dim 0, in row-major order
            grown = self.factory.call(aten.unsqueeze.default, (compact, 0))
            grown = self.factory.call(aten.expand.default, (grown, [self._batch(), k, *rest]))
            tiled = self.factory.call(aten.reshape.default, (grown, [-1, *rest]))
        self.full[node] = tiled
        return tiled

    # -- merge-point rewrites -------------------------------------------------------------------
    def _compact_2d_or_3d(self, node: fx.Node) -> torch.Size | None:
        if node in self.compact and node not in self.full:
            shape: torch.Size = self.compact[node].meta["val"].shape
            return shape
        return None

    def _shared_user_matmul(self, node: fx.Node) -> fx.Node | None:
        """C[B, m, d] @ U[1, d, L] as one (B*m x d) @ (d x L) GEMM: target attention over a user sequence."""
        if node.target not in USER_RIGHT_MATMULS or len(node.args) != 2:
            return None
        left, right = node.args
        if not isinstance(left, fx.Node) or not isinstance(right, fx.Node):
            return None
        right_shape = self._compact_2d_or_3d(right)
        left_val = left.meta.get("val")
        if right_shape is None or len(right_shape) != 3 or right_shape[0] != 1:
            return None
        if self.colours.get(left) != Colour.CANDIDATE:
            return None
        if left_val is None or left_val.dim() != 3:
            return None
        m, d = int(left_val.shape[1]), int(left_val.shape[2])
        length = int(right_shape[2])
        rows = self.factory.call(aten.reshape.default, (self._full(left), [-1, d]))
        shared = self.factory.call(aten.reshape.default, (self.compact[right], [d, length]))
        product = self.factory.call(aten.mm.default, (rows, shared))
        out = self.factory.call(aten.reshape.default, (product, [self._batch(), m, length]))
        self.merges.append(MergeRecord(node.name, op_name(node), [right.name], "user operand shared (one GEMM)"))
        return out

    def _user_part_as_bias(self, node: fx.Node) -> fx.Node | None:
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
            shape = self._compact_2d_or_3d(user)
            lin_val = lin.meta["val"]
            if shape is None or len(shape) != 2 or shape[0] != 1 or lin_val.dim() != 2 or shape[1] != lin_val.shape[1]:
                continue
            if self.colours.get(lin) != Colour.CANDIDATE:
                continue
            bias = self.factory.call(aten.reshape.default, (self.compact[user], [int(shape[1])]))
            x, weight = self._full(arg_node(lin, 0)), self._arg(lin.args[1], "full")
            self.merges.append(MergeRecord(node.name, op_name(node), [user.name], "user part as bias"))
            return self.factory.call(aten.linear.default, (x, weight, bias))
        return None

    # -- the batch-1 safety rules ---------------------------------------------------------------
    def _check_compactible(self, node: fx.Node) -> None:
        outputs = _tensors(node.meta.get("val"))
        if not outputs:
            raise _NotCompact("no tensor output")
        factors = []
        for out in outputs:
            exprs = shape_exprs(out)
            if len(outputs) > 1 and not any(depends_on(e, self.batch) for e in exprs):
                continue  # a side output without batch rows (e.g. eval BatchNorm's empty statistics)
            k = batch_factor(exprs[0], self.batch) if exprs else None
            if k is None or any(depends_on(e, self.batch) for e in exprs[1:]):
                raise _NotCompact("output is not batch-major")
            factors.append(k)
        if not factors:
            raise _NotCompact("no batch-major output")
        if node.target is operator.getitem:
            if node.args[0] not in self.compact:
                raise _NotCompact("tuple is not compact")
            return
        target = node.target
        if not isinstance(target, torch._ops.OpOverload) or torch.Tag.nondeterministic_seeded in target.tags:
            raise _NotCompact("not a deterministic ATen op")
        compact_inputs = [i for i in node.all_input_nodes if i in self.compact]
        for i in node.all_input_nodes:
            if is_size_value(i) or i in self.constant or i in self.compact:
                continue
            if i in self.full and not _has_batch(i, self.batch):
                continue
            raise _NotCompact(f"input {i.name} exists only at batch N")
        out_rank, out_k = outputs[0].dim(), factors[0]
        if target not in REGROUPING_OPS:
            for i in compact_inputs:
                shape = self.compact[i].meta["val"].shape
                if int(shape[0]) != out_k or (torch.Tag.pointwise in target.tags and len(shape) != out_rank):
                    raise _NotCompact("inputs and output group the batch differently")
        self._check_dim_arguments(node)

    def _check_dim_arguments(self, node: fx.Node) -> None:
        """Ops that act along dim 0 (reduce, sort, concat, transpose it away) mix candidates' rows."""
        first = next((a for a in node.args if isinstance(a, fx.Node)), None)
        rank = first.meta["val"].dim() if first is not None and hasattr(first.meta.get("val"), "dim") else None
        concat_like = node.target in (aten.cat.default, aten.stack.default)
        if concat_like and node.args and isinstance(node.args[0], (list, tuple)):
            rank = as_nodes(node.args[0])[0].meta["val"].dim() + (1 if node.target == aten.stack.default else 0)
        for name, value in bound_arguments(node).items():
            if node.target == aten.repeat.default and name == "repeats" and as_list(value)[0] != 1:
                raise _NotCompact("repeat along dim 0")
            if node.target == aten.index.Tensor and name == "indices" and as_list(value)[0] is not None:
                raise _NotCompact("indexing along dim 0")
            if name not in DIM_ARGUMENTS:
                continue
            if value is None:
                raise _NotCompact("reduces over every dim")
            dims = [value] if isinstance(value, int) else as_list(value)
            static_dims = [d for d in dims if isinstance(d, int)]
            if rank is None or len(static_dims) != len(dims):
                raise _NotCompact("dims not static")
            normalized = [normalize_dim(d, rank) for d in static_dims]
            if node.target == aten.permute.default:
                if normalized[0] != 0:
                    raise _NotCompact("moves dim 0")
            elif 0 in normalized:
                raise _NotCompact("acts along dim 0")


def _tensors(value: object) -> list[torch.Tensor]:
    if isinstance(value, torch.Tensor):
        return [value]
    if isinstance(value, (list, tuple)):
        return [v for v in value if isinstance(v, torch.Tensor)]
    return []


def _has_batch(node: fx.Node, batch: sympy.Symbol) -> bool:
    return any(any(depends_on(e, batch) for e in shape_exprs(t)) for t in _tensors(node.meta.get("val")))


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
