"""MaRI: split every Linear/matmul fed by a user/candidate concat into a user GEMM and a candidate GEMM.

    concat(U, C) @ W^T + b  ==  (U @ W_U^T + b) broadcast  +  C @ W_C^T

Runs on the captured graph before UOI, so every rewrite is an identity at any batch size; UOI then
computes the user GEMM once. At rewrite time the weight columns of each side are gathered (layout
reorganization: one contiguous GEMM per side however the concat interleaves features), the consumers
of one concat are fused horizontally (one U GEMM and one C GEMM for experts, gates and towers), and
an eval-mode BatchNorm between the concat and the Linear is folded into the Linear's weights.
"""

from __future__ import annotations

import operator
from dataclasses import dataclass, field

import sympy
import torch
import torch.fx as fx

from service.engine.colouring import Colour, colour_graph
from service.engine.constant_eval import ConstantEvaluator, NotConstant
from service.engine.graph_tools import (
    BATCH_NORM_TARGETS,
    CAT_TARGETS,
    IDENTITY_TARGETS,
    LINEAR_TARGETS,
    RESHAPE_TARGETS,
    Argument,
    NodeFactory,
    argument,
    as_float,
    as_int,
    as_list,
    as_nodes,
    aten,
    normalize_dim,
    op_name,
    tensor_meta,
    tensor_value,
)
from service.engine.passes import PassContext, PassResult

STOP_REASONS = {
    "layer_norm": "normalizes across the concatenated feature axis, mixing user and candidate columns",
    "native_layer_norm": "normalizes across the concatenated feature axis, mixing user and candidate columns",
    "softmax": "normalizes across the feature axis",
    "_softmax": "normalizes across the feature axis",
    "log_softmax": "normalizes across the feature axis",
}


# The cost rule: a split adds nodes (the user GEMM, its concat, the add of the two halves), about 8 us of dispatch
# per call on one core, the time of ~400k fp32 FLOPs at ~50 GFLOP/s; the split saves the user GEMM's N - 1 extra
# rows, 2 (N - 1) D_U out FLOPs. Judged at the smallest request the service is built for (N = 100).
COST_RULE_CANDIDATES = 100
SPLIT_PAYS_FLOPS = 400_000


@dataclass(frozen=True)
class SplitOptions:
    """Layout and fusion on in production; off only to measure what each buys (the paper's layout study)."""

    reorganize_layout: bool = True  # gather weight columns so each side is one GEMM
    fuse_consumers: bool = True  # one U GEMM and one C GEMM for all Linears reading the concat
    # the cost rule: a split saving fewer FLOPs than this at COST_RULE_CANDIDATES is left whole (0: split all)
    min_saved_flops: int = 0


@dataclass
class ConsumerReport:
    node: str
    op: str
    rewritten: bool
    out_features: int = 0
    reason: str = ""


@dataclass
class ConcatReport:
    """One user/candidate concat and what MaRI did with each of its consumers."""

    node: str
    user_width: int
    candidate_width: int
    rows_per_candidate: int = 1  # concat rows per candidate (tokens), 1 for a flat [N, D] concat
    consumers: list[ConsumerReport] = field(default_factory=list)


@dataclass
class _Terminal:
    """A Linear reached from the concat through shape-only ops; weight/bias folded to act on the concat."""

    node: fx.Node
    weight: torch.Tensor  # [out, D] over the concat's columns
    bias: torch.Tensor | None
    reshapes: tuple[fx.Node, ...]


class _Stop(Exception):
    pass


# A node reached from the concat: (node, its input on the path, reshapes passed, folded BatchNorm scale/shift).
_Step = tuple[fx.Node, fx.Node, tuple[fx.Node, ...], tuple[torch.Tensor, torch.Tensor] | None]
_Part = tuple[fx.Node, list[int]]  # a concat part and its columns in the concat


def _constant_value(gm: fx.GraphModule, node: Argument, colours: dict[fx.Node, Colour]) -> torch.Tensor:
    """Evaluate a parameter-only sub-graph (a weight, possibly transposed or scaled) at rewrite time."""
    if not isinstance(node, fx.Node):
        raise _Stop("weight depends on the inputs")

    def weight_rule(reached: fx.Node) -> str | None:
        if colours.get(reached) != Colour.NONE:
            return "weight depends on the inputs"
        return None if reached.op in ("get_attr", "call_function") else "weight is not a constant"

    try:
        value: torch.Tensor = ConstantEvaluator(gm, weight_rule).value(node)
    except NotConstant as exc:
        raise _Stop(str(exc)) from exc
    return value


