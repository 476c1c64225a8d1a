"""Jagged sizes built from the batch size fold to symbolic sizes, and jagged lookups to plain ones.

Sparse-feature libraries (torchrec's KeyedJaggedTensor, fbgemm) pack every key's ids into one values
tensor with per-sample lengths. An adapter that serves one id (or a fixed number L of ids) per sample
builds those lengths from the batch size alone (`torch.ones(N)`, `ones_like(ids)`, `full((N,), L)`). The
captured graph then reads sizes back from data: per-key sums via `.item()` (unbacked sizes), offsets via
`cumsum`. Because the values tensor concatenates user and candidate keys, every lookup reads a
candidate tensor and UOI cannot compute the user keys' lookups once.

The pass works on the *shape-only* sub-graph: nodes whose values depend on the batch size N but on no
input value (factories, `*_like` ops, sizes, parameters, and any deterministic op on those).

  * per-key rows: row k of `lengths.view(F, M)`, and of row-wise ops on it (the per-key sums, the
    cumsum offsets), is computed from key k's own lengths (exact), so one key's lengths read from
    data do not make every key's sizes data-dependent;
  * sizes: an `.item()` of a shape-only value that is a*N + b at every sampled batch size
    (SAMPLE_BATCHES, evaluated concretely) becomes that symbolic size;
  * splits: a dim-0 split or slice of a concat whose boundaries fall on the concat's parts is those
    parts (exact; split sizes add up to the input, so boundaries are matched from both ends): a user
    key's ids are again the user input, tiled, and UOI computes its lookup once;
  * lookups: `embedding_bag` whose offsets are 0, s, 2s, ... at every sample (s ids per bag) is
    `embedding` plus a sum/mean/max over the s ids (none when s == 1), per-sample weights and a
    padding index included (max with a padding index is left alone);
  * `fbgemm.jagged_to_padded_dense` over such offsets is a reshape (padded or cut to the length asked).

The size and offset folds rest on concrete evaluation: a function of N alone that matches a*N + b (or
a ramp) at every sample but not beyond them (a size clamped above 4099, say) would be folded wrongly;
the pipeline's check against VanI at the example call is the backstop. Values read from input data
(a lengths input, `ids != pad`) are never shape-only and stay as captured.
"""

from __future__ import annotations

import copy
import functools
import operator
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from fractions import Fraction
from typing import Any

import sympy
import torch
import torch.fx as fx

from service.engine.colouring import is_size_value
from service.engine.constant_eval import ConstantEvaluator, NotConstant
from service.engine.graph_tools import (
    RESHAPE_TARGETS,
    Argument,
    NodeFactory,
    arg_node,
    argument,
    as_int,
    as_list,
    as_node,
    as_nodes,
    aten,
    bound_arguments,
    callable_target,
    normalize_dim,
    replace_input,
    shape_exprs,
    symbolic_expr,
    tensor_meta,
)
from service.engine.passes import PassContext, PassResult

SAMPLE_BATCHES = (1, 2, 3, 5, 8, 64, 1000, 4099)
# Ops that read only the metadata (shape, dtype, device) of their first argument.
METADATA_ONLY = frozenset(
    {
        aten.sym_size.int,
        aten.sym_numel.default,
        aten.sym_stride.int,
        aten.ones_like.default,
        aten.zeros_like.default,
        aten.full_like.default,
        aten.new_ones.default,
        aten.new_zeros.default,
        aten.new_full.default,
    }
)
ITEMS = (aten.item.default, aten._local_scalar_dense.default)
SIZE_ASSERTS = (
    aten._assert_scalar.default,
    aten.sym_constrain_range_for_size.default,
    aten.sym_constrain_range.default,
)
EMBEDDING_BAGS = (
    aten.embedding_bag.default,
    aten.embedding_bag.padding_idx,
    aten._embedding_bag.default,
    aten._embedding_bag_forward_only.default,
)
SUM, MEAN, MAX = 0, 1, 2


def _fbgemm(name: str) -> Callable[..., Any] | None:
    namespace = getattr(torch.ops, "fbgemm", None)
    try:
        op: Callable[..., Any] = getattr(namespace, name).default
    except (AttributeError, RuntimeError):
        return None
    return op


@dataclass
class JaggedFold:
    """One jagged construct the pass rewrote."""

    node: str
    op: str
    how: str


