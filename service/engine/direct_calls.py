"""The copy of a variant's graph that serves requests: the same ops, with less Python between them.

A captured graph calls `torch.ops.aten.linear.default(...)`, a Python `OpOverload.__call__` whose whole body is
`self._op(*args, **kwargs)`, and reads each weight through the adapter's module path
(`self.model.model.embedding_dict.user_id.weight`: one nn.Module.__getattr__ per level). Calling `_op` itself
saves about a microsecond per node (2.4 -> 1.6 us for an `add`, torch 2.13) and a flat attribute per weight
a few more: on a small ranker's ~100-node graph, the difference between the stored program and the user's eager
model at N = 100. Only the running copy changes; the variant's ATen graph (FLOPs, batching, torch.compile)
keeps its OpOverload targets and module paths.
"""

from __future__ import annotations

import functools
from typing import Any

import torch
import torch.fx as fx

from service.engine.graph_tools import attribute_value


def with_direct_calls(gm: fx.GraphModule) -> fx.GraphModule:
    """A copy of `gm`, sharing its tensors, that calls every OpOverload's C++ entry point and reads every
    parameter, buffer and constant as one plain attribute."""
    graph = fx.Graph()
    graph._codegen = gm.graph._codegen
    graph.output(graph.graph_copy(gm.graph, {}))
    root = torch.nn.Module()
    entries: dict[torch._ops.OpOverload, Any] = {}
    for index, node in enumerate(graph.nodes):
        node.meta = {}  # shapes are for the passes; the running copy needs none
        if node.op == "get_attr":
            flat = f"_tensor_{index}"
            value = attribute_value(gm, node)
            object.__setattr__(root, flat, value)  # instance __dict__: read without nn.Module.__getattr__
            node.target = flat
        elif node.op == "call_function" and isinstance(node.target, torch._ops.OpOverload):
            if node.target not in entries:
                entries[node.target] = _entry_point(node.target)
            node.target = entries[node.target]
    module = fx.GraphModule(root, graph)
    for name in [name for name in vars(root) if name.startswith("_tensor_")]:
        object.__setattr__(module, name, getattr(root, name))
    return module


def _entry_point(op: torch._ops.OpOverload) -> Any:
    """op's C++ entry point behind a C-level partial that fx's code generator names as a plain global (fx
    spells anything from a torch module by its qualified name, which the bare entry point lacks)."""
    entry = functools.partial(op._op)
    entry.__name__ = f"{op._schema.name.split('::')[-1]}_{op._overloadname}"  # type: ignore[attr-defined]
    entry.__module__ = __name__
    return entry
