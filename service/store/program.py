"""A torch.export program as JSON + plain tensors, read back without unpickling anything.

`torch.export.save/load` put the weights in pickles and `torch.export.load` retries with
`weights_only=False`; the exported program's `guards_code` is Python source that `ExportedProgram.module()`
executes. So the store keeps only the program's JSON graph (guards dropped, node metadata dropped,
operators limited to known namespaces, names limited to identifiers) and the tensors in safetensors, and
rebuilds the program with torch's JSON deserializer.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from typing import Any

import torch
from torch._export.serde.serialize import SerializedArtifact, deserialize, serialize
from torch.export import ExportedProgram

STATE_PREFIX = "state_dict/"
CONSTANT_PREFIX = "constants/"
# Operator namespaces a stored graph may call; an artifact naming anything else is refused.
ALLOWED_TARGET_PREFIXES = (
    "torch.ops.aten.", "torch.ops.prims.", "torch.ops.higher_order.", "torch.ops.fbgemm.", "_operator.",
    "torch.sym_", "torch._sym_", "math.",
)
_IDENTIFIER = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")


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
    check_program_document(document)
    return json.dumps(document, separators=(",", ":")).encode(), tensors


def program_from_json(
    program_json: bytes, tensors: dict[str, torch.Tensor], example_inputs: tuple[tuple[Any, ...], dict[str, Any]]
) -> ExportedProgram:
    """Rebuild the program; `example_inputs` gives the call's structure (torch binds it to name inputs)."""
    try:
        document = json.loads(program_json)
    except (UnicodeDecodeError, json.JSONDecodeError) as error:
        raise ProgramError(f"not valid JSON ({error})") from error
    check_program_document(document)
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
    _register_library_operators(document)
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


def check_program_document(document: Any) -> None:
    """Refuse what could run code on load: guard code, operators outside the allowed namespaces, odd names."""
    if not isinstance(document, dict) or not isinstance(document.get("graph_module"), dict):
        raise ProgramError("expected a JSON object with a 'graph_module'")
    if document.get("guards_code"):
        raise ProgramError("field 'guards_code' must be empty: stored programs carry no Python source")
    for node in _graph_nodes(document["graph_module"]):
        target = node.get("target")
        if not isinstance(target, str) or not target.startswith(ALLOWED_TARGET_PREFIXES):
            raise ProgramError(f"node calls {target!r}, outside the allowed operator namespaces "
                               f"{list(ALLOWED_TARGET_PREFIXES)}")
    for name in _value_names(document["graph_module"]):
        if not _IDENTIFIER.match(name):
            raise ProgramError(f"graph value name {name!r} is not an identifier")


def _register_library_operators(document: dict[str, Any]) -> None:
    """fbgemm's operators (torchrec's jagged ops) exist only once its package is imported."""
    targets = (str(node.get("target", "")) for node in _graph_nodes(document["graph_module"]))
    if any(target.startswith("torch.ops.fbgemm.") for target in targets):
        try:
            import fbgemm_gpu  # noqa: F401  (registers torch.ops.fbgemm)
        except ImportError as error:
            raise ProgramError("the program calls torch.ops.fbgemm operators; install fbgemm-gpu-cpu to serve it "
                               f"({error})") from error


def _plain_tensor(key: str, value: torch.Tensor) -> torch.Tensor:
    if value.is_sparse or value.layout != torch.strided:
        raise ProgramError(f"tensor {key!r} has layout {value.layout}; only dense tensors can be stored")
    return value.detach().cpu().contiguous().clone()  # clone: safetensors refuses shared storage


def _strip_metadata(document: dict[str, Any]) -> None:
    """Stack traces and module paths are provenance for debugging, not needed to run, and never trusted."""
    for node in _graph_nodes(document["graph_module"]):
        node["metadata"] = {}


def _graph_nodes(graph_module: dict[str, Any]) -> Iterator[dict[str, Any]]:
    graph = graph_module.get("graph", {})
    for node in graph.get("nodes", []):
        yield node
        for value in _walk(node.get("inputs", [])):  # higher-order ops carry nested graphs
            if isinstance(value, dict) and isinstance(value.get("graph"), dict) and "nodes" in value["graph"]:
                yield from _graph_nodes(value)


def _value_names(graph_module: dict[str, Any]) -> Iterator[str]:
    for value in _walk(graph_module.get("graph", {})):
        if isinstance(value, dict):
            for key in ("name", "as_name"):
                if isinstance(value.get(key), str):
                    yield value[key]


def _walk(value: Any) -> Iterator[Any]:
    yield value
    if isinstance(value, dict):
        for item in value.values():
            yield from _walk(item)
    elif isinstance(value, list):
        for item in value:
            yield from _walk(item)


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