class _ShapeOnly:
    """Which nodes depend on the batch size only, and their concrete values at the sampled batch sizes.

    One per run: `refresh()` re-decides which nodes are shape-only after a step rewrote the graph (cheap, no
    evaluation) and keeps the values already sampled (every rewrite keeps each surviving node's value)."""

    def __init__(self, gm: fx.GraphModule, batch: sympy.Symbol) -> None:
        self.gm = gm
        self.batch = batch
        self._is: dict[fx.Node, bool] = {}
        self.defining: dict[sympy.Symbol, fx.Node] = {}
        self._at = {n: ConstantEvaluator(gm, self._admit, functools.partial(self._known, n=n)) for n in SAMPLE_BATCHES}
        self.refresh()

    def refresh(self) -> None:
        """Decide every node in graph order (inputs before their users), as a fresh analysis would."""
        self._is, self.defining = {}, {}
        for node in self.gm.graph.nodes:
            self._is[node] = self._decide(node)
            if is_size_value(node):
                expr = symbolic_expr(node.meta["val"])
                if isinstance(expr, sympy.Symbol) and expr != self.batch:
                    self.defining.setdefault(expr, node)
        for evaluator in self._at.values():
            for node in [n for n in evaluator.memoized() if not self._is.get(n, False)]:
                evaluator.forget(node)

    def is_shape_only(self, node: Argument) -> bool:
        return not isinstance(node, fx.Node) or self._is.get(node, False)

    def _decide(self, node: fx.Node) -> bool:
        if node.op == "get_attr":
            return True
        if node.op != "call_function":
            return False
        if is_size_value(node) and self._free(symbolic_expr(node.meta["val"])) <= {self.batch}:
            return True
        target = node.target
        if isinstance(target, torch._ops.OpOverload):
            if torch.Tag.nondeterministic_seeded in target.tags or "empty" in str(target):
                return False
        inputs = node.all_input_nodes
        if target in METADATA_ONLY:
            inputs = [i for i in inputs if i is not node.args[0]]
            if not self._shape_known(node.args[0]):
                return False
        return all(self.is_shape_only(i) for i in inputs)

    def _free(self, expr: Any) -> set[Any]:
        return set() if isinstance(expr, int) else set(expr.free_symbols)

    def _shape_known(self, node: Argument) -> bool:
        value = tensor_meta(node)
        if value is None:
            return False
        symbols = set().union(*(self._free(e) for e in shape_exprs(value))) - {self.batch}
        return all(s in self.defining and self.is_shape_only(self.defining[s]) for s in symbols)

    # -- concrete evaluation (constant_eval.ConstantEvaluator, one per sampled N) -------------------
    def value(self, node: Argument, n: int) -> Any:
        return self._at[n].value(node)

    def size_at(self, expr: Any, n: int) -> int:
        if isinstance(expr, int):
            return expr
        values = {self.batch: n}
        for symbol in self._free(expr) - {self.batch}:
            if symbol not in self.defining:
                raise NotConstant(str(symbol))
            values[symbol] = int(self.value(self.defining[symbol], n))
        result = expr.subs(values)
        if not result.is_Integer:
            raise NotConstant(str(expr))
        return int(result)

    def _admit(self, node: fx.Node) -> str | None:
        return None if self.is_shape_only(node) else f"{node.name} reads input values"

    def _known(self, node: fx.Node, n: int) -> Any:
        """A size of N alone at N = n; an op reading only the shape of a value that is not shape-only, run on
        a stand-in of that shape. None: run the op on its inputs' values."""
        if is_size_value(node) and self._free(symbolic_expr(node.meta["val"])) <= {self.batch}:
            return self.size_at(symbolic_expr(node.meta["val"]), n)
        if node.target in METADATA_ONLY and not self.is_shape_only(node.args[0]):
            meta = arg_node(node, 0).meta["val"]
            stand_in = torch.zeros([self.size_at(e, n) for e in shape_exprs(meta)], dtype=meta.dtype)
            rest = fx.node.map_aggregate(node.args[1:], lambda a: self.value(a, n))
            kwargs = fx.node.map_aggregate(node.kwargs, lambda a: self.value(a, n))
            with torch.no_grad():
                return callable_target(node)(stand_in, *rest, **kwargs)
        return None

    def at_samples(self, node: fx.Node) -> list[Any] | None:
        try:
            return [self.value(node, n) for n in SAMPLE_BATCHES]
        except Exception:  # any op that cannot run on the samples leaves the node as captured
            return None


