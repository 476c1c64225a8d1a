"""FLOPs of a rebuilt graph at a given candidate count N, from the recorded (symbolic) shapes.

Counting rules (documented so a hand count can check them):
  * linear / matmul / mm / bmm / addmm: 2 * numel(output) * K (K = contracted width),
    plus numel(output) for a bias (linear with bias, addmm);
  * pointwise ops (ATen `pointwise` tag: add, mul, relu, sigmoid, ...): numel(output);
  * softmax / log_softmax: 3 * numel; layer_norm / batch_norm: 5 * numel;
    sum / mean / amax reductions: numel(input);
  * everything else (embedding lookups, views, concat, expand, copies): 0 FLOPs (memory traffic only).
"""

from __future__ import annotations

import math

import sympy
import torch
import torch.fx as fx

from service.engine.graph_tools import aten, shape_exprs, substitute_batch

MATMULS = (aten.matmul.default, aten.mm.default, aten.bmm.default)
NORMALIZATIONS = (aten.layer_norm.default, aten.native_layer_norm.default,
                  aten._native_batch_norm_legit_no_training.default, aten.batch_norm.default)
SOFTMAXES = (aten.softmax.int, aten._softmax.default, aten.log_softmax.int, aten._log_softmax.default)
REDUCTIONS = (aten.sum.dim_IntList, aten.sum.default, aten.mean.dim, aten.mean.default, aten.amax.default)


def _numel(value, batch: sympy.Symbol, n: int) -> int:
    if not isinstance(value, torch.Tensor):
        return 0
    return math.prod(substitute_batch(e, batch, n) for e in shape_exprs(value))


def node_flops(node: fx.Node, batch: sympy.Symbol, n: int) -> int:
    if node.op != "call_function":
        return 0
    target = node.target
    value = node.meta.get("val")
    if isinstance(value, (tuple, list)):
        value = value[0]
    out = _numel(value, batch, n)
    if target == aten.linear.default:
        k = int(node.args[0].meta["val"].shape[-1])
        has_bias = len(node.args) > 2 and node.args[2] is not None
        return 2 * out * k + (out if has_bias else 0)
    if target in MATMULS:
        return 2 * out * int(node.args[0].meta["val"].shape[-1])
    if target == aten.addmm.default:
        return 2 * out * int(node.args[1].meta["val"].shape[-1]) + out
    if target in SOFTMAXES:
        return 3 * out
    if target in NORMALIZATIONS:
        return 5 * _numel(node.args[0].meta["val"], batch, n)
    if target in REDUCTIONS:
        return _numel(node.args[0].meta["val"], batch, n)
    if isinstance(target, torch._ops.OpOverload) and torch.Tag.pointwise in target.tags:
        return out
    return 0


def graph_flops(gm: fx.GraphModule, batch: sympy.Symbol, n: int) -> int:
    return sum(node_flops(node, batch, n) for node in gm.graph.nodes)
