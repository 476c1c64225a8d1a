"""Rank-aware decomposition over token sets: push row-wise ops through a user/candidate token concat.

FM, AutoInt and friends stack field embeddings into tokens [B, F, d] (a concat along a token axis,
not the feature axis). Every op that treats tokens independently commutes with that concat:

    f(cat(U_tokens, C_tokens)) == cat(f(U_tokens), f(C_tokens))      f pointwise, Linear on d, LayerNorm on d
    sum(cat(U, C), tokens)     == sum(U, tokens) + sum(C, tokens)     (FM's sum of embeddings, sum of squares)
    flatten(cat(U, C))         == cat(flatten(U), flatten(C)) on the feature axis (then MaRI splits the MLP)

Pushing the concat down lets UOI compute the user-token side once per request: the FM user x user
block and summed user vectors, the Q/K/V projections of user tokens in the first self-attention layer.
Ops that mix tokens (attention scores, softmax over tokens) stop the push; the report says where.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import sympy
import torch
import torch.fx as fx

from service.engine.colouring import Colour, colour_graph
from service.engine.graph_tools import (
    BATCHED_MATMUL_TARGETS,
    LINEAR_TARGETS,
    RESHAPE_TARGETS,
    Argument,
    NodeFactory,
    argument,
    as_int,
    as_ints,
    as_list,
    as_nodes,
    aten,
    callable_target,
    has_tag,
    normalize_dim,
    op_name,
    tensor_meta,
    tensor_value,
)
from service.engine.passes import PassContext, PassResult

TOKEN_REDUCTIONS = (aten.sum.dim_IntList, aten.mean.dim)
TOKEN_LOCAL_NORMS = (aten.layer_norm.default,)
MAX_PUSHES = 10_000  # bound on rewrite steps; each push strictly moves a concat downstream


@dataclass
class TokenConcatReport:
    node: str
    axis: int
    user_tokens: int
    candidate_tokens: int
    pushed_through: list[str] = field(default_factory=list)
    stopped_at: list[tuple[str, str]] = field(default_factory=list)  # (node, reason)


class TokenConcatSplitter:
    def __init__(self, gm: fx.GraphModule, user_placeholders: set[fx.Node], batch: sympy.Symbol) -> None:
        self.gm = gm
        self.user_placeholders = user_placeholders
        self.batch = batch
        self.factory = NodeFactory(gm.graph)
        self.colours: dict[fx.Node, Colour] = {}
        self.reports: list[TokenConcatReport] = []
        self.stacks_rewritten = 0  # mixed stacks rewritten as concats of unsqueezed parts

    def run(self) -> list[TokenConcatReport]:
        self._recolour()
        for node in list(self.gm.graph.nodes):
            if node.target == aten.stack.default and self._mixed(node.args[0]):
                self._stack_as_concat(node)
        self._recolour()
        pending = [n for n in self.gm.graph.nodes if self._is_token_concat(n)]
        for cat in pending:
            parts = as_nodes(cat.args[0])
            tokens = [int(tensor_value(p).shape[self._axis(cat)]) for p in parts]
            sides = [self.colours[p] for p in parts]
            report = TokenConcatReport(
                cat.name, self._axis(cat),
                sum(t for t, s in zip(tokens, sides) if s != Colour.CANDIDATE),
                sum(t for t, s in zip(tokens, sides) if s == Colour.CANDIDATE),
            )
            self.reports.append(report)
            self._push(cat, report)
        self.gm.graph.eliminate_dead_code()
        self.gm.recompile()
        return self.reports

    # -- recognizing token concats --------------------------------------------------------------
    def _recolour(self) -> None:
        self.colours = colour_graph(self.gm.graph, self.user_placeholders, self.batch)

    def _mixed(self, parts: Argument) -> bool:
        sides = {self.colours.get(p) for p in as_nodes(parts)}
        return Colour.CANDIDATE in sides and (Colour.USER in sides or Colour.NONE in sides)

    def _axis(self, cat: fx.Node) -> int:
        return normalize_dim(as_int(argument(cat, 1, "dim", 0)), tensor_value(cat).dim())

    def _is_token_concat(self, node: fx.Node) -> bool:
        value = tensor_meta(node)
        if node.target != aten.cat.default or value is None:
            return False
        return 1 <= self._axis(node) <= value.dim() - 2 and self._mixed(node.args[0])

    def _stack_as_concat(self, stack: fx.Node) -> None:
        dim = argument(stack, 1, "dim", 0)
        with self.gm.graph.inserting_before(stack):
            parts = [self.factory.call(aten.unsqueeze.default, (p, dim)) for p in as_nodes(stack.args[0])]
            cat = self.factory.call(aten.cat.default, (parts, dim))
        stack.replace_all_uses_with(cat)
        self.gm.graph.erase_node(stack)
        self.stacks_rewritten += 1

    # -- pushing ---------------------------------------------------------------------------------
    def _push(self, cat: fx.Node, report: TokenConcatReport) -> None:
        work, steps = [cat], 0
        while work and steps < MAX_PUSHES:
            current = work.pop()
            for user in list(current.users):
                steps += 1
                pushed, reason = self._push_one(current, user)
                if pushed is None:
                    report.stopped_at.append((user.name, reason))
                    continue
                report.pushed_through.append(op_name(user))
                if pushed.target == aten.cat.default and self._is_token_concat(pushed):
                    work.append(pushed)

    def _push_one(self, cat: fx.Node, user: fx.Node) -> tuple[fx.Node | None, str]:
        axis = self._axis(cat)
        rank = tensor_value(cat).dim()
        parts = as_nodes(cat.args[0])
        target = user.target
        with self.gm.graph.inserting_before(user):
            if target in LINEAR_TARGETS and user.args[0] is cat and axis < rank - 1 and self._constant(user.args[1:]):
                return self._rebuild(user, cat, parts, lambda p: (p, *user.args[1:]), axis), ""
            over_embedding = target in TOKEN_LOCAL_NORMS and len(as_list(user.args[1])) == 1  # normalized_shape [d]
            if over_embedding and user.args[0] is cat and self._constant(user.args[2:4]):
                return self._rebuild(user, cat, parts, lambda p: (p, *user.args[1:]), axis), ""
            if self._is_row_wise_pointwise(user, cat, axis, rank):
                new_args = lambda p: tuple(p if a is cat else a for a in user.args)  # noqa: E731
                return self._rebuild(user, cat, parts, new_args, axis), ""
            if target in TOKEN_REDUCTIONS and user.args[0] is cat and self._reduces_exactly(user, axis, rank):
                return self._reduce(user, parts), ""
            if target in RESHAPE_TARGETS and user.args[0] is cat and self._flattens_tokens(user, axis):
                return self._flatten(user, parts, axis), ""
        return None, self._stop_reason(user)

    def _stop_reason(self, user: fx.Node) -> str:
        name = op_name(user)
        if user.target in BATCHED_MATMUL_TARGETS:
            return f"{name} multiplies tokens with each other (mixes user and candidate ranks): kept per candidate"
        if has_tag(user, torch.Tag.pointwise):
            return f"{name} combines the tokens with another per-candidate tensor: kept per candidate"
        return f"{name} is not row-wise over tokens (reorders or mixes them): kept per candidate"

    def _constant(self, args: Sequence[Argument]) -> bool:
        return all(self.colours.get(a) == Colour.NONE for a in args if isinstance(a, fx.Node))

    def _is_row_wise_pointwise(self, user: fx.Node, cat: fx.Node, axis: int, rank: int) -> bool:
        if not has_tag(user, torch.Tag.pointwise):
            return False
        if user.kwargs or list(user.args).count(cat) != 1:
            return False
        for arg in user.args:
            if isinstance(arg, fx.Node) and arg is not cat:
                other = tensor_meta(arg)
                if self.colours.get(arg) != Colour.NONE or other is None:
                    return False
                offset = rank - other.dim()  # right-aligned broadcasting: must not vary along the axis
                if axis - offset >= 0 and other.shape[axis - offset] != 1:
                    return False
        out = tensor_meta(user)
        return out is not None and out.dim() == rank

    def _reduces_exactly(self, user: fx.Node, axis: int, rank: int) -> bool:
        dims = user.args[1] if len(user.args) > 1 else None
        if not isinstance(dims, (list, tuple)):
            return False
        return [normalize_dim(as_int(d), rank) for d in dims] == [axis] and not user.kwargs.get("dtype")

    def _flattens_tokens(self, user: fx.Node, axis: int) -> bool:
        out, source = tensor_value(user), tensor_value(user.args[0])
        if out.dim() != axis + 1 or list(out.shape[:axis]) != list(source.shape[:axis]):
            return False
        return int(out.shape[axis]) == math.prod([int(s) for s in source.shape[axis:]])

    def _rebuild(
        self,
        user: fx.Node,
        cat: fx.Node,
        parts: list[fx.Node],
        make_args: Callable[[fx.Node], tuple[Argument, ...]],
        axis: int,
    ) -> fx.Node:
        target = callable_target(user)
        new_parts = [self.factory.call(target, make_args(p), dict(user.kwargs)) for p in parts]
        return self._replace(user, self.factory.call(aten.cat.default, (new_parts, axis)))

    def _replace(self, user: fx.Node, new: fx.Node) -> fx.Node:
        user.replace_all_uses_with(new)
        self._recolour()
        return new

    def _reduce(self, user: fx.Node, parts: list[fx.Node]) -> fx.Node:
        keepdim = argument(user, 2, "keepdim", False)
        dims = as_ints(user.args[1])
        total = self.factory.call(aten.sum.dim_IntList, (parts[0], dims, keepdim))
        for part in parts[1:]:
            piece = self.factory.call(aten.sum.dim_IntList, (part, dims, keepdim))
            total = self.factory.call(aten.add.Tensor, (total, piece))
        if user.target == aten.mean.dim:
            count = sum(int(tensor_value(p).shape[dims[0]]) for p in parts)
            total = self.factory.call(aten.div.Tensor, (total, count))
        return self._replace(user, total)

    def _flatten(self, user: fx.Node, parts: list[fx.Node], axis: int) -> fx.Node:
        shape = as_list(user.args[1])
        new_parts = []
        for part in parts:
            width = math.prod([int(s) for s in tensor_value(part).shape[axis:]])
            new_parts.append(self.factory.call(aten.reshape.default, (part, [*shape[:axis], width])))
        feature_concat = self.factory.call(aten.cat.default, (new_parts, -1))  # now a feature-axis concat for MaRI
        return self._replace(user, feature_concat)


def split_token_concats(
    gm: fx.GraphModule, user_placeholders: set[fx.Node], batch: sympy.Symbol
) -> list[TokenConcatReport]:
    """Rewrite gm in place (identity at any batch size); returns each token concat and how far it went."""
    return TokenConcatSplitter(gm, user_placeholders, batch).run()


def split_token_concats_pass(gm: fx.GraphModule, context: PassContext) -> PassResult:
    """The pass form of split_token_concats."""
    splitter = TokenConcatSplitter(gm, context.user_placeholders(gm), context.batch)
    reports = splitter.run()
    modified = splitter.stacks_rewritten > 0 or any(r.pushed_through for r in reports)
    if modified:
        return PassResult(gm, True, reports)
    why = "every token concat stops at its first reader" if reports else "no user/candidate token concat"
    return PassResult(gm, False, reports, why)
