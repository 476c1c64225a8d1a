"""The MaRI paper's graph colouring: which nodes depend on user data only, which on candidates.

User placeholders are U, candidate placeholders are C; a node is C if any tensor input is C, else U if
any tensor input is U. Parameters, constants and size values (SymInts) have no colour. A node with no
coloured input whose arguments depend on the batch size N (`torch.zeros(N, d)`, `arange(N)`) is C: it
has N rows the engine cannot prove identical.
"""

from __future__ import annotations

from enum import Enum

import sympy
import torch
import torch.fx as fx

from service.engine.graph_tools import depends_on, symbolic_expr


class Colour(str, Enum):  # noqa: UP042 (a StrEnum would change str(colour), which reports print)
    USER = "U"
    CANDIDATE = "C"
    NONE = "-"


def is_size_value(node: fx.Node) -> bool:
    return isinstance(node.meta.get("val"), (torch.SymInt, int)) and not isinstance(node.meta.get("val"), bool)


def reads_batch_size(node: fx.Node, batch: sympy.Symbol) -> bool:
    return any(is_size_value(i) and depends_on(symbolic_expr(i.meta["val"]), batch) for i in node.all_input_nodes)


def colour_graph(graph: fx.Graph, user_placeholders: set[fx.Node], batch: sympy.Symbol) -> dict[fx.Node, Colour]:
    colours: dict[fx.Node, Colour] = {}
    for node in graph.nodes:
        if node.op == "placeholder":
            colours[node] = Colour.USER if node in user_placeholders else Colour.CANDIDATE
            continue
        if node.op != "call_function" or is_size_value(node):
            colours[node] = Colour.NONE
            continue
        inputs = {colours[i] for i in node.all_input_nodes}
        if Colour.CANDIDATE in inputs:
            colours[node] = Colour.CANDIDATE
        elif Colour.USER in inputs:
            colours[node] = Colour.USER
        elif reads_batch_size(node, batch):
            colours[node] = Colour.CANDIDATE
        else:
            colours[node] = Colour.NONE
    return colours
