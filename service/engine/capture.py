"""Capture a ranker as an ATen graph whose user inputs are batch 1 and candidate inputs batch N.

The model is wrapped so that user leaves are tiled (expanded) to the candidate batch inside the graph:
the captured graph *is* VanI, and the tile nodes are where UOI starts sinking. Capture uses
torch.export in non-strict mode, so models that plain symbolic tracing cannot handle (dict inputs
iterated in Python, layers built in forward, branches on rank) still capture.
"""

from __future__ import annotations

import inspect
from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, cast

import sympy
import torch
import torch.fx as fx
from torch import nn
from torch.utils import _pytree as pytree

from service.engine.graph_tools import shape_exprs
from service.engine.left_matmuls import rewrite_left_matmuls
from service.engine.variants import CaptureError, EngineError

TRACE_BATCH = 4  # candidate batch used while capturing; export treats sizes 0 and 1 as constants
MAX_BATCH = 1 << 20


@dataclass(frozen=True)
class InputLayout:
    """How a call's (args, kwargs) flatten into leaves, and which leaves are user-side tensors."""

    in_spec: pytree.TreeSpec
    leaf_names: tuple[str, ...]
    tensor_positions: tuple[int, ...]  # leaf indices of tensor leaves, in graph placeholder order
    user_positions: frozenset[int]
    constant_leaves: tuple[Any, ...]  # non-tensor leaves, kept as they were at capture
    dict_keys: tuple[str, ...] | None = None  # the call is one dict of tensors (the service's): its keys, in order

    @property
    def user_leaf_names(self) -> list[str]:
        return [self.leaf_names[i] for i in sorted(self.user_positions)]

    def tensor_leaves(self, args: tuple[Any, ...], kwargs: Mapping[str, Any]) -> list[torch.Tensor]:
        """The call's tensor leaves in graph placeholder order. Dicts are matched by key, not by position: a
        caller may build the same features dict in another key order than the capture's (user features first,
        say), and flattening by position would then feed one feature's tensor to another's placeholder."""
        if self.dict_keys is not None and len(args) == 1 and not kwargs and type(args[0]) is dict:
            features = args[0]  # the service's call: no pytree flattening (14 us a call for ten features)
            picked = [features.get(key) for key in self.dict_keys]
            if len(features) == len(picked) and all(isinstance(t, torch.Tensor) for t in picked):
                return picked  # type: ignore[return-value]
        leaves, spec = pytree.tree_flatten((args, kwargs))
        if spec != self.in_spec:
            leaves = self.in_spec.flatten_up_to((args, kwargs))  # same keys in another order; else ValueError
        return [leaves[i] for i in self.tensor_positions]


@dataclass
class CapturedModel:
    graph_module: fx.GraphModule  # placeholders = tensor leaves; output = flat tuple
    layout: InputLayout
    out_spec: pytree.TreeSpec
    batch: sympy.Symbol  # the candidate batch size N as a graph symbol


def _key_name(key: Any) -> str:
    for attr in ("key", "idx", "name"):
        if hasattr(key, attr):
            return str(getattr(key, attr))
    return str(key)


def _argument_names(model: nn.Module, n_args: int) -> list[str]:
    try:
        params = list(inspect.signature(model.forward).parameters.values())
    except (TypeError, ValueError):
        params = []
    names = [p.name for p in params if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)]
    return [names[i] if i < len(names) else f"arg{i}" for i in range(n_args)]


