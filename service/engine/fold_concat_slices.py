"""Fold column reads of a concat back onto the concat's parts, so a flat feature tensor splits by side.

Many real rankers take ONE flat tensor whose columns are features (DeepCTR-Torch: `forward(self, X)`
reading `X[:, s:e]`, `X[:, [3, 7, 9]]`, `index_select`, `X[:, k]`), or a few positional tensors built
the same way (DLRM's sparse ids `[N, F]`, read `lS_i[:, k]`). The user's adapter assembles that tensor
from the service's features: `X = torch.cat([user_cols, cand_cols, ...], 1)`. Once the user and
candidate columns meet in X, colouring sees only candidate data: every slice of X is candidate-side,
UOI computes nothing once and MaRI finds no user/candidate concat to split.

A read of known columns of a concat is a read of its parts:

    slice(cat([a, b, ...], d), d, s, e)      == the piece of the one part it lies in, or
                                                cat([tail of a, b, head of c], d) where it spans parts
    index_select(cat(parts, d), d, [i, j..]) == cat of one piece per run of consecutive indices that
    cat(parts, d)[:, [i, j, ...]]               fall in the same part (a slice where the run is a
                                                range, an index_select otherwise)
    select(cat(parts, d), d, k)              == select(the part holding k, d, k - its offset)

This pass rewrites those (and the outputs of `split`/`unbind` along the concat axis, and a reshape
that only drops size-1 dims of a last-axis concat, DeepCTR's `flatten(cat(embeddings, -1), 1)`) on
the captured graph, until nothing changes. Every rewrite is an exact identity (pure data movement, the
same values in the same order; a part whose dtype differs from the concat's is first cast as `cat`
would promote it). Views and `.long()` casts between the read and its users need no handling: they are
pointwise on the folded result. Afterwards user columns read only user data (UOI computes them and
their embedding lookups once) and the concat the model builds from its slices is a user/candidate
concat that MaRI splits. VanI never runs this pass: it stays the captured graph.
"""

from __future__ import annotations

import operator
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TypeGuard

import sympy
import torch
import torch.fx as fx

from service.engine.colouring import Colour, colour_graph
from service.engine.constant_eval import ConstantEvaluator, NotConstant
from service.engine.graph_tools import (
    CAT_TARGETS,
    RESHAPE_TARGETS,
    Argument,
    NodeFactory,
    argument,
    as_int,
    as_list,
    as_nodes,
    aten,
    attribute_value,
    callable_target,
    normalize_dim,
    op_name,
    replace_input,
    shape_exprs,
    tensor_meta,
    tensor_value,
)
from service.engine.passes import PassContext, PassResult

MAX_ROUNDS = 64  # each round moves reads strictly towards the graph inputs; real graphs need 2-4
MAX_INDEX_DEPTH = 16  # ops between a column index and its constants
SPLITS = (aten.split_with_sizes.default, aten.split.Tensor, aten.unbind.int)
ASSERT_METADATA = aten._assert_tensor_metadata.default
READS = (aten.slice.Tensor, aten.select.int, aten.index_select.default, aten.index.Tensor, *SPLITS)
_SIDES = {Colour.USER: "user", Colour.CANDIDATE: "candidate", Colour.NONE: "constant"}


@dataclass
class FoldRecord:
    """One read of a concat rewritten as a read of the concat's parts."""

    node: str  # the read that was folded away (slice, select, index, index_select, split output, view)
    op: str
    concat: str  # the concat it read
    axis: int
    columns: list[int]  # the concat columns along `axis` it read, in order
    parts: list[str] = field(default_factory=list)  # the concat parts it reads now, in order
    side: str = ""  # "user", "candidate", "mixed" or "constant": what the folded read depends on


class _Skip(Exception):
    pass


def _parts(cat: fx.Node) -> list[fx.Node]:
    return as_nodes(cat.args[0])


