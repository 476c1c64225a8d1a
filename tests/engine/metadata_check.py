"""Check passes.py's metadata rule on a graph: run it for real, node by node, and compare every node's value with
its recorded fake value (`meta["val"]`) at that N. A size that depends on data (an unbacked symbol) has no value
to compare with; instead it must be one that an op still in the graph introduces (`.item()`, `nonzero`): a
symbol no node introduces is left over from a node a pass replaced without re-recording what reads it."""

from __future__ import annotations

from typing import Any

import sympy
import torch
import torch.fx as fx
from torch import Tensor

from service.engine.graph_tools import shape_exprs, substitute_batch, symbolic_expr


def _mismatches(node: fx.Node, recorded: Any, real: Any, batch: sympy.Symbol, n: int) -> list[str]:
    """How the recorded value of `node` disagrees with what the real run computed (empty: it agrees)."""
    if isinstance(real, Tensor):
        if not isinstance(recorded, Tensor):
            return [f"{node.name}: runs as a tensor, recorded {type(recorded).__name__}"]
        if recorded.dtype != real.dtype or recorded.dim() != real.dim():
            return [f"{node.name}: runs as {real.dtype}{list(real.shape)}, recorded {recorded.dtype}{recorded.shape}"]
        for expr, size in zip(shape_exprs(recorded), real.shape):
            expected = substitute_batch(expr, batch, n)
            if expected is not None and expected != size:
                return [f"{node.name}: runs as {list(real.shape)}, recorded {list(recorded.shape)}"]
        return []
    if isinstance(real, (tuple, list)):
        if not isinstance(recorded, (tuple, list)) or len(recorded) != len(real):
            return [f"{node.name}: runs as a {len(real)}-tuple, recorded {type(recorded).__name__}"]
        return [m for r, v in zip(recorded, real) for m in _mismatches(node, r, v, batch, n)]
    if isinstance(real, int) and not isinstance(real, bool) and node.op == "call_function":
        if not isinstance(recorded, (int, torch.SymInt)):
            return [f"{node.name}: runs as a size, recorded {type(recorded).__name__}"]
        expected = substitute_batch(symbolic_expr(recorded), batch, n)
        return [] if expected is None or expected == real else [f"{node.name}: size {real}, recorded {recorded}"]
    return []


INTRODUCES_SIZES = (torch.Tag.data_dependent_output, torch.Tag.dynamic_output_shape)


def _symbols(value: Any) -> set[sympy.Symbol]:
    if isinstance(value, Tensor):
        return set().union(*(_symbols(size) for size in value.shape))
    if isinstance(value, torch.SymInt):
        return set(value.node.expr.free_symbols)
    if isinstance(value, (tuple, list)):
        return set().union(*(_symbols(v) for v in value))
    return set()


def dangling_symbols(graph_module: fx.GraphModule, batch: sympy.Symbol) -> list[str]:
    """Nodes whose recorded sizes use a symbol that neither N nor any op of the graph introduces."""
    introduced = {batch}
    for node in graph_module.graph.nodes:
        if node.op == "placeholder" or (node.op == "call_function" and any(t in getattr(node.target, "tags", ())
                                                                           for t in INTRODUCES_SIZES)):
            introduced |= _symbols(node.meta.get("val"))
    return [f"{node.name}: recorded with {sorted(map(str, _symbols(node.meta.get('val')) - introduced))}, "
            "which no node of the graph introduces"
            for node in graph_module.graph.nodes if _symbols(node.meta.get("val")) - introduced]


def metadata_mismatches(graph_module: fx.GraphModule, inputs: list[Any], batch: sympy.Symbol, n: int) -> list[str]:
    """Run the graph for real on `inputs` (N = n) node by node; every disagreement of a value with its metadata,
    and every size recorded with a symbol no node introduces."""
    found: list[str] = dangling_symbols(graph_module, batch)

    class Checking(fx.Interpreter):
        def run_node(self, node: fx.Node) -> Any:
            value = super().run_node(node)
            if node.op not in ("output", "get_attr"):
                found.extend(_mismatches(node, node.meta.get("val"), value, batch, n))
            return value

    with torch.no_grad():
        Checking(graph_module).run(*inputs)
    return found
