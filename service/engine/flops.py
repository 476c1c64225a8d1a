"""FLOPs of a rebuilt graph at a given candidate count N, from the recorded (symbolic) shapes.

Counting rules (documented so a hand count can check them):
  * linear / matmul / mm / bmm / addmm: 2 * numel(output) * K (K = contracted width),
    plus numel(output) for a bias (linear with bias, addmm);
  * pointwise ops (ATen `pointwise` tag: add, mul, relu, sigmoid, ...): numel(output);
  * softmax / log_softmax: 3 * numel; layer_norm / batch_norm: 5 * numel;
    sum / mean / amax reductions: numel(input);
  * everything else (embedding lookups, views, concat, expand, copies): 0 FLOPs (memory traffic only).

A size the graph only knows at run time (an unbacked symbol: the rows `x[mask]`, `nonzero`, jagged
lengths or `torch.split` by tensor-valued lengths select) has no value at a given N. A node whose count
needs such a size is not counted: `count_flops` returns what could be counted and names the nodes it
could not, so the total is then a lower bound and says so.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import sympy
import torch
import torch.fx as fx

from service.engine.graph_tools import (
    MATMUL_TARGETS,
    arg_node,
    aten,
    has_tag,
    shape_exprs,
    substitute_batch,
    symbolic_expr,
    tensor_value,
)

NORMALIZATIONS = (aten.layer_norm.default, aten.native_layer_norm.default,
                  aten._native_batch_norm_legit_no_training.default, aten.batch_norm.default)
SOFTMAXES = (aten.softmax.int, aten._softmax.default, aten.log_softmax.int, aten._log_softmax.default)
REDUCTIONS = (aten.sum.dim_IntList, aten.sum.default, aten.mean.dim, aten.mean.default, aten.amax.default)


@dataclass(frozen=True)
class FlopCount:
    """FLOPs of a graph at one N: the counted total and the nodes whose sizes depend on the data."""

    flops: int  # every countable node; a lower bound when `uncounted` is not empty
    uncounted: tuple[str, ...] = ()  # nodes with FLOPs whose sizes are data-dependent (unbacked)

    @property
    def exact(self) -> bool:
        return not self.uncounted


class _DataDependent(Exception):
    """A size needed for the count is only known at run time."""


def _size(expr: sympy.Expr | int, batch: sympy.Symbol, n: int) -> int:
    value = substitute_batch(expr, batch, n)
    if value is None:
        raise _DataDependent(str(expr))
    return value


def _numel(value: object, batch: sympy.Symbol, n: int) -> int:
    if not isinstance(value, torch.Tensor):
        return 0
    return math.prod(_size(e, batch, n) for e in shape_exprs(value))


def _width(node: fx.node.Argument, batch: sympy.Symbol, n: int) -> int:
    """The contracted width K (last dim) of a matmul operand."""
    return _size(symbolic_expr(tensor_value(node).shape[-1]), batch, n)


def _node_flops(node: fx.Node, batch: sympy.Symbol, n: int) -> int:
    """FLOPs of one node; raises _DataDependent when the rule needs a size only known at run time."""
    if node.op != "call_function":
        return 0
    target = node.target
    value = node.meta.get("val")
    if isinstance(value, (tuple, list)):
        value = value[0]
    if target == aten.linear.default:
        out = _numel(value, batch, n)
        has_bias = len(node.args) > 2 and node.args[2] is not None
        return 2 * out * _width(node.args[0], batch, n) + (out if has_bias else 0)
    if target in MATMUL_TARGETS:
        return 2 * _numel(value, batch, n) * _width(node.args[0], batch, n)
    if target == aten.addmm.default:
        out = _numel(value, batch, n)
        return 2 * out * _width(node.args[1], batch, n) + out
    if target in SOFTMAXES:
        return 3 * _numel(value, batch, n)
    if target in NORMALIZATIONS:
        return 5 * _numel(arg_node(node, 0).meta["val"], batch, n)
    if target in REDUCTIONS:
        return _numel(arg_node(node, 0).meta["val"], batch, n)
    if has_tag(node, torch.Tag.pointwise):
        return _numel(value, batch, n)
    return 0


def node_flops(node: fx.Node, batch: sympy.Symbol, n: int) -> int | None:
    """FLOPs of one node at N = n; None when they depend on a data-dependent size."""
    try:
        return _node_flops(node, batch, n)
    except _DataDependent:
        return None


def count_flops(gm: fx.GraphModule, batch: sympy.Symbol, n: int) -> FlopCount:
    total, uncounted = 0, []
    for node in gm.graph.nodes:
        flops = node_flops(node, batch, n)
        if flops is None:
            uncounted.append(node.name)
        else:
            total += flops
    return FlopCount(total, tuple(uncounted))


def graph_flops(gm: fx.GraphModule, batch: sympy.Symbol, n: int) -> int:
    """The counted FLOPs (a lower bound if some node has a data-dependent size: see count_flops)."""
    return count_flops(gm, batch, n).flops