class ConcatSliceFolder:
    def __init__(self, gm: fx.GraphModule) -> None:
        self.gm = gm
        self.graph = gm.graph
        self.factory = NodeFactory(gm.graph)
        self.records: list[tuple[FoldRecord, list[fx.Node]]] = []
        self._casts: dict[tuple[fx.Node, torch.dtype], fx.Node] = {}
        self._buffers = 0

    def run(self) -> list[tuple[FoldRecord, list[fx.Node]]]:
        for _ in range(MAX_ROUNDS):
            changed = False
            for node in list(self.graph.nodes):
                if getattr(node, "_erased", False) or node.op != "call_function" or not node.users:
                    continue  # erased by an earlier fold in this round, or dead
                source = node.args[0] if node.args else None
                if not (isinstance(source, fx.Node) and source.target in CAT_TARGETS):
                    continue
                axis = self._concat_axis(source)
                if axis is None:
                    continue
                try:
                    changed |= self._fold(node, source, axis)
                except _Skip:
                    continue
            if not changed:
                break
        if self.records:
            self._drop_dead_asserts()
        self.graph.eliminate_dead_code()
        self.gm.recompile()
        return self.records

    # -- the concat ---------------------------------------------------------------------------------
    def _concat_axis(self, cat: fx.Node) -> int | None:
        """The concat's axis when every part has the same rank and a static width along it."""
        value = tensor_meta(cat)
        parts = [tensor_meta(p) for p in _parts(cat)]
        if value is None or not parts or any(p is None or p.dim() != value.dim() for p in parts):
            return None
        axis = normalize_dim(as_int(argument(cat, 1, "dim", 0)), value.dim())
        if any(not _static(p.shape[axis]) for p in parts if p is not None):
            return None
        return axis

    def _locate(self, cat: fx.Node, axis: int, columns: list[int]) -> list[tuple[int, int]]:
        """(part index, column within the part) for each concat column."""
        widths = [int(tensor_value(p).shape[axis]) for p in _parts(cat)]
        starts = [sum(widths[:i]) for i in range(len(widths))]
        total = sum(widths)
        located = []
        for column in columns:
            if not 0 <= column < total:
                raise _Skip(f"column {column} outside the concat")
            part = max(i for i, s in enumerate(starts) if s <= column and widths[i] > 0)
            located.append((part, column - starts[part]))
        return located

    # -- dispatch -----------------------------------------------------------------------------------
    def _fold(self, node: fx.Node, cat: fx.Node, axis: int) -> bool:
        rank = tensor_value(cat).dim()
        total = int(tensor_value(cat).shape[axis])
        target = node.target
        if target == aten.slice.Tensor:
            dim, start, end, step = _slice_args(node)
            if normalize_dim(as_int(dim), rank) != axis:
                if _is_full_slice(start, end, step):
                    return self._replace(node, cat, cat, axis, list(range(total)), [cat])
                return False
            if not (_static_bound(start) and _static_bound(end) and _static_bound(step)) or (step or 1) <= 0:
                return False
            columns = list(range(*slice(start, end, step).indices(total)))
            return self._fold_columns(node, cat, axis, columns)
        if target == aten.select.int and node.args[0] is cat:
            dim, index = node.args[1], node.args[2]
            if normalize_dim(as_int(dim), rank) != axis or not isinstance(index, int):
                return False
            column = index + total if index < 0 else index
            ((part, local),) = self._locate(cat, axis, [column])
            with self.graph.inserting_before(node):
                piece = self.factory.call(aten.select.int, (self._part(cat, part), axis, local))
            return self._replace(node, cat, piece, axis, [column], [_parts(cat)[part]])
        if target == aten.index_select.default and node.args[0] is cat:
            if normalize_dim(as_int(node.args[1]), rank) != axis:
                return False
            columns = self._constant_indices(node.args[2], total)
            return self._fold_columns(node, cat, axis, columns)
        if target == aten.index.Tensor and node.args[0] is cat:
            indices = as_list(node.args[1])
            given = [i for i, index in enumerate(indices) if index is not None]
            if given != [axis]:
                return False
            columns = self._constant_indices(indices[axis], total)
            return self._fold_columns(node, cat, axis, columns)
        if target in SPLITS and node.args[0] is cat:
            return self._fold_split(node, cat, axis, rank, total)
        if target in RESHAPE_TARGETS and node.args[0] is cat:
            return self._fold_reshape(node, cat, axis, rank)
        if node.args[0] is cat and self._is_elementwise_of(node, cat):
            return self._push_elementwise(node, cat, axis, total)
        return False

    # -- column reads -------------------------------------------------------------------------------
    def _fold_columns(self, node: fx.Node, cat: fx.Node, axis: int, columns: list[int]) -> bool:
        if not columns:
            return False
        located = self._locate(cat, axis, columns)
        runs: list[tuple[int, list[int]]] = []  # (part, its columns), consecutive reads of one part
        for part, local in located:
            if runs and runs[-1][0] == part:
                runs[-1][1].append(local)
            else:
                runs.append((part, [local]))
        parts = _parts(cat)
        with self.graph.inserting_before(node):
            pieces = [self._piece(cat, part, axis, locals_) for part, locals_ in runs]
            result = pieces[0] if len(pieces) == 1 else self.factory.call(aten.cat.default, (pieces, axis))
        return self._replace(node, cat, result, axis, columns, [parts[part] for part, _ in runs])

    def _piece(self, cat: fx.Node, part: int, axis: int, columns: list[int]) -> fx.Node:
        source = self._part(cat, part)
        width = int(tensor_value(source).shape[axis])
        first, count = columns[0], len(columns)
        step = columns[1] - columns[0] if count > 1 else 1
        if step > 0 and columns == list(range(first, first + step * count, step)):
            if (first, step, count) == (0, 1, width):
                return source
            return self.factory.call(aten.slice.Tensor, (source, axis, first, first + step * (count - 1) + 1, step))
        index = self.factory.constant(self.gm, f"_fold_index_{self._buffers}", torch.tensor(columns, dtype=torch.int64))
        self._buffers += 1
        return self.factory.call(aten.index_select.default, (source, axis, index))

    def _part(self, cat: fx.Node, part: int) -> fx.Node:
        """The part as the concat sees it: cast to the concat's dtype where `cat` promoted it."""
        source = _parts(cat)[part]
        dtype = tensor_value(cat).dtype
        if tensor_value(source).dtype == dtype:
            return source
        key = (source, dtype)
        if key not in self._casts:  # right after the part (after the inputs): before every read of it
            if source.op == "call_function":
                where = self.graph.inserting_after(source)
            else:
                first_op = next(n for n in self.graph.nodes if n.op not in ("placeholder", "get_attr"))
                where = self.graph.inserting_before(first_op)
            with where:
                self._casts[key] = self.factory.call(aten._to_copy.default, (source,), {"dtype": dtype})
        return self._casts[key]

    def _constant_indices(self, index: Argument, total: int) -> list[int]:
        value = self._constant(index)
        if value.dtype == torch.bool:
            if value.dim() != 1 or value.numel() != total:
                raise _Skip("mask does not cover the concat axis")
            value = value.nonzero().squeeze(1)
        if value.dim() != 1 or value.dtype not in (torch.int64, torch.int32):  # uint8 would index as a mask
            raise _Skip("index is not a 1-D integer tensor")
        return [i + total if i < 0 else i for i in value.tolist()]

    def _constant(self, node: Argument) -> torch.Tensor:
        """Evaluate a sub-graph of constants only (a buffer, a lifted `torch.tensor([...])`, its clone)."""
        if not isinstance(node, fx.Node):
            raise _Skip("index is not a graph constant")
        try:
            value: torch.Tensor = ConstantEvaluator(self.gm, self._index_rule, max_depth=MAX_INDEX_DEPTH).value(node)
        except NotConstant as exc:
            raise _Skip(str(exc)) from exc
        except Exception as exc:  # not evaluable outside the graph: leave the read as it is
            raise _Skip(f"index not evaluable: {exc}") from exc
        return value

    def _index_rule(self, node: fx.Node) -> str | None:
        """What an index sub-graph may hold: tensor attributes and deterministic ATen ops on them."""
        if node.op == "get_attr":
            return None if isinstance(attribute_value(self.gm, node), torch.Tensor) else "index is not a tensor"
        target = node.target
        if node.op != "call_function" or not isinstance(target, torch._ops.OpOverload):
            return "index depends on the inputs"
        return "index is random" if torch.Tag.nondeterministic_seeded in target.tags else None

    # -- split / unbind outputs ---------------------------------------------------------------------
    def _fold_split(self, node: fx.Node, cat: fx.Node, axis: int, rank: int, total: int) -> bool:
        if node.target == aten.unbind.int:
            dim = argument(node, 1, "dim", 0)
            ranges = [[k] for k in range(total)]
        else:
            split_sizes = node.args[1]
            dim = argument(node, 2, "dim", 0)
            if node.target == aten.split.Tensor:
                if not isinstance(split_sizes, int) or split_sizes <= 0:
                    return False
                split_sizes = [min(split_sizes, total - s) for s in range(0, total, split_sizes)]
            sizes = [s for s in as_list(split_sizes) if isinstance(s, int)]
            if len(sizes) != len(as_list(split_sizes)):
                return False
            starts = [sum(sizes[:i]) for i in range(len(sizes))]
            ranges = [list(range(s, s + size)) for s, size in zip(starts, sizes)]
        if normalize_dim(as_int(dim), rank) != axis:
            return False
        outputs = list(node.users)
        if not all(u.target is operator.getitem and isinstance(u.args[1], int) for u in outputs):
            return False
        changed = False
        for output in outputs:
            columns = ranges[as_int(output.args[1])]
            if not columns:
                continue
            if node.target == aten.unbind.int:
                ((part, local),) = self._locate(cat, axis, columns)
                with self.graph.inserting_before(output):
                    piece = self.factory.call(aten.select.int, (self._part(cat, part), axis, local))
                changed |= self._replace(output, cat, piece, axis, columns, [_parts(cat)[part]])
            else:
                changed |= self._fold_columns(output, cat, axis, columns)
        return changed

    # -- squeeze-only reshapes ----------------------------------------------------------------------
    def _fold_reshape(self, node: fx.Node, cat: fx.Node, axis: int, rank: int) -> bool:
        """view(cat(parts, -1), shape) == cat(view(part, shape'), -1) when the view only adds or drops
        size-1 dims and keeps the concat axis last (flattening [N, 1, E1 + E2] to [N, E1 + E2])."""
        source, out = tensor_value(cat), tensor_meta(node)
        if out is None or axis != rank - 1 or out.dim() < 1:
            return False
        total = source.shape[axis]
        if not _static(out.shape[-1]) or int(out.shape[-1]) != int(total):
            return False
        kept_in = [e for i, e in enumerate(shape_exprs(source)[:-1]) if not (i > 0 and e == 1)]
        kept_out = [e for i, e in enumerate(shape_exprs(out)[:-1]) if not (i > 0 and e == 1)]
        if len(kept_in) != len(kept_out) or any(sympy.simplify(a - b) != 0 for a, b in zip(kept_in, kept_out)):
            return False
        shape = as_list(node.args[1])
        pieces = []
        with self.graph.inserting_before(node):
            for index in range(len(_parts(cat))):
                part = self._part(cat, index)
                width = int(tensor_value(part).shape[axis])
                part_shape = shape[:-1] + [shape[-1] if shape[-1] == -1 else width]
                pieces.append(self.factory.call(aten.reshape.default, (part, part_shape)))
            result = self.factory.call(aten.cat.default, (pieces, out.dim() - 1))
        return self._replace(node, cat, result, axis, list(range(int(total))), _parts(cat))

    # -- elementwise ops between the concat and its reads -----------------------------------------
    def _is_elementwise_of(self, node: fx.Node, cat: fx.Node) -> bool:
        """A one-tensor elementwise op of the whole concat (`.long()`, `.float()`, clone, relu, x * 2)
        whose result is read by columns: `X[:, ids].long()[:, k]` folds once the op moves onto the parts."""
        target = node.target
        if target == aten._to_copy.default:
            if set(node.kwargs) - {"dtype", "memory_format"}:
                return False
        elif not (isinstance(target, torch._ops.OpOverload) and torch.Tag.pointwise in target.tags):
            return False
        if torch.Tag.nondeterministic_seeded in getattr(target, "tags", ()):
            return False
        if [a for a in node.all_input_nodes] != [cat]:
            return False
        out, source = tensor_meta(node), tensor_value(cat)
        if out is None or shape_exprs(out) != shape_exprs(source):
            return False
        return any(u.target in READS for u in node.users)

    def _push_elementwise(self, node: fx.Node, cat: fx.Node, axis: int, total: int) -> bool:
        """f(cat(parts)) == cat(f(part) for part): the op runs on each part (same elements, same values)."""
        with self.graph.inserting_before(node):
            pieces = []
            for index in range(len(_parts(cat))):
                args = tuple(self._part(cat, index) if a is cat else a for a in node.args)
                pieces.append(self.factory.call(callable_target(node), args, dict(node.kwargs)))
            result = self.factory.call(aten.cat.default, (pieces, axis))
        return self._replace(node, cat, result, axis, list(range(total)), _parts(cat))

    def _constant_sizes(self, node: fx.Node, result: fx.Node) -> None:
        """Sizes read off the folded node that are static in the result become ints: a boolean column
        mask gave export an unbacked width (checked by runtime asserts), the folded read has a fixed one."""
        shape = tensor_value(result).shape
        for user in list(node.users):
            if user.target != aten.sym_size.int or not _static(shape[as_int(user.args[1])]):
                continue
            size = int(shape[as_int(user.args[1])])
            for consumer in list(user.users):
                replace_input(consumer, user, size)
            self.graph.erase_node(user)

    def _drop_dead_asserts(self) -> None:
        """A concat that every read was folded off may still be named by export's dtype assertion (the
        one before `.long()`): a check of a value nothing uses. Drop it, so the concat goes too."""
        for node in list(self.graph.nodes):
            if node.target in CAT_TARGETS and node.users and all(u.target == ASSERT_METADATA for u in node.users):
                for user in list(node.users):
                    self.graph.erase_node(user)

    # -- bookkeeping --------------------------------------------------------------------------------
    def _replace(
        self, node: fx.Node, cat: fx.Node, result: fx.Node, axis: int, columns: list[int], parts: Sequence[fx.Node]
    ) -> bool:
        if result is node:
            return False
        record = FoldRecord(node.name, op_name(node), cat.name, axis, list(columns), [p.name for p in parts])
        self.records.append((record, list(parts)))
        self._constant_sizes(node, result)
        node.replace_all_uses_with(result)
        if not node.users:
            self.graph.erase_node(node)
        return True


