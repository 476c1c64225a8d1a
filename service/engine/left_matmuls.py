"""A 2-D matrix times a batch of matrices, `matmul(W[m, k], X[..., k, n])`, rewritten as one `linear` (one GEMM).

torch.matmul runs this product as one mm only when W requires grad (a trained model's Parameter does); a
program read back from the store holds its weights without grad, and there matmul expands W to [B, m, k] and
runs a bmm over B copies of it: 30x slower than the user's eager model on a DeepCTR-style matrix cross layer
(`kernel @ x.unsqueeze(2)`, [1000, 160, 1], one thread, torch 2.13). The identity W @ X == (X^T @ W^T)^T is
one linear over the rows of X^T. For n = 1 both transposes are a squeeze and an unsqueeze, and the linear reads
x itself, so MaRI can split it when x is a user/candidate concat (service/engine/split_matmuls.py).
"""

from __future__ import annotations

import torch
import torch.fx as fx

from service.engine.graph_tools import NodeFactory, arg_node, aten, normalize_dim, tensor_meta

MATMUL = aten.matmul.default


def rewrite_left_matmuls(gm: fx.GraphModule) -> int:
    """Rewrite every matmul of a 2-D left operand and a batched (>= 3-D) right operand; returns how many."""
    factory: NodeFactory | None = None
    rewritten = 0
    for node in list(gm.graph.nodes):
        if node.op != "call_function" or node.target is not MATMUL or node.kwargs:
            continue
        left, right = tensor_meta(node.args[0]), tensor_meta(node.args[1])
        if left is None or right is None or left.dim() != 2 or right.dim() < 3:
            continue
        factory = factory or NodeFactory(gm.graph)
        with gm.graph.inserting_before(node):
            product = _as_linear(factory, arg_node(node, 0), arg_node(node, 1), right)
        node.replace_all_uses_with(product)
        gm.graph.erase_node(node)
        rewritten += 1
    if rewritten:
        gm.graph.eliminate_dead_code()
        gm.recompile()
    return rewritten


def _as_linear(factory: NodeFactory, weight: fx.Node, batch: fx.Node, value: torch.Tensor) -> fx.Node:
    """W @ X as linear(X^T, W)^T; with n = 1, linear(x, W).unsqueeze(-1) where X = x.unsqueeze(-1)."""
    if value.shape[-1] == 1:
        rows = _squeezed_last(factory, batch, value.dim())
        return factory.call(aten.unsqueeze.default, (factory.call(aten.linear.default, (rows, weight)), -1))
    transposed = factory.call(aten.transpose.int, (batch, -1, -2))
    rows = factory.call(aten.clone.default, (transposed,), {"memory_format": torch.contiguous_format})
    return factory.call(aten.transpose.int, (factory.call(aten.linear.default, (rows, weight)), -1, -2))


def _squeezed_last(factory: NodeFactory, batch: fx.Node, rank: int) -> fx.Node:
    """X without its last (size 1) axis: the unsqueeze's input itself when X was made by one."""
    if batch.op == "call_function" and batch.target is aten.unsqueeze.default:
        source = tensor_meta(batch.args[0])
        dim = batch.args[1]
        if source is not None and isinstance(dim, int) and normalize_dim(dim, rank) == rank - 1:
            return arg_node(batch, 0)
    return factory.call(aten.squeeze.dim, (batch, -1))