def describe_inputs(
    model: nn.Module, args: tuple[Any, ...], kwargs: Mapping[str, Any], user_inputs: Collection[str]
) -> InputLayout:
    """Name every leaf ("features.user_id") and decide which are user-side."""
    path_leaves, in_spec = pytree.tree_flatten_with_path((tuple(args), dict(kwargs)))
    arg_names = _argument_names(model, len(args))
    names: list[str] = []
    for path, _ in path_leaves:
        parts = [_key_name(k) for k in path[1:]]
        root = path[0]  # index into the (args, kwargs) pair
        if isinstance(root, pytree.SequenceKey) and root.idx == 0:  # positional: its parameter's name
            parts[0] = arg_names[int(parts[0])]
        names.append(".".join(parts))

    wanted = set(user_inputs)
    matched: set[str] = set()
    user_positions, tensor_positions, constants = set(), [], []
    for i, (name, (_, leaf)) in enumerate(zip(names, path_leaves)):
        hits = {w for w in wanted if name == w or name.rsplit(".", 1)[-1] == w}
        if isinstance(leaf, torch.Tensor):
            tensor_positions.append(i)
            if hits:
                user_positions.add(i)
                matched |= hits
        else:
            constants.append(leaf)
    missing = sorted(wanted - matched)
    if missing:
        raise EngineError(f"user input(s) {missing} match no tensor input; inputs are {names}")
    single_dict = len(args) == 1 and not kwargs and type(args[0]) is dict and not constants and all(
        isinstance(key, str) and isinstance(value, torch.Tensor) for key, value in args[0].items())
    return InputLayout(in_spec, tuple(names), tuple(tensor_positions), frozenset(user_positions), tuple(constants),
                       tuple(args[0]) if single_dict else None)


def user_placeholders(graph_module: fx.GraphModule, layout: InputLayout) -> set[fx.Node]:
    """The placeholders of a captured graph (or of a copy of it) that receive user leaves."""
    placeholders = [n for n in graph_module.graph.nodes if n.op == "placeholder"]
    return {node for j, node in enumerate(placeholders) if layout.tensor_positions[j] in layout.user_positions}


class TiledCall(nn.Module):
    """Calls the model with user leaves expanded to the candidate batch: the VanI contract as a module."""

    def __init__(self, model: nn.Module, layout: InputLayout) -> None:
        super().__init__()
        self.model = model
        self.layout = layout
        self._is_user = [p in layout.user_positions for p in layout.tensor_positions]

    def forward(self, *tensors: torch.Tensor) -> Any:
        n = next(t for t, is_user in zip(tensors, self._is_user) if not is_user).size(0)
        tiled = [t.expand(n, *t.shape[1:]) if is_user else t for t, is_user in zip(tensors, self._is_user)]
        args, kwargs = self._unflatten(tiled)
        return self.model(*args, **kwargs)

    def _unflatten(self, tensors: Sequence[torch.Tensor]) -> tuple[tuple[Any, ...], dict[str, Any]]:
        tensor_iter, const_iter = iter(tensors), iter(self.layout.constant_leaves)
        positions = set(self.layout.tensor_positions)
        leaves = [
            next(tensor_iter) if i in positions else next(const_iter) for i in range(self.layout.in_spec.num_leaves)
        ]
        # in_spec was flattened from an (args tuple, kwargs dict) pair
        return cast(tuple[tuple[Any, ...], dict[str, Any]], pytree.tree_unflatten(leaves, self.layout.in_spec))


def _trace_tensors(layout: InputLayout, tensors: list[torch.Tensor]) -> list[torch.Tensor]:
    """Check batch sizes and resize candidate leaves to TRACE_BATCH rows (export fixes sizes 0 and 1)."""
    out = []
    for j, t in enumerate(tensors):
        name = layout.leaf_names[layout.tensor_positions[j]]
        is_user = layout.tensor_positions[j] in layout.user_positions
        if t.dim() == 0:
            raise EngineError(f"input '{name}' is a scalar tensor; every input needs a leading batch dimension")
        if is_user:
            if t.size(0) != 1:
                raise EngineError(f"user input '{name}' must have batch size 1, got {t.size(0)}")
            out.append(t)
        else:
            rows = torch.arange(TRACE_BATCH) % t.size(0)
            out.append(t[rows])
    if all(layout.tensor_positions[j] in layout.user_positions for j in range(len(tensors))):
        raise EngineError("no candidate-side tensor input: there is no batch of N to rank")
    return out


