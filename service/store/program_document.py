"""What a stored program's JSON may hold, checked before torch's deserializer reads any of it.

The deserializer evaluates symbolic sizes with sympy, resolves operator names by getattr chains, parses
metadata and tree specs, and trusts declared tensor sizes. So the whole document is walked, not known paths:
every `expr_str` is checked against the size grammar (service.store.symbolic), every operator against the
allow-list (service.store.operators), metadata and custom objects must be absent, and every literal size
(declared tensors, allocating operators' shape arguments) is bounded, so nothing runs and nothing large is
allocated on the attacker's say-so.
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterator
from typing import Any

import torch
from torch._export.serde.serialize import _TORCH_TO_SERIALIZE_DTYPE

from service.store.bounded_json import JsonBoundError, loads_bounded
from service.store.operators import OperatorError, check_target
from service.store.symbolic import ExpressionError, check_expression, check_symbol_name

MAX_TENSOR_RANK = 8
MAX_TENSOR_ELEMENTS = 1 << 31  # a declared (fake, never allocated) tensor; real weights are checked too
MAX_ALLOCATION_ELEMENTS = 1 << 26  # a literal shape an operator allocates (zeros, full, arange, expand, ...)
MAX_SIZE_LITERAL = 1 << 31  # an integer in Python-level size arithmetic (`_operator.mul(s, 4)`)
MAX_TREE_SPEC_CHARS = 1 << 20
MAX_TREE_SPEC_DEPTH = 32
STRIDED_LAYOUT = 7  # torch._export.serde.schema.Layout.Strided
# Operators whose integer arguments are the shape or length of what they allocate.
ALLOCATING_OPERATORS = frozenset({
    "full", "zeros", "ones", "empty", "new_zeros", "new_ones", "new_full", "new_empty", "expand", "repeat",
    "tile", "arange", "scalar_tensor", "triu_indices", "tril_indices", "jagged_to_padded_dense",
    "jagged_2d_to_dense",
})
# Pytree node types the program's call signature may use (torch looks them up in its registry).
TREE_SPEC_TYPES = frozenset({None, "builtins.tuple", "builtins.list", "builtins.dict", "collections.OrderedDict"})
_IDENTIFIER = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
_DTYPE_CODES = {dtype: code.value for dtype, code in _TORCH_TO_SERIALIZE_DTYPE.items()}


class DocumentError(ValueError):
    """The program document holds something the loader cannot prove harmless; the message says what."""


def check_program_document(document: Any) -> None:
    """Refuse what could run code, read files or allocate without bound on load (module docstring)."""
    if not isinstance(document, dict) or not isinstance(document.get("graph_module"), dict):
        raise DocumentError("expected a JSON object with a 'graph_module'")
    if document.get("guards_code"):
        raise DocumentError("field 'guards_code' must be empty: stored programs carry no Python source")
    if any(set(spec) - {"user_input", "parameter", "buffer", "tensor_constant"} for spec in _input_specs(document)):
        raise DocumentError("input_specs may name user inputs, parameters, buffers and tensor constants only")
    try:
        _check_range_constraints(document.get("range_constraints", {}))
        _check_every_field(document)
        for graph_module in _graph_modules(document["graph_module"]):
            _check_graph_module(graph_module)
        for name in _value_names(document["graph_module"]):  # fx writes them into generated Python source
            if not _IDENTIFIER.match(name):
                raise DocumentError(f"graph value name {name[:80]!r} is not an identifier")
    except (ExpressionError, OperatorError, JsonBoundError) as error:
        raise DocumentError(str(error)) from error


def check_tensor_metadata(document: dict[str, Any], state_dict: dict[str, torch.Tensor],
                          constants: dict[str, torch.Tensor]) -> None:
    """The shape and dtype the program declares for each weight it reads are those of the stored tensor."""
    values = document["graph_module"]["graph"].get("tensor_values", {})
    for value_name, kind, stored_name in _weight_inputs(document):
        tensor = (constants if kind == "tensor_constant" else state_dict).get(stored_name)
        meta = values.get(value_name)
        if tensor is None or not isinstance(meta, dict):
            continue  # missing tensors are named by the caller; undeclared ones are torch's to refuse
        declared = [size.get("as_int") if isinstance(size, dict) else None for size in meta.get("sizes", [])]
        if declared != list(tensor.shape) or meta.get("dtype") != _DTYPE_CODES.get(tensor.dtype):
            raise DocumentError(f"{kind} {stored_name!r} is declared with sizes {declared} and dtype code "
                                f"{meta.get('dtype')}, but the weights file holds {list(tensor.shape)} "
                                f"{tensor.dtype} (code {_DTYPE_CODES.get(tensor.dtype)})")


def graph_nodes(graph_module: dict[str, Any]) -> Iterator[dict[str, Any]]:
    """Every node of the graph and of the graphs nested in higher-order operators' arguments."""
    for module in _graph_modules(graph_module):
        yield from (node for node in module["graph"].get("nodes", []) if isinstance(node, dict))


