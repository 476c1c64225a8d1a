"""Fewer nodes for the same values: every variant's graph, VanI included, is tidied before it serves.

A graph node costs 2-4 microseconds of dispatch from Python, about twice what the same op costs in the user's
eager model, so a small ranker's captured graph runs slower than the model it came from. Export repeats work
the model wrote once per use (`.long()` of the same column for two tables, `x.size(0)` read at every layer),
and sinking tiles leaves shape ops that do nothing at batch 1 (`expand(u, [1, d])` of a [1, d] user tensor).
Both passes keep every value bit for bit: a repeated pure op is the same op on the same inputs, and a view to
the shape its input already has is that input.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.fx as fx

from service.engine.graph_tools import aten, shape_exprs, tensor_meta
from service.engine.passes import PassContext, PassResult

SAME_SHAPE_VIEWS = (aten.expand.default, aten.reshape.default, aten.view.default, aten.alias.default)
_UNHASHABLE = object()


def tidy_graph(gm: fx.GraphModule) -> int:
    """Drop views to their input's own shape, then repeated pure ops; returns how many nodes went."""
    removed = drop_same_shape_views(gm) + merge_repeated_ops(gm)
    if removed:
        gm.graph.eliminate_dead_code()
        gm.recompile()
    return removed


def tidy_pass(gm: fx.GraphModule, context: PassContext) -> PassResult:
    """The pass form of tidy_graph."""
    removed = tidy_graph(gm)
    return PassResult(gm, removed > 0, [], "" if removed else "no repeated pure op or view to its input's shape")


def drop_same_shape_views(gm: fx.GraphModule) -> int:
    """expand/reshape/view/alias whose output has exactly its input's sizes (symbolically): the input itself."""
    dropped = 0
    for node in list(gm.graph.nodes):
        if node.op != "call_function" or node.target not in SAME_SHAPE_VIEWS or not isinstance(node.args[0], fx.Node):
            continue
        source, value = tensor_meta(node.args[0]), tensor_meta(node)
        if source is None or value is None or source.dtype != value.dtype:
            continue
        if shape_exprs(source) == shape_exprs(value) and (node.target is not aten.expand.default
                                                          or source.stride() == value.stride()):
            node.replace_all_uses_with(node.args[0])
            gm.graph.erase_node(node)
            dropped += 1
    return dropped


def merge_repeated_ops(gm: fx.GraphModule) -> int:
    """Common subexpressions: a pure op applied again to the same inputs reuses the first result."""
    seen: dict[Any, fx.Node] = {}
    merged = 0
    for node in list(gm.graph.nodes):
        if node.op not in ("call_function", "get_attr") or not _pure(node):
            continue
        key = _key(node)
        if key is _UNHASHABLE:
            continue
        first = seen.setdefault(key, node)
        if first is not node:
            node.replace_all_uses_with(first)
            gm.graph.erase_node(node)
            merged += 1
    return merged


def _pure(node: fx.Node) -> bool:
    if node.op == "get_attr":
        return True
    target = node.target
    if not isinstance(target, torch._ops.OpOverload):
        return False  # operator.getitem of a multi-output op is merged with its producer only by identity
    schema = target._schema
    return not (schema.is_mutable or torch.Tag.nondeterministic_seeded in target.tags
                or any(r.alias_info is not None and r.alias_info.is_write for r in schema.returns))


def _key(node: fx.Node) -> Any:
    try:
        key = (node.op, node.target, _freeze(node.args), _freeze(node.kwargs))
        hash(key)
    except TypeError:
        return _UNHASHABLE
    return key


def _freeze(value: Any) -> Any:
    """Arguments as a hashable value; nodes by identity (their inputs were merged first), dtypes and the like as
    they are."""
    if isinstance(value, (list, tuple)):
        return (type(value).__name__, tuple(_freeze(v) for v in value))
    if isinstance(value, dict):
        return ("dict", tuple(sorted((k, _freeze(v)) for k, v in value.items())))
    if isinstance(value, torch.Tensor):
        raise TypeError("tensor constant in an argument")
    if isinstance(value, (bool, int, float)):
        return (type(value).__name__, value)  # add(x, 1) and add(x, 1.0) differ for an integer x
    return value
