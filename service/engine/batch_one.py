"""When a user-only node may run at batch 1 (UOI's safety rules), apart from the rebuild that uses them.

A node's *compact* version computes one request's rows once: its full value is the compact one repeated N
times along dim 0 (for a [k, ...] compact value, its row-major flattening repeated N times). That holds for a
deterministic ATen op whose outputs are batch-major, whose inputs are compact or the same at every N, and
which neither acts along dim 0 nor regroups the batch differently from its inputs. `refusal` says which rule
a node breaks, or None when it may run at batch 1.
"""

from __future__ import annotations

import operator
from collections.abc import Callable, Mapping

import sympy
import torch
import torch.fx as fx

from service.engine.colouring import is_size_value
from service.engine.graph_tools import (
    REGROUPING_TARGETS,
    as_list,
    as_nodes,
    aten,
    batch_factor,
    bound_arguments,
    depends_on,
    normalize_dim,
    shape_exprs,
    substitute_batch,
    symbolic_expr,
)

DIM_ARGUMENTS = frozenset({"dim", "dims", "dim0", "dim1", "dimension"})


def tensors_of(value: object) -> list[torch.Tensor]:
    """The tensors of a node's recorded value (one, or the tensors of a tuple output)."""
    if isinstance(value, torch.Tensor):
        return [value]
    if isinstance(value, (list, tuple)):
        return [v for v in value if isinstance(v, torch.Tensor)]
    return []


def has_batch_rows(node: fx.Node, batch: sympy.Symbol) -> bool:
    """Does any tensor the node computes have a size that depends on N?"""
    return any(any(depends_on(e, batch) for e in shape_exprs(t)) for t in tensors_of(node.meta.get("val")))


def refusal(
    node: fx.Node,
    compact: Mapping[fx.Node, fx.Node],
    same_at_every_batch: Callable[[fx.Node], bool],
    batch: sympy.Symbol,
) -> str | None:
    """Why `node` cannot run at batch 1, or None. `compact` maps the nodes already running at batch 1 to their
    compact versions; `same_at_every_batch` tells which other inputs it may read as they are (constants, values
    without batch rows)."""
    factors, why = _output_factors(node, batch)
    if why is not None:
        return why
    if node.target is operator.getitem:
        return None if node.args[0] in compact else "tuple is not compact"
    target = node.target
    if not isinstance(target, torch._ops.OpOverload) or torch.Tag.nondeterministic_seeded in target.tags:
        return "not a deterministic ATen op"
    for i in node.all_input_nodes:
        if is_size_value(i):
            if substitute_batch(symbolic_expr(i.meta["val"]), batch, 1) is None:
                return f"size {symbolic_expr(i.meta['val'])} has symbols other than the batch"
        elif i not in compact and not same_at_every_batch(i):
            return f"input {i.name} exists only at batch N"
    out_rank, out_k = tensors_of(node.meta.get("val"))[0].dim(), factors[0]
    if target not in REGROUPING_TARGETS:
        for i in node.all_input_nodes:
            if i not in compact:
                continue
            shape = compact[i].meta["val"].shape
            if int(shape[0]) != out_k or (torch.Tag.pointwise in target.tags and len(shape) != out_rank):
                return "inputs and output group the batch differently"
    return _dim_argument_refusal(node)


def _output_factors(node: fx.Node, batch: sympy.Symbol) -> tuple[list[int], str | None]:
    """k of each batch-major output ([k * N, ...]), or why the outputs are not batch-major."""
    outputs = tensors_of(node.meta.get("val"))
    if not outputs:
        return [], "no tensor output"
    factors = []
    for out in outputs:
        exprs = shape_exprs(out)
        if len(outputs) > 1 and not any(depends_on(e, batch) for e in exprs):
            continue  # a side output without batch rows (e.g. eval BatchNorm's empty statistics)
        k = batch_factor(exprs[0], batch) if exprs else None
        if k is None or any(depends_on(e, batch) for e in exprs[1:]):
            return [], "output is not batch-major"
        factors.append(k)
    return factors, None if factors else "no batch-major output"


def _dim_argument_refusal(node: fx.Node) -> str | None:
    """Ops that act along dim 0 (reduce, sort, concat, transpose it away) mix candidates' rows."""
    first = next((a for a in node.args if isinstance(a, fx.Node)), None)
    rank = first.meta["val"].dim() if first is not None and hasattr(first.meta.get("val"), "dim") else None
    concat_like = node.target in (aten.cat.default, aten.stack.default)
    if concat_like and node.args and isinstance(node.args[0], (list, tuple)):
        rank = as_nodes(node.args[0])[0].meta["val"].dim() + (1 if node.target == aten.stack.default else 0)
    for name, value in bound_arguments(node).items():
        if node.target == aten.repeat.default and name == "repeats" and as_list(value)[0] != 1:
            return "repeat along dim 0"
        if node.target == aten.index.Tensor and name == "indices" and as_list(value)[0] is not None:
            return "indexing along dim 0"
        if name not in DIM_ARGUMENTS:
            continue
        if value is None:
            return "reduces over every dim"
        dims = [value] if isinstance(value, int) else as_list(value)
        static_dims = [d for d in dims if isinstance(d, int)]
        if rank is None or len(static_dims) != len(dims):
            return "dims not static"
        normalized = [normalize_dim(d, rank) for d in static_dims]
        if node.target == aten.permute.default:
            if normalized[0] != 0:
                return "moves dim 0"
        elif 0 in normalized:
            return "acts along dim 0"
    return None
