"""Small helpers shared by the passes: ATen targets, typed access to node arguments, fake-tensor metadata,
symbolic batch sizes.

torch.fx types every node argument as the wide union `Argument`. A pass knows more (a `linear` node's first
argument is a node, a `cat` node's is a list of nodes); the accessors here check that knowledge and narrow
the type, raising TypeError where the graph breaks it (the pipeline then serves VanI with the reason).
"""

from __future__ import annotations

import functools
import operator
from collections.abc import Callable
from typing import Any

import sympy
import torch
import torch.fx as fx
from torch._dispatch.python import enable_python_dispatcher
from torch._guards import detect_fake_mode
from torch._ops import OpOverload
from torch._subclasses.fake_tensor import FakeTensorMode

aten = torch.ops.aten
Argument = fx.node.Argument

LINEAR_TARGETS = (aten.linear.default,)
CAT_TARGETS = (aten.cat.default,)
BATCH_NORM_TARGETS = (aten._native_batch_norm_legit_no_training.default, aten.batch_norm.default)
IDENTITY_TARGETS = (aten.clone.default, aten.alias.default, aten.detach.default, aten.contiguous.default)
# The one table of shape and matmul ops the passes name (each pass picks the tuple its rule needs).
RESHAPE_TARGETS = (aten.view.default, aten._unsafe_view.default, aten.reshape.default)  # a new shape, same order
RANK_TARGETS = (aten.squeeze.dim, aten.squeeze.dims, aten.unsqueeze.default, aten.flatten.using_ints)  # size-1 dims
SHAPE_TARGETS = (*RESHAPE_TARGETS, *RANK_TARGETS)  # reinterpret a value's shape, row-major order kept
SIZE_LIST_TARGETS = (*RESHAPE_TARGETS, aten.expand.default)  # take the output's sizes as a list argument
# may regroup the batch rows ([k * N, ...] in, [k' * N, ...] out), correct because they keep row-major order
REGROUPING_TARGETS = frozenset({*SHAPE_TARGETS, aten.expand.default, aten.unflatten.int})
MATMUL_TARGETS = (aten.mm.default, aten.matmul.default, aten.bmm.default)
BATCHED_MATMUL_TARGETS = (aten.matmul.default, aten.bmm.default)  # a batch of matrices on either side


# -- typed access to node arguments ---------------------------------------------------------------
def as_node(value: Argument) -> fx.Node:
    """A node argument the op requires to be a graph value."""
    if not isinstance(value, fx.Node):
        raise TypeError(f"expected a graph node, got {type(value).__name__} {value!r}")
    return value


def as_nodes(value: Argument) -> list[fx.Node]:
    """A list argument of graph values (the tensors of `cat` / `stack`)."""
    if not isinstance(value, (list, tuple)):
        raise TypeError(f"expected a list of graph nodes, got {type(value).__name__}")
    return [as_node(v) for v in value]


def as_list(value: Argument) -> list[Argument]:
    """A list argument whose items may be symbolic (a shape holding size nodes)."""
    if not isinstance(value, (list, tuple)):
        raise TypeError(f"expected a list, got {type(value).__name__}")
    return list(value)


def as_int(value: Argument) -> int:
    """A static int argument (a dim, an index, a static size)."""
    if not isinstance(value, int):
        raise TypeError(f"expected an int, got {type(value).__name__} {value!r}")
    return value


def as_ints(value: Argument) -> list[int]:
    """A static int-list argument (dims of a reduction, a shape without symbolic sizes)."""
    if not isinstance(value, (list, tuple)):
        raise TypeError(f"expected a list of ints, got {type(value).__name__}")
    return [as_int(v) for v in value]


def as_float(value: Argument) -> float:
    """A static number argument (an epsilon, a scale)."""
    if not isinstance(value, (int, float)):
        raise TypeError(f"expected a number, got {type(value).__name__} {value!r}")
    return float(value)


def arg_node(node: fx.Node, index: int) -> fx.Node:
    return as_node(node.args[index])


def argument(node: fx.Node, index: int, name: str, default: Argument = None) -> Argument:
    """The argument at `index`, else the keyword `name`, else `default`."""
    return node.args[index] if len(node.args) > index else node.kwargs.get(name, default)


def bound_arguments(node: fx.Node) -> dict[str, Argument]:
    """An ATen node's arguments by schema name, in schema order: defaults filled in, None where absent."""
    bound: dict[str, Argument] = {}
    for position, schema_argument in enumerate(op_overload(node)._schema.arguments):
        name = schema_argument.name
        if position < len(node.args):
            bound[name] = node.args[position]
        elif name in node.kwargs:
            bound[name] = node.kwargs[name]
        else:
            bound[name] = schema_argument.default_value if schema_argument.has_default_value() else None
    return bound


def callable_target(node: fx.Node) -> Callable[..., Any]:
    """The function a call_function node calls."""
    if isinstance(node.target, str):
        raise TypeError(f"{node.name} ({node.op}) calls no function")
    return node.target