def walk(value: Any) -> Iterator[Any]:
    """Every value of a JSON document, depth first (the document's depth is bounded when it is read)."""
    yield value
    if isinstance(value, dict):
        for item in value.values():
            yield from walk(item)
    elif isinstance(value, list):
        for item in value:
            yield from walk(item)


def _graph_modules(graph_module: dict[str, Any]) -> Iterator[dict[str, Any]]:
    if not isinstance(graph_module.get("graph"), dict):
        raise DocumentError("a graph module has no 'graph' object")
    yield graph_module
    for node in graph_module["graph"].get("nodes", []):
        for value in walk(node.get("inputs", []) if isinstance(node, dict) else []):
            if isinstance(value, dict) and isinstance(value.get("graph"), dict) and "nodes" in value["graph"]:
                yield from _graph_modules(value)


def _check_every_field(document: dict[str, Any]) -> None:
    """Fields torch evaluates or resolves, wherever they are in the document."""
    for value in walk(document):
        if not isinstance(value, dict):
            continue
        if "expr_str" in value:
            check_expression(value["expr_str"])
        if "as_operator" in value:
            check_target(value["as_operator"])
        if "as_custom_obj" in value:
            raise DocumentError("custom (TorchBind) objects are not allowed in a stored program")
        if "as_sym_float" in value or "as_sym_floats" in value:
            raise DocumentError("symbolic floats are not allowed in a stored program")
        for key in ("in_spec", "out_spec"):
            if key in value:
                _check_tree_spec(value[key], key)


def _check_graph_module(graph_module: dict[str, Any]) -> None:
    if graph_module.get("metadata") or graph_module.get("treespec_namedtuple_fields"):
        raise DocumentError("graph module 'metadata' and 'treespec_namedtuple_fields' must be empty")
    graph = graph_module["graph"]
    if graph.get("custom_obj_values") or graph.get("sym_float_values"):
        raise DocumentError("graph fields 'custom_obj_values' and 'sym_float_values' must be empty")
    tensor_values = graph.get("tensor_values", {})
    if not isinstance(tensor_values, dict):
        raise DocumentError("graph field 'tensor_values' must be an object")
    for name, meta in tensor_values.items():
        _check_tensor_meta(name, meta)
    for node in graph.get("nodes", []):
        _check_node(node)


def _check_node(node: Any) -> None:
    if not isinstance(node, dict):
        raise DocumentError(f"a graph node must be an object, got {type(node).__name__}")
    target = node.get("target")
    try:
        check_target(target)
    except OperatorError as error:
        raise DocumentError(f"node {str(node.get('name'))[:80]!r}: {error}") from error
    if node.get("metadata"):
        raise DocumentError(f"node {str(node.get('name'))[:80]!r}: 'metadata' must be empty (stored programs "
                            "carry no stack traces, module paths or custom metadata)")
    op = str(target).split(".")[-2] if str(target).startswith("torch.ops.") else ""
    for argument in node.get("inputs", []):
        arg = argument.get("arg") if isinstance(argument, dict) else None
        if op in ALLOCATING_OPERATORS:
            _check_allocation(node, op, arg)
        elif str(target).startswith("_operator."):
            _check_size_literals(node, arg)


def _check_allocation(node: dict[str, Any], op: str, arg: Any) -> None:
    """A literal shape (or length) an operator allocates stays under MAX_ALLOCATION_ELEMENTS."""
    if not isinstance(arg, dict):
        return
    if isinstance(arg.get("as_ints"), list):
        literals = arg["as_ints"]
    elif isinstance(arg.get("as_sym_ints"), list):
        literals = [item.get("as_int", 1) for item in arg["as_sym_ints"] if isinstance(item, dict)]
    elif "as_int" in arg or "as_float" in arg:
        literals = [arg.get("as_int", arg.get("as_float"))]
    else:
        return
    if not all(isinstance(item, (int, float)) and not isinstance(item, bool) and math.isfinite(item)
               for item in literals):
        raise DocumentError(f"node {str(node.get('name'))[:80]!r} ({op}): size arguments must be finite numbers")
    elements = math.prod(abs(item) for item in literals)
    if elements > MAX_ALLOCATION_ELEMENTS:
        raise DocumentError(f"node {str(node.get('name'))[:80]!r} ({op}) allocates {elements:.3g} elements, "
                            f"more than the {MAX_ALLOCATION_ELEMENTS} allowed")
    if op == "arange" and "as_float" in arg and 0 < abs(arg["as_float"]) < 1 / MAX_ALLOCATION_ELEMENTS:
        raise DocumentError(f"node {str(node.get('name'))[:80]!r} (arange): step {arg['as_float']} is too small")