def _optional_constant(gm: fx.GraphModule, node: Argument, colours: dict[fx.Node, Colour]) -> torch.Tensor | None:
    """_constant_value of an optional argument (a bias, a BatchNorm affine weight); None stays None."""
    return None if node is None else _constant_value(gm, node, colours)


class ConcatSplitter:
    def __init__(
        self, gm: fx.GraphModule, user_placeholders: set[fx.Node], batch: sympy.Symbol, options: SplitOptions
    ) -> None:
        self.gm = gm
        self.options = options
        self.user_placeholders = user_placeholders
        self.batch = batch
        self.colours = colour_graph(gm.graph, user_placeholders, batch)
        self.factory = NodeFactory(gm.graph)
        self.reports: list[ConcatReport] = []
        self._buffers = 0

    def run(self) -> list[ConcatReport]:
        for node in list(self.gm.graph.nodes):
            if node.target in CAT_TARGETS and self._is_mixed_feature_concat(node):
                self._split(node)
                self.colours = colour_graph(self.gm.graph, self.user_placeholders, self.batch)
        self.gm.graph.eliminate_dead_code()
        self.gm.recompile()
        return self.reports

    # -- finding concats ------------------------------------------------------------------------
    def _is_feature_concat(self, node: fx.Node) -> bool:
        value = tensor_meta(node)
        if value is None or value.dim() < 2:
            return False
        return normalize_dim(as_int(argument(node, 1, "dim", 0)), value.dim()) == value.dim() - 1

    def _parts(self, node: fx.Node) -> list[fx.Node]:
        """Concat inputs, with nested mixed feature concats flattened into their parts."""
        parts: list[fx.Node] = []
        for part in as_nodes(node.args[0]):
            nested = part.target in CAT_TARGETS and self._is_feature_concat(part)
            nested = nested and self.colours[part] == Colour.CANDIDATE
            parts.extend(self._parts(part) if nested else [part])
        return parts

    def _is_mixed_feature_concat(self, node: fx.Node) -> bool:
        if self.colours[node] != Colour.CANDIDATE or not self._is_feature_concat(node):
            return False
        if node.users and all(u.target in CAT_TARGETS and self._is_feature_concat(u) for u in node.users):
            return False  # absorbed: the enclosing concat flattens it into its own parts
        sides = {self.colours[p] for p in self._parts(node)}
        return Colour.USER in sides and Colour.CANDIDATE in sides

    # -- walking to the matmuls -----------------------------------------------------------------
    def _terminals(self, cat: fx.Node, report: ConcatReport) -> list[_Terminal]:
        width = tensor_value(cat).shape[-1]
        found: list[_Terminal] = []
        frontier: list[_Step] = [(user, cat, (), None) for user in cat.users]
        while frontier:
            node, source, reshapes, scale_shift = frontier.pop(0)
            target = node.target
            try:
                if target in IDENTITY_TARGETS or (target == aten.dropout.default and node.args[2] is False):
                    frontier += [(u, node, reshapes, scale_shift) for u in node.users]
                elif target in RESHAPE_TARGETS and tensor_value(node).shape[-1] == width and node.args[0] is source:
                    frontier += [(u, node, reshapes + (node,), scale_shift) for u in node.users]
                elif target in BATCH_NORM_TARGETS and scale_shift is None and not reshapes and (
                    tensor_value(source).dim() == 2
                ):
                    folded = self._batch_norm_affine(node)
                    outputs = [u for u in node.users] if target == aten.batch_norm.default else [
                        u for u in node.users if u.target is operator.getitem and u.args[1] == 0
                    ]
                    for out in outputs:
                        frontier += [(u, out, reshapes, folded) for u in out.users]
                elif target in LINEAR_TARGETS and node.args[0] is source:
                    weight = _constant_value(self.gm, node.args[1], self.colours)
                    bias = _optional_constant(self.gm, node.args[2], self.colours) if len(node.args) > 2 else None
                    found.append(self._fold(node, weight, bias, reshapes, scale_shift))
                elif target in (aten.matmul.default, aten.mm.default) and node.args[0] is source:
                    weight = _constant_value(self.gm, node.args[1], self.colours)
                    if weight.dim() != 2:
                        raise _Stop("right operand is not a 2-D weight")
                    found.append(self._fold(node, weight.t(), None, reshapes, scale_shift))
                elif target == aten.addmm.default and node.args[1] is source and not node.kwargs:
                    weight = _constant_value(self.gm, node.args[2], self.colours)
                    bias = _constant_value(self.gm, node.args[0], self.colours)
                    found.append(self._fold(node, weight.t(), bias, reshapes, scale_shift))
                else:
                    raise _Stop(self._stop_reason(node))
            except _Stop as stop:
                report.consumers.append(ConsumerReport(node.name, op_name(node), False, reason=str(stop)))
        return found

    def _stop_reason(self, node: fx.Node) -> str:
        name = op_name(node)
        if name in STOP_REASONS:
            return f"{name} {STOP_REASONS[name]}"
        if node.op == "output":
            return "the concat is a model output"
        return f"{name} is not a Linear/matmul with a constant weight or a shape-only op"

    def _batch_norm_affine(self, node: fx.Node) -> tuple[torch.Tensor, torch.Tensor]:
        """Eval BatchNorm as x * scale + shift (per feature)."""
        if node.target == aten.batch_norm.default:
            _, weight, bias, mean, var, training, _, eps, _ = node.args
            if training:
                raise _Stop("batch_norm in training mode")
        else:
            _, weight, bias, mean, var, _, eps = node.args
        gamma, beta, mean_value, var_value = (
            _optional_constant(self.gm, a, self.colours) for a in (weight, bias, mean, var)
        )
        if mean_value is None or var_value is None:
            raise TypeError(f"{node.name}: eval BatchNorm without running statistics")
        scale = torch.rsqrt(var_value.double() + as_float(eps)) * (gamma.double() if gamma is not None else 1.0)
        shift = (beta.double() if beta is not None else 0.0) - mean_value.double() * scale
        return scale, shift

    def _fold(
        self,
        node: fx.Node,
        weight: torch.Tensor,
        bias: torch.Tensor | None,
        reshapes: tuple[fx.Node, ...],
        scale_shift: tuple[torch.Tensor, torch.Tensor] | None,
    ) -> _Terminal:
        if scale_shift is not None:
            scale, shift = scale_shift
            weight64 = weight.double()
            bias64 = (bias.double() if bias is not None else 0.0) + weight64 @ shift
            weight = (weight64 * scale[None, :]).to(weight.dtype)
            bias = bias64.to(weight.dtype)
        return _Terminal(node, weight, bias, reshapes)

    # -- rewriting ------------------------------------------------------------------------------
    def _split(self, cat: fx.Node) -> None:
        parts = self._parts(cat)
        columns: list[list[int]] = []
        offset = 0
        for part in parts:
            width = int(tensor_value(part).shape[-1])
            columns.append(list(range(offset, offset + width)))
            offset += width
        user_parts = [(p, cols) for p, cols in zip(parts, columns) if self.colours[p] != Colour.CANDIDATE]
        cand_parts = [(p, cols) for p, cols in zip(parts, columns) if self.colours[p] == Colour.CANDIDATE]
        rows = 1
        for size in tensor_value(cat).shape[1:-1]:
            rows *= int(size)
        report = ConcatReport(cat.name, sum(len(c) for _, c in user_parts), sum(len(c) for _, c in cand_parts), rows)
        self.reports.append(report)
        groups: dict[tuple[object, ...], list[_Terminal]] = {}
        for terminal in self._terminals(cat, report):
            key: tuple[object, ...] = tuple(tuple(str(s) for s in tensor_value(r).shape) for r in terminal.reshapes)
            if not self.options.fuse_consumers:
                key = (terminal.node.name, key)
            groups.setdefault(key, []).append(terminal)
        user_width = sum(len(c) for _, c in user_parts)
        for terminals in groups.values():
            saved = split_saving(user_width, sum(int(t.weight.shape[0]) for t in terminals), rows)
            if saved < self.options.min_saved_flops:
                reason = (f"left whole by the cost rule: the split saves {saved:,} FLOPs at N = "
                          f"{COST_RULE_CANDIDATES}, less than its extra ops cost ({self.options.min_saved_flops:,})")
                report.consumers += [ConsumerReport(t.node.name, op_name(t.node), False, reason=reason)
                                     for t in terminals]
                continue
            self._rewrite_group(user_parts, cand_parts, terminals, report)

    def _rewrite_group(
        self, user_parts: list[_Part], cand_parts: list[_Part], terminals: list[_Terminal], report: ConcatReport
    ) -> None:
        first = min((t.node for t in terminals), key=lambda n: _position(self.gm.graph, n))
        dtype = terminals[0].weight.dtype
        bias = torch.cat([t.bias if t.bias is not None else t.weight.new_zeros(t.weight.shape[0]) for t in terminals])
        with self.gm.graph.inserting_before(first):
            user_out = self._side_product("user", user_parts, terminals, bias.to(dtype))
            cand_out = self._side_product("candidate", cand_parts, terminals, None)
            fused = self.factory.call(aten.add.Tensor, (cand_out, user_out))
            offset = 0
            for t in terminals:
                out = int(t.weight.shape[0])
                piece = fused
                if len(terminals) > 1:
                    piece = self.factory.call(aten.slice.Tensor, (fused, -1, offset, offset + out))
                offset += out
                for r in t.reshapes:
                    shape = as_list(r.args[1])
                    shape[-1] = out if shape[-1] != -1 else -1
                    piece = self.factory.call(aten.reshape.default, (piece, shape))
                t.node.replace_all_uses_with(piece)
                report.consumers.append(ConsumerReport(t.node.name, op_name(t.node), True, out))

    def _side_product(
        self, side: str, parts: list[_Part], terminals: list[_Terminal], bias: torch.Tensor | None
    ) -> fx.Node:
        """One side's share of the fused matmul: one GEMM over the gathered columns, or (layout
        reorganization off) one GEMM per contiguous part, summed, as a fragmented layout forces."""
        first, *rest = [parts] if self.options.reorganize_layout else [[part] for part in parts]
        total = self._block_product(side, first, terminals, bias)  # the bias rides on the first GEMM
        for block in rest:
            total = self.factory.call(aten.add.Tensor, (total, self._block_product(side, block, terminals, None)))
        return total

    def _block_product(
        self, side: str, block: list[_Part], terminals: list[_Terminal], bias: torch.Tensor | None
    ) -> fx.Node:
        """One GEMM of the block's columns against every terminal's weight (horizontally fused)."""
        cols = [c for _, part_cols in block for c in part_cols]
        weight = torch.cat([t.weight[:, cols] for t in terminals]).to(terminals[0].weight.dtype)
        tag = self._buffers
        self._buffers += 1
        gathered = self.factory.constant(self.gm, f"_mari_{side}_weight_{tag}", weight)
        args = [self._concat([p for p, _ in block]), gathered]
        if bias is not None:
            args.append(self.factory.constant(self.gm, f"_mari_bias_{tag}", bias))
        return self.factory.call(aten.linear.default, tuple(args))

    def _concat(self, parts: list[fx.Node]) -> fx.Node:
        return parts[0] if len(parts) == 1 else self.factory.call(aten.cat.default, (parts, -1))


