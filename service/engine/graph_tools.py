"""Small helpers shared by the passes: ATen targets, fake-tensor metadata, symbolic batch sizes."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import sympy
import torch
import torch.fx as fx
from torch._guards import detect_fake_mode

aten = torch.ops.aten

LINEAR_TARGETS = (aten.linear.default,)
CAT_TARGETS = (aten.cat.default,)
BATCH_NORM_TARGETS = (aten._native_batch_norm_legit_no_training.default, aten.batch_norm.default)
IDENTITY_TARGETS = (aten.clone.default, aten.alias.default, aten.detach.default, aten.contiguous.default)
RESHAPE_TARGETS = (aten.view.default, aten._unsafe_view.default, aten.reshape.default)


def tensor_meta(node: Any) -> torch.Tensor | None:
    """The fake tensor recorded for a node's output, or None when it is not a single tensor."""
    if not isinstance(node, fx.Node):
        return None
    value = node.meta.get("val")
    return value if isinstance(value, torch.Tensor) else None


def meta_value(arg: Any) -> Any:
    """Replace nodes in a (nested) argument by their recorded values, for fake execution."""
    return fx.node.map_aggregate(arg, lambda a: a.meta["val"] if isinstance(a, fx.Node) else a)


def fake_mode_of(graph: fx.Graph):
    """The FakeTensorMode the captured graph's metadata lives in."""
    values = [n.meta["val"] for n in graph.nodes if isinstance(n.meta.get("val"), torch.Tensor)]
    mode = detect_fake_mode(values)
    if mode is None:
        raise RuntimeError("captured graph carries no fake-tensor metadata")
    return mode


class NodeFactory:
    """Creates call_function nodes in a graph and records their metadata by fake execution."""

    def __init__(self, graph: fx.Graph, fake_mode) -> None:
        self.graph = graph
        self.fake_mode = fake_mode

    def call(self, target: Callable, args: tuple, kwargs: dict | None = None) -> fx.Node:
        """Fake-run first, so an op that rejects its arguments leaves no node behind."""
        kwargs = kwargs or {}
        with self.fake_mode:
            value = target(*meta_value(args), **meta_value(kwargs))
        node = self.graph.call_function(target, args, kwargs)
        node.meta["val"] = value
        return node

    def constant(self, owner: torch.nn.Module, name: str, value: torch.Tensor) -> fx.Node:
        """Register `value` as a buffer of `owner` and return a get_attr node reading it."""
        owner.register_buffer(name, value.detach().clone().contiguous())
        node = self.graph.get_attr(name)
        node.meta["val"] = self.fake_mode.from_tensor(getattr(owner, name), static_shapes=True)
        return node


def symbolic_expr(value: Any) -> sympy.Expr | int:
    """The sympy expression of a SymInt (or the int itself)."""
    if isinstance(value, torch.SymInt):
        return value.node.expr
    return int(value)


def shape_exprs(value: torch.Tensor) -> list[sympy.Expr | int]:
    return [symbolic_expr(s) for s in value.shape]


def batch_factor(expr: sympy.Expr | int, batch: sympy.Symbol) -> int | None:
    """k when expr == k * batch for a positive integer k, else None."""
    if isinstance(expr, int):
        return None
    ratio = sympy.simplify(expr / batch)
    if ratio.free_symbols or not ratio.is_Integer or int(ratio) <= 0:
        return None
    return int(ratio)


def depends_on(expr: sympy.Expr | int, batch: sympy.Symbol) -> bool:
    return not isinstance(expr, int) and batch in expr.free_symbols


def substitute_batch(expr: sympy.Expr | int, batch: sympy.Symbol, size: int) -> int | None:
    """Evaluate a size expression at batch == size; None if it has other free symbols."""
    if isinstance(expr, int):
        return expr
    value = expr.subs(batch, size)
    return int(value) if value.is_Integer else None


def normalize_dim(dim: int, rank: int) -> int:
    return dim + rank if dim < 0 else dim
