"""A torch.export program as JSON + plain tensors, read back without unpickling anything.

`torch.export.save/load` put the weights in pickles and `torch.export.load` retries with
`weights_only=False`; the exported program's `guards_code` is Python source that `ExportedProgram.module()`
executes. So the store keeps only the program's JSON graph (guards dropped, node metadata dropped) and the
tensors in safetensors, and rebuilds the program with torch's JSON deserializer once the whole document has
passed service.store.program_document (allowed operators, size grammar, bounded sizes, identifiers).
"""

from __future__ import annotations

import json
from typing import Any

import torch
from torch._export.serde.serialize import SerializedArtifact, deserialize, serialize
from torch.export import ExportedProgram

from service.store.bounded_json import MAX_JSON_DEPTH, MAX_PROGRAM_BYTES, JsonBoundError, loads_bounded
from service.store.program_document import (
    DocumentError,
    check_program_document,
    check_tensor_metadata,
    graph_nodes,
)

STATE_PREFIX = "state_dict/"
CONSTANT_PREFIX = "constants/"


class ProgramError(ValueError):
    """The stored program cannot be written or trusted; the message says which part and why."""


def program_to_json(program: ExportedProgram) -> tuple[bytes, dict[str, torch.Tensor]]:
    """The program's graph as JSON bytes and every tensor it holds (parameters, buffers, constants)."""
    tensors: dict[str, torch.Tensor] = {}
    for key, value in program.state_dict.items():
        tensors[STATE_PREFIX + key] = _plain_tensor(key, value)
    for key, value in program.constants.items():
        if not isinstance(value, torch.Tensor):
            raise ProgramError(f"constant {key!r} is a {type(value).__name__}; only tensors can be stored")
        tensors[CONSTANT_PREFIX + key] = _plain_tensor(key, value)
    guards = program._guards_code
    program._guards_code = []  # Python source executed by .module(); never stored
    try:
        serialized = serialize(program, serialize_state_dict=False, serialize_constants=False,
                               serialize_example_inputs=False)
    finally:
        program._guards_code = guards
    document = json.loads(serialized.exported_program)
    _strip_metadata(document)
    _check_document(document)
    return json.dumps(document, separators=(",", ":")).encode(), tensors


def program_from_json(
    program_json: bytes, tensors: dict[str, torch.Tensor], example_inputs: tuple[tuple[Any, ...], dict[str, Any]]
) -> ExportedProgram:
    """Rebuild the program; `example_inputs` gives the call's structure (torch binds it to name inputs)."""
    try:
        document = loads_bounded(program_json, max_bytes=MAX_PROGRAM_BYTES, max_depth=MAX_JSON_DEPTH,
                                 what="the program")
    except JsonBoundError as error:
        raise ProgramError(str(error)) from error
    _check_document(document)
    parameters = set(_parameter_names(document))
    state_dict: dict[str, torch.Tensor] = {}
    constants: dict[str, torch.Tensor] = {}
    for key, tensor in tensors.items():
        if key.startswith(STATE_PREFIX):
            name = key[len(STATE_PREFIX):]
            state_dict[name] = torch.nn.Parameter(tensor, requires_grad=False) if name in parameters else tensor
        elif key.startswith(CONSTANT_PREFIX):
            constants[key[len(CONSTANT_PREFIX):]] = tensor
        else:
            raise ProgramError(f"tensor {key!r} is neither under {STATE_PREFIX!r} nor under {CONSTANT_PREFIX!r}")
    _check_tensor_names(document, state_dict, constants)
    try:
        check_tensor_metadata(document, state_dict, constants)
    except DocumentError as error:
        raise ProgramError(str(error)) from error
    artifact = SerializedArtifact(json.dumps(document).encode(), state_dict, constants, example_inputs)  # type: ignore[arg-type]
    try:
        return deserialize(artifact)
    except Exception as error:  # torch's deserializer raises many kinds; all mean "cannot use this program"
        raise ProgramError(f"torch could not rebuild the program ({type(error).__name__}: {error})") from error


def program_module(program: ExportedProgram) -> torch.nn.Module:
    """The callable module of a program, without torch's generated guard code, in eval mode."""
    module = program.module(check_guards=False)
    for submodule in module.modules():
        submodule.training = False  # .eval() is refused by torch on export modules; they are eval already
    _views_to_reshapes(module)
    return module


def _views_to_reshapes(module: torch.fx.GraphModule) -> None:
    """Export records the model's reshapes of contiguous inputs as views. The engine feeds user inputs as
    zero-copy expands (stride 0), which a view refuses; a reshape gives the same values either way."""
    changed = False
    for node in module.graph.nodes:
        if node.op == "call_function" and node.target is torch.ops.aten.view.default:
            node.target = torch.ops.aten.reshape.default
            changed = True
    if changed:
        module.recompile()


def _check_document(document: Any) -> None:
    try:
        check_program_document(document)
    except DocumentError as error:
        raise ProgramError(str(error)) from error


def _plain_tensor(key: str, value: torch.Tensor) -> torch.Tensor:
    if value.is_sparse or value.layout != torch.strided:
        raise ProgramError(f"tensor {key!r} has layout {value.layout}; only dense tensors can be stored")
    return value.detach().cpu().contiguous().clone()  # clone: safetensors refuses shared storage


def _strip_metadata(document: dict[str, Any]) -> None:
    """Stack traces and module paths are provenance for debugging, not needed to run, and never trusted."""
    for node in graph_nodes(document["graph_module"]):
        node["metadata"] = {}


def _parameter_names(document: dict[str, Any]) -> list[str]:
    specs = document["graph_module"].get("signature", {}).get("input_specs", [])
    return [spec["parameter"]["parameter_name"] for spec in specs if isinstance(spec, dict) and "parameter" in spec]


def _check_tensor_names(document: dict[str, Any], state_dict: dict[str, Any], constants: dict[str, Any]) -> None:
    """Every parameter/buffer/constant the graph reads is present, so torch never fills a gap itself."""
    wanted: set[str] = set()
    for spec in document["graph_module"].get("signature", {}).get("input_specs", []):
        for kind, field in (("parameter", "parameter_name"), ("buffer", "buffer_name"),
                            ("tensor_constant", "tensor_constant_name")):
            if isinstance(spec, dict) and kind in spec:
                wanted.add(spec[kind][field])
    missing = sorted(wanted - set(state_dict) - set(constants))
    if missing:
        raise ProgramError(f"the weights file lacks tensors the graph reads: {missing[:10]}")