def op_overload(node: fx.Node) -> OpOverload:
    """The ATen overload a node calls (the passes' schema-driven rules need one)."""
    if not isinstance(node.target, OpOverload):
        raise TypeError(f"{node.name} does not call an ATen operator")
    return node.target


def has_tag(node: fx.Node, tag: torch.Tag) -> bool:
    return isinstance(node.target, OpOverload) and tag in node.target.tags


def op_name(node: fx.Node) -> str:
    """What reports call a node's op: the overload packet ("linear", "add"), "split[0]" for a tuple output."""
    if node.target is operator.getitem:
        return f"{op_name(arg_node(node, 0))}[{node.args[1]}]"
    return str(getattr(node.target, "__name__", node.target)).split(".")[0]


def attribute_value(module: torch.nn.Module, node: fx.Node) -> Any:
    """What a get_attr node of `module`'s graph reads (a parameter, a buffer, a lifted constant)."""
    if node.op != "get_attr" or not isinstance(node.target, str):
        raise TypeError(f"{node.name} ({node.op}) reads no attribute")
    return functools.reduce(getattr, node.target.split("."), module)


def replace_input(user: fx.Node, old: fx.Node, value: Argument) -> None:
    """Let `user` read `value` (a node or a constant) wherever it read `old`."""
    user.args = fx.node.map_arg(user.args, lambda a: value if a is old else a)
    user.kwargs = fx.node.map_arg(user.kwargs, lambda a: value if a is old else a)


# -- fake-tensor metadata --------------------------------------------------------------------------
def tensor_meta(node: Argument) -> torch.Tensor | None:
    """The fake tensor recorded for a node's output, or None when it is not a single tensor."""
    if not isinstance(node, fx.Node):
        return None
    value = node.meta.get("val")
    return value if isinstance(value, torch.Tensor) else None


def tensor_value(node: Argument) -> torch.Tensor:
    """The fake tensor of a node the op requires to be a tensor."""
    value = tensor_meta(node)
    if value is None:
        raise TypeError(f"{getattr(node, 'name', node)!r} has no recorded tensor value")
    return value


def meta_value(arg: Argument) -> Any:
    """Replace nodes in a (nested) argument by their recorded values, for fake execution."""
    return fx.node.map_aggregate(arg, lambda a: a.meta["val"] if isinstance(a, fx.Node) else a)


def fake_run(fake_mode: FakeTensorMode, target: Callable[..., Any], args: Argument, kwargs: Argument) -> Any:
    """Run an op on recorded fake values, as export traced it: with the Python dispatcher, so composite ops
    (GRU, LSTM, ...) use torch's symbolic decompositions. Their C++ kernels read sizes as plain ints: GRU's
    fixes the shared ShapeEnv's batch symbol to its trace-time value for every later node, LSTM's raises."""
    with fake_mode, enable_python_dispatcher():
        return target(*meta_value(args), **meta_value(kwargs))


def fake_mode_of(graph: fx.Graph) -> FakeTensorMode:
    """The FakeTensorMode the captured graph's metadata lives in."""
    values = [n.meta["val"] for n in graph.nodes if isinstance(n.meta.get("val"), torch.Tensor)]
    mode = detect_fake_mode(values)
    if mode is None:
        raise RuntimeError("captured graph carries no fake-tensor metadata")
    return mode


class NodeFactory:
    """Creates call_function nodes in a graph and records their metadata by fake execution: the one rule every
    pass follows for `meta["val"]` (service/engine/passes.py)."""

    def __init__(self, graph: fx.Graph, fake_mode: FakeTensorMode | None = None) -> None:
        self.graph = graph
        self.fake_mode = fake_mode if fake_mode is not None else fake_mode_of(graph)

    def call(
        self, target: Callable[..., Any], args: tuple[Argument, ...], kwargs: dict[str, Argument] | None = None
    ) -> fx.Node:
        """Fake-run first, so an op that rejects its arguments leaves no node behind."""
        kwargs = kwargs or {}
        value = fake_run(self.fake_mode, target, args, kwargs)
        node = self.graph.call_function(target, args, kwargs)
        node.meta["val"] = value
        return node

    def refresh(self, changed: set[fx.Node]) -> None:
        """Re-record the value of every node in `changed` (a pass gave it other inputs) and of every node
        downstream of one, in graph order."""
        dirty: set[fx.Node] = set()
        for node in self.graph.nodes:
            if node.op != "call_function" or not (node in changed or any(i in dirty for i in node.all_input_nodes)):
                continue
            node.meta["val"] = fake_run(self.fake_mode, callable_target(node), node.args, node.kwargs)
            dirty.add(node)

    def constant(self, owner: torch.nn.Module, name: str, value: torch.Tensor) -> fx.Node:
        """Register `value` as a buffer of `owner` and return a get_attr node reading it."""
        owner.register_buffer(name, value.detach().clone().contiguous())
        node = self.graph.get_attr(name)
        node.meta["val"] = self.fake_mode.from_tensor(getattr(owner, name), static_shapes=True)
        return node


# -- symbolic sizes ---------------------------------------------------------------------------------
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