def _affine(values: list[Any]) -> tuple[int, int] | None:
    """(a, b) with value == a * N + b at every sampled N, integers, else None."""
    try:
        ys = [int(v) for v in values]
    except (TypeError, ValueError):
        return None
    (n0, n1), (y0, y1) = SAMPLE_BATCHES[:2], ys[:2]
    a = Fraction(y1 - y0, n1 - n0)
    b = y0 - a * n0
    if a.denominator != 1 or b.denominator != 1:
        return None
    if any(y != a * n + b for n, y in zip(SAMPLE_BATCHES, ys)):
        return None
    return int(a), int(b)


def _ramp_step(values: list[Any]) -> int | None:
    """s when every sampled tensor is 0, s, 2s, ... (1-D), the same s throughout (a lone 0 fits any s)."""
    steps = set()
    for v in values:
        if not isinstance(v, torch.Tensor) or v.dim() != 1 or v.numel() < 1 or v.is_floating_point():
            return None
        s = int(v[1] - v[0]) if v.numel() > 1 else None
        if s is None:
            if int(v[0]) != 0:
                return None
            continue
        if not torch.equal(v, torch.arange(v.numel(), dtype=v.dtype) * s):
            return None
        steps.add(s)
    return steps.pop() if len(steps) == 1 and next(iter(steps)) > 0 else None


def _dim0(dim: Argument, node: Argument) -> bool:
    value = node.meta.get("val") if isinstance(node, fx.Node) else None
    return isinstance(value, torch.Tensor) and isinstance(dim, int) and normalize_dim(dim, value.dim()) == 0


def _same(a: Any, b: Any) -> bool:
    return bool(sympy.expand(sympy.sympify(a) - sympy.sympify(b)) == 0)