def split_saving(user_width: int, out_features: int, rows_per_candidate: int = 1) -> int:
    """FLOPs a split saves at COST_RULE_CANDIDATES: the user GEMM runs on one request's rows, not N copies."""
    return 2 * (COST_RULE_CANDIDATES - 1) * rows_per_candidate * user_width * out_features


def _position(graph: fx.Graph, node: fx.Node) -> int:
    for i, n in enumerate(graph.nodes):
        if n is node:
            return i
    raise KeyError(node)


def split_concat_matmuls(
    gm: fx.GraphModule, user_placeholders: set[fx.Node], batch: sympy.Symbol, options: SplitOptions | None = None
) -> list[ConcatReport]:
    """Rewrite gm in place; returns what was split and what was not (with the reason)."""
    return ConcatSplitter(gm, user_placeholders, batch, options or SplitOptions()).run()


def split_concat_matmuls_pass(gm: fx.GraphModule, context: PassContext) -> PassResult:
    """The pass form of split_concat_matmuls (context.options: SplitOptions, None for the defaults)."""
    reports = split_concat_matmuls(gm, context.user_placeholders(gm), context.batch, context.options)
    if any(c.rewritten for concat in reports for c in concat.consumers):
        return PassResult(gm, True, reports)
    why = "no consumer of a user/candidate concat could be split" if reports else "no user/candidate feature concat"
    return PassResult(gm, False, reports, why)