def _static(size: object) -> bool:
    return isinstance(size, int) or (isinstance(size, torch.SymInt) and size.node.expr.is_Integer)


def _static_bound(value: Argument) -> TypeGuard[int | None]:
    """A slice bound known at rewrite time (None: the default)."""
    return isinstance(value, int) or value is None


def _slice_args(node: fx.Node) -> tuple[Argument, Argument, Argument, Argument]:
    names = ("input", "dim", "start", "end", "step")
    defaults: dict[str, Argument] = {"dim": 0, "start": None, "end": None, "step": 1}
    values = {**defaults, **dict(zip(names, node.args)), **node.kwargs}
    return values["dim"], values["start"], values["end"], values["step"]


def _is_full_slice(start: Argument, end: Argument, step: Argument) -> bool:
    return start in (None, 0) and (end is None or (isinstance(end, int) and end >= 2**62)) and step in (None, 1)


def fold_concat_slices(gm: fx.GraphModule, user_placeholders: set[fx.Node], batch: sympy.Symbol) -> list[FoldRecord]:
    """Rewrite gm in place (an identity at any batch size); returns every folded read and what it reads now."""
    found = ConcatSliceFolder(gm).run()
    colours = colour_graph(gm.graph, user_placeholders, batch)
    records = []
    for record, parts in found:
        sides = {colours[p] for p in parts if p in colours}
        record.side = _SIDES[sides.pop()] if len(sides) == 1 else ("mixed" if sides else "")
        records.append(record)
    return records


def fold_concat_slices_pass(gm: fx.GraphModule, context: PassContext) -> PassResult:
    """The pass form of fold_concat_slices."""
    records = fold_concat_slices(gm, context.user_placeholders(gm), context.batch)
    return PassResult(gm, bool(records), records, "" if records else "no read of known columns of a concat")