class JaggedFolder:
    def __init__(self, gm: fx.GraphModule, user_placeholders: set[fx.Node], batch: sympy.Symbol) -> None:
        self.gm = gm
        self.graph = gm.graph
        self.batch = batch
        self.user_placeholders = user_placeholders
        self.factory = NodeFactory(self.graph)
        self.folds: list[JaggedFold] = []
        self._batch_node: fx.Node | None = None

    def run(self) -> list[JaggedFold]:
        shape_only = _ShapeOnly(self.gm, self.batch)  # the one sampled evaluator of this run
        self._per_key_rows(shape_only)
        shape_only.refresh()
        self._fold_sizes(shape_only)
        shape_only.refresh()
        to_padded_dense = _fbgemm("jagged_to_padded_dense")
        for node in list(self.graph.nodes):
            if node.op != "call_function" or not node.users:
                continue
            if node.target in (aten.split_with_sizes.default, aten.split.Tensor, aten.slice.Tensor):
                self._split_of_concat(node)
            elif node.target in EMBEDDING_BAGS:
                self._embedding_bag(node, shape_only)
            elif to_padded_dense is not None and node.target == to_padded_dense:
                self._jagged_to_padded_dense(node, shape_only)
        self.graph.eliminate_dead_code()
        self.gm.recompile()
        return self.folds

    # -- per-key rows -------------------------------------------------------------------------------
    def _per_key_rows(self, shape_only: _ShapeOnly) -> None:
        """Row k of lengths.view(F, M) and of row-wise ops on it (per-key sums, cumsum offsets) is key k's
        own lengths: rewriting each row read that way lets one key's sizes fold while another's stay
        data-dependent."""
        for node in list(self.graph.nodes):
            if node.target == aten.select.int and _dim0(node.args[1], node.args[0]):
                source, index = node.args[0], node.args[2]
            elif node.target is operator.getitem and getattr(node.args[0], "target", None) == aten.unbind.int:
                unbind = arg_node(node, 0)
                if not _dim0(unbind.args[1] if len(unbind.args) > 1 else 0, unbind.args[0]):
                    continue
                source, index = unbind.args[0], node.args[1]
            else:
                continue
            if shape_only.is_shape_only(source) or not isinstance(source, fx.Node) or not isinstance(index, int):
                continue
            with self.graph.inserting_before(node):
                row = self._row(source, index % source.meta["val"].shape[0], shape_only)
            if row is not None and row is not node:
                node.replace_all_uses_with(row)
                how = f"row {index} of {source.name} is computed from its own key"
                self.folds.append(JaggedFold(node.name, "row", how))

    def _row(self, node: fx.Node, k: int, shape_only: _ShapeOnly, depth: int = 0) -> fx.Node | None:
        """A node computing row k (along dim 0) of `node`, or None. Unused nodes left behind are dead code."""
        value = node.meta.get("val")
        if not isinstance(value, torch.Tensor) or value.dim() not in (1, 2) or depth > 32:
            return None
        call, target = self.factory.call, node.target
        if shape_only.is_shape_only(node):
            return call(aten.select.int, (node, 0, k))
        per_key_sum = target == aten.sum.dim_IntList and as_list(node.args[1]) in ([1], [-1])
        if per_key_sum and not node.args[2:] and not node.kwargs:
            inner = self._row(arg_node(node, 0), k, shape_only, depth + 1)  # per-key sums: [F, M] -> [F]
            return None if inner is None else call(aten.sum.dim_IntList, (inner, [0]))
        if value.dim() != 2:
            return None
        if target in RESHAPE_TARGETS:
            source = arg_node(node, 0)
            if source.target != aten.cat.default or source.meta["val"].dim() != 1:
                return None
            width, first = shape_exprs(value)[1], 0
            for part in as_nodes(source.args[0]):  # each part holds a whole number of rows
                rows = sympy.simplify(sympy.sympify(shape_exprs(part.meta["val"])[0]) / width)
                if part.meta["val"].dim() != 1 or part.meta["val"].dtype != value.dtype or not rows.is_Integer:
                    return None
                if first <= k < first + int(rows):
                    if int(rows) == 1:
                        return part
                    return call(aten.select.int, (call(aten.view.default, (part, [int(rows), -1])), 0, k - first))
                first += int(rows)
            return None
        if target == aten.cumsum.default and node.args[1] in (1, -1):
            inner = self._row(arg_node(node, 0), k, shape_only, depth + 1)
            return None if inner is None else call(aten.cumsum.default, (inner, 0), dict(node.kwargs))
        if target == aten.cat.default and normalize_dim(as_int(bound_arguments(node)["dim"]), 2) == 1:
            pieces = [self._row(p, k, shape_only, depth + 1) for p in as_nodes(node.args[0])]
            return None if any(p is None for p in pieces) else call(aten.cat.default, (pieces, 0))
        return None

    # -- sizes ----------------------------------------------------------------------------------
    def _batch(self) -> fx.Node:
        if self._batch_node is None:
            placeholders = [n for n in self.graph.nodes if n.op == "placeholder"]
            candidate = next(
                n
                for n in placeholders
                if n not in self.user_placeholders and shape_exprs(n.meta["val"])[:1] == [self.batch]
            )
            with self.graph.inserting_after(placeholders[-1]):
                self._batch_node = self.factory.call(aten.sym_size.int, (candidate, 0))
        return self._batch_node

    def _size(self, a: int, b: int, before: fx.Node) -> Argument:
        if a == 0:
            return b
        with self.graph.inserting_before(before):
            size = self._batch()
            if a != 1:
                size = self.factory.call(operator.mul, (size, a))
            if b:
                size = self.factory.call(operator.add, (size, b))
        return size

    def _fold_sizes(self, shape_only: _ShapeOnly) -> None:
        """`.item()` of a shape-only value that is a*N + b becomes that size; metadata is re-derived."""
        replaced: dict[fx.Node, Argument] = {}
        for node in list(self.graph.nodes):
            if node.target not in ITEMS or not is_size_value(node) or not shape_only.is_shape_only(node):
                continue
            values = shape_only.at_samples(node)
            fit = _affine(values) if values is not None else None
            if fit is None:
                continue
            replaced[node] = self._size(*fit, before=node)
            a, b = fit
            terms = (f"{a}*N" if a not in (0, 1) else "N" if a == 1 else "", str(b) if b else "")
            text = " + ".join(p for p in terms if p) or "0"
            self.folds.append(JaggedFold(node.name, "item", f"per-key length read from data is {text}"))
        if not replaced:
            return
        self._drop_size_asserts(replaced)
        touched: set[fx.Node] = set()
        for node, size in replaced.items():
            for user in list(node.users):
                replace_input(user, node, size)
                touched.add(user)
        self.graph.eliminate_dead_code()
        self.factory.refresh(touched & set(self.graph.nodes))

    def _drop_size_asserts(self, folded: dict[fx.Node, Argument]) -> None:
        """Runtime checks export added on the folded sizes (u >= 0, sum == numel) hold by construction."""
        frontier, seen = list(folded), set()
        while frontier:
            node = frontier.pop()
            for user in list(node.users):
                if user in seen:
                    continue
                seen.add(user)
                if user.target in SIZE_ASSERTS:
                    self.graph.erase_node(user)
                elif is_size_value(user) or (
                    user.op == "call_function" and isinstance(user.meta.get("val"), (bool, torch.SymBool))
                ):
                    frontier.append(user)

    # -- splits and slices of the values concat -------------------------------------------------
    def _split_of_concat(self, node: fx.Node) -> None:
        """A dim-0 split/slice of cat(parts) whose boundaries fall on the parts' boundaries is those parts."""
        source = node.args[0]
        if not (isinstance(source, fx.Node) and source.target == aten.cat.default):
            return
        rank = source.meta["val"].dim()
        if normalize_dim(as_int(bound_arguments(source)["dim"]), rank) != 0:
            return
        args = bound_arguments(node)
        if normalize_dim(as_int(args["dim"]), rank) != 0:
            return
        pieces: list[tuple[fx.Node, list[Any], list[Any]]]  # (output, where it begins, where it ends)
        if node.target == aten.slice.Tensor:
            if args["step"] != 1:
                return
            start_arg = args["start"] if args["start"] is not None else 0
            start = symbolic_expr(start_arg.meta["val"] if isinstance(start_arg, fx.Node) else start_arg)
            length = shape_exprs(node.meta["val"])[0]
            pieces = [(node, [start], [start + length])]
        else:
            if not all(u.target is operator.getitem for u in node.users):
                return
            # split sizes add up to the input's length: each boundary is known from the left and the right
            sizes = [shape_exprs(out)[0] for out in node.meta["val"]]
            total = shape_exprs(source.meta["val"])[0]
            lefts = [sum(sizes[:i], 0) for i in range(len(sizes) + 1)]
            rights = [total - sum(sizes[i:], 0) for i in range(len(sizes) + 1)]
            pieces = []
            for u in node.users:
                i = as_int(u.args[1])
                pieces.append((u, [lefts[i], rights[i]], [lefts[i + 1], rights[i + 1]]))
        parts = as_nodes(source.args[0])
        bounds: list[Any] = [0]
        end: Any = 0
        for part in parts:
            end = end + shape_exprs(part.meta["val"])[0]
            bounds.append(end)
        dtype = source.meta["val"].dtype
        for piece, begins, ends in pieces:
            first = next((i for i, b in enumerate(bounds) if any(_same(b, x) for x in begins)), None)
            last = next((i for i, b in enumerate(bounds) if any(_same(b, x) for x in ends)), None)
            if first is None or last is None or last <= first:
                continue
            covered = parts[first:last]
            if any(p.meta["val"].dtype != dtype for p in covered):
                continue  # cat promoted the dtype: the part alone is not the same tensor
            replacement = covered[0]
            if len(covered) > 1:
                with self.graph.inserting_before(piece):
                    replacement = self.factory.call(aten.cat.default, (covered, 0))
            piece.replace_all_uses_with(replacement)
            op = "slice" if node.target == aten.slice.Tensor else "split"
            how = f"rows of the values concat: {', '.join(p.name for p in covered)}"
            self.folds.append(JaggedFold(piece.name, op, how))

    # -- lookups --------------------------------------------------------------------------------
    def _embedding_bag(self, node: fx.Node, shape_only: _ShapeOnly) -> None:
        args = bound_arguments(node)
        weight, ids, offsets = args["weight"], args["indices"], args["offsets"]
        mode, weights = args.get("mode", SUM), args.get("per_sample_weights")
        padding = args.get("padding_idx")
        padding = None if padding is None or padding == -1 else padding
        if any(u.target is not operator.getitem or u.args[1] != 0 for u in node.users):
            return
        ids, weight = as_node(ids), as_node(weight)
        ids_shape = shape_exprs(ids.meta["val"])
        if len(ids_shape) != 1 or not isinstance(offsets, fx.Node):
            return
        step = _ramp_step(shape_only.at_samples(offsets) or [None])
        if step is None:
            return
        bags = shape_exprs(offsets.meta["val"])[0] - (1 if args.get("include_last_offset") else 0)
        if not _same(ids_shape[0], step * bags):
            return
        how = f"offsets are 0, {step}, {2 * step}, ...: {step} id(s) per bag"
        if step < 1 or (padding is not None and mode == MAX) or (weights is not None and mode != SUM):
            return
        getitem = next(iter(node.users))
        with self.graph.inserting_before(node):
            out = self._lookup(weight, ids, step, mode, weights, padding)
        getitem.replace_all_uses_with(out)
        self.folds.append(JaggedFold(node.name, "embedding_bag", f"{how} -> embedding"))

    def _lookup(
        self, weight: fx.Node, ids: fx.Node, step: int, mode: Argument, weights: Argument, padding: Argument
    ) -> fx.Node:
        call = self.factory.call
        flat = call(aten.reshape.default, (ids, [-1])) if ids.meta["val"].dim() != 1 else ids
        rows = call(aten.embedding.default, (weight, flat))
        dtype = rows.meta["val"].dtype
        if weights is not None:
            w = call(aten.reshape.default, (weights, [-1, 1]))
            rows = call(aten.mul.Tensor, (rows, w))
        mask = None
        if padding is not None:
            keep = call(aten.ne.Scalar, (flat, padding))
            mask = call(aten.unsqueeze.default, (call(aten._to_copy.default, (keep,), {"dtype": dtype}), -1))
            rows = call(aten.mul.Tensor, (rows, mask))
        if step == 1 and mask is None:
            return rows
        width = int(weight.meta["val"].shape[1])
        bags = call(aten.reshape.default, (rows, [-1, step, width]))
        if mode == MAX:
            return call(aten.amax.default, (bags, [1]))
        total = call(aten.sum.dim_IntList, (bags, [1]))
        if mode == SUM:
            return total
        if mask is None:
            return call(aten.div.Scalar, (total, step))
        count = call(aten.sum.dim_IntList, (call(aten.reshape.default, (mask, [-1, step, 1])), [1]))
        return call(aten.div.Tensor, (total, call(aten.clamp_min.default, (count, 1))))

    def _jagged_to_padded_dense(self, node: fx.Node, shape_only: _ShapeOnly) -> None:
        values, offsets, max_lengths = arg_node(node, 0), as_nodes(node.args[1]), as_list(node.args[2])
        pad = argument(node, 3, "padding_value", 0.0)
        if len(offsets) != 1 or len(max_lengths) != 1:
            return
        length = max_lengths[0]
        if not isinstance(length, int):
            return
        step = _ramp_step(shape_only.at_samples(offsets[0]) or [None])
        if step is None:
            return
        rows = shape_exprs(values.meta["val"])
        bags = shape_exprs(offsets[0].meta["val"])[0] - 1
        if not _same(rows[0], step * bags):
            return
        rest = list(rows[1:])
        if any(not isinstance(r, int) for r in rest):
            return
        with self.graph.inserting_before(node):
            dense = self.factory.call(aten.reshape.default, (values, [-1, step, *rest]))
            if length > step:
                widths = [0, 0] * len(rest) + [0, length - step]
                dense = self.factory.call(aten.constant_pad_nd.default, (dense, widths, pad))
            elif length < step:
                dense = self.factory.call(aten.slice.Tensor, (dense, 1, 0, length))
        node.replace_all_uses_with(dense)
        self.folds.append(JaggedFold(node.name, "jagged_to_padded_dense", f"{step} values per row: a reshape"))


def fold_jagged_pass(gm: fx.GraphModule, context: PassContext) -> PassResult:
    """Rewrite gm in place and return it with what was folded. All or nothing: if a rewrite fails, the result
    is a new module on a copy of gm's graph taken before (gm itself is left part-rewritten: use the result's
    module), and its one record says why."""
    with warnings.catch_warnings():  # deep-copying the pytree codegen trips a torch deprecation notice
        warnings.simplefilter("ignore", FutureWarning)
        untouched = copy.deepcopy(gm.graph)
    try:
        folds = JaggedFolder(gm, context.user_placeholders(gm), context.batch).run()
    except Exception as exc:  # a fold that cannot be completed leaves the captured graph as it was
        why = f"not folded ({type(exc).__name__}: {str(exc).strip()[:200]})"
        return PassResult(fx.GraphModule(gm, untouched), False, [JaggedFold("", "none", why)], why)
    return PassResult(gm, bool(folds), folds, "" if folds else "no jagged size, split or lookup built from N")