def _check_size_literals(node: dict[str, Any], arg: Any) -> None:
    value = arg.get("as_int") if isinstance(arg, dict) else None
    if isinstance(value, int) and abs(value) > MAX_SIZE_LITERAL:
        raise DocumentError(f"node {str(node.get('name'))[:80]!r}: size literal {value} exceeds {MAX_SIZE_LITERAL}")


def _check_tensor_meta(name: str, meta: Any) -> None:
    if not isinstance(meta, dict) or not isinstance(meta.get("sizes"), list):
        raise DocumentError(f"tensor_values[{name[:80]!r}] must be an object with a 'sizes' list")
    sizes = meta["sizes"]
    if len(sizes) > MAX_TENSOR_RANK:
        raise DocumentError(f"tensor_values[{name[:80]!r}] has {len(sizes)} dimensions, more than {MAX_TENSOR_RANK}")
    literals: list[Any] = [size.get("as_int") for size in sizes if isinstance(size, dict) and "as_int" in size]
    if not all(type(size) is int and 0 <= size <= MAX_TENSOR_ELEMENTS for size in literals):
        raise DocumentError(f"tensor_values[{name[:80]!r}]: sizes {literals[:10]} must be integers in "
                            f"[0, {MAX_TENSOR_ELEMENTS}]")
    elements = math.prod(literals)
    if elements > MAX_TENSOR_ELEMENTS:
        raise DocumentError(f"tensor_values[{name[:80]!r}] declares {elements} elements, more than "
                            f"{MAX_TENSOR_ELEMENTS}")
    if meta.get("layout", STRIDED_LAYOUT) != STRIDED_LAYOUT:
        raise DocumentError(f"tensor_values[{name[:80]!r}] has layout {meta.get('layout')}; only dense (strided) "
                            "tensors are served")


def _check_range_constraints(constraints: Any) -> None:
    if not isinstance(constraints, dict):
        raise DocumentError("field 'range_constraints' must be an object")
    for name, bounds in constraints.items():
        check_symbol_name(name)
        if not isinstance(bounds, dict) or not all(
            bound is None or (type(bound) is int and abs(bound) <= MAX_TENSOR_ELEMENTS)
            for bound in (bounds.get("min_val"), bounds.get("max_val"))
        ):
            raise DocumentError(f"range_constraints[{name!r}] must hold integer min_val/max_val up to "
                                f"{MAX_TENSOR_ELEMENTS} (or null)")


def _check_tree_spec(text: Any, field: str) -> None:
    """Call signatures are pytree specs (JSON inside a string) torch parses and looks types up for."""
    if not isinstance(text, str):
        raise DocumentError(f"{field} must be a string")
    spec = loads_bounded(text.encode(), max_bytes=MAX_TREE_SPEC_CHARS, max_depth=MAX_TREE_SPEC_DEPTH, what=field)
    for value in walk(spec):
        if isinstance(value, dict):
            if value.get("type") not in TREE_SPEC_TYPES:
                raise DocumentError(f"{field} uses type {str(value.get('type'))[:80]!r}, not one of "
                                    f"{sorted(str(kind) for kind in TREE_SPEC_TYPES)}")
            if isinstance(value.get("context"), str):
                loads_bounded(value["context"].encode(), max_bytes=MAX_TREE_SPEC_CHARS,
                              max_depth=MAX_TREE_SPEC_DEPTH, what=f"{field} context")


def _value_names(graph_module: dict[str, Any]) -> Iterator[str]:
    """Names of values and inputs everywhere: graphs, the signature, the module call graph."""
    for value in walk(graph_module):
        if isinstance(value, dict):
            for key in ("name", "as_name"):
                if key in value:
                    yield value[key] if isinstance(value[key], str) else repr(value[key])
            names = value.get("forward_arg_names")
            if isinstance(names, list):
                yield from (name if isinstance(name, str) else repr(name) for name in names)


def _weight_inputs(document: dict[str, Any]) -> Iterator[tuple[str, str, str]]:
    """(graph value name, spec kind, stored name) of every parameter, buffer and tensor constant."""
    for spec in _input_specs(document):
        for kind, field in (("parameter", "parameter_name"), ("buffer", "buffer_name"),
                            ("tensor_constant", "tensor_constant_name")):
            entry = spec.get(kind)
            if isinstance(entry, dict) and isinstance(entry.get("arg"), dict):
                name, stored = entry["arg"].get("name"), entry.get(field)
                if isinstance(name, str) and isinstance(stored, str):
                    yield name, kind, stored


def _input_specs(document: dict[str, Any]) -> list[dict[str, Any]]:
    signature = document["graph_module"].get("signature", {})
    specs = signature.get("input_specs", []) if isinstance(signature, dict) else []
    if not isinstance(specs, list) or not all(isinstance(spec, dict) for spec in specs):
        raise DocumentError("graph_module.signature.input_specs must be a list of objects")
    return specs