def capture(model: nn.Module, layout: InputLayout, example_tensors: list[torch.Tensor]) -> CapturedModel:
    """torch.export (non-strict) the tiled call with a dynamic candidate batch; functional ATen graph."""
    tiled = TiledCall(model, layout)
    tiled.training = False  # the model is in eval mode already; a loaded export program refuses .train()
    tensors = _trace_tensors(layout, example_tensors)
    batch_dim = torch.export.Dim("candidates", min=1, max=MAX_BATCH)
    dynamic = tuple(
        None if layout.tensor_positions[j] in layout.user_positions else {0: batch_dim} for j in range(len(tensors))
    )
    exported = torch.export.export(tiled, tuple(tensors), dynamic_shapes=(dynamic,), strict=False)
    functional = _is_functional(exported)
    if not functional:
        exported = exported.run_decompositions({})  # functionalize, keep linear/matmul/layer_norm whole
    graph_module = exported.module()
    if functional:
        _drop_dead_code(graph_module)
    codegen = graph_module.graph._codegen  # an exported module's: it flattens inputs and unflattens outputs
    assert isinstance(codegen, fx.graph._PyTreeCodeGen) and codegen.pytree_info.out_spec is not None
    out_spec = codegen.pytree_info.out_spec
    _drop_guards(graph_module)
    rewrite_left_matmuls(graph_module)  # eager's one mm, which the stored program's grad-free weights lose
    batch = _batch_symbol(graph_module, layout)
    return CapturedModel(graph_module, layout, out_spec, batch)


def _is_functional(exported: torch.export.ExportedProgram) -> bool:
    """True when `run_decompositions({})` would leave the export's operators as they are, so capture can skip it.

    An empty decomposition table only functionalizes and decomposes the composite operators torch cannot keep
    (those that may alias or mutate, such as batch_norm or reshape); it keeps the rest (linear, matmul, layer_norm)
    whole, by tracing the whole program a second time: two thirds of a capture's time on the default model (1.8 of
    2.7 s). A graph with no mutated input, buffer or parameter, no higher-order operator (a grad-mode or autocast
    region), no mutating operator and no composite that torch would decompose comes out of it with the same
    operators. torch's own test of the last (torch._export.utils) is private: without it, always decompose."""
    try:
        from torch._export.utils import _check_valid_to_preserve, _is_cia_op
    except ImportError:
        return False
    signature = exported.graph_signature
    if signature.buffers_to_mutate or signature.user_inputs_to_mutate or signature.parameters_to_mutate:
        return False
    for node in exported.graph.nodes:
        if node.op != "call_function":
            continue
        target = node.target
        if isinstance(target, torch._ops.HigherOrderOperator):
            return False
        if isinstance(target, torch._ops.OpOverload):
            if target._schema.is_mutable or (_is_cia_op(target) and not _check_valid_to_preserve(target)):
                return False
    return True


def _drop_dead_code(graph_module: fx.GraphModule) -> None:
    """What the skipped second trace would also have dropped: values nothing reads (a split's unused outputs)."""
    graph_module.graph.eliminate_dead_code()
    graph_module.recompile()


def _drop_guards(graph_module: fx.GraphModule) -> None:
    for node in list(graph_module.graph.nodes):
        if node.op == "call_module" and node.target == "_guards_fn":
            graph_module.graph.erase_node(node)
    if hasattr(graph_module, "_guards_fn"):
        delattr(graph_module, "_guards_fn")


def _batch_symbol(graph_module: fx.GraphModule, layout: InputLayout) -> sympy.Symbol:
    placeholders = [n for n in graph_module.graph.nodes if n.op == "placeholder"]
    for j, node in enumerate(placeholders):
        if layout.tensor_positions[j] not in layout.user_positions:
            dim0 = shape_exprs(node.meta["val"])[0]
            if isinstance(dim0, sympy.Symbol):
                return dim0
    raise CaptureError("capture did not keep the candidate batch dynamic (the model specializes on N)")
