"""Planting hostile artifacts: an attacker who can write the model store edits any file of a real stored model
and makes model.json vouch for it (the sha256s), so only the loader's own checks stand in the way."""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file

from service.store.artifact import sha256_file
from service.store.manifest import MANIFEST_FILE, PROGRAM_FILE, WEIGHTS_FILE

Document = dict[str, Any]
SIZE_SYMBOL = "Symbol('s10', positive=True, integer=True)"  # what the small MMoE's batch dimension prints as


def plant(source: Path, target: Path) -> Path:
    """A copy of the stored version `source` at `target`, for one test to tamper with."""
    shutil.copytree(source, target)
    return target


def rehash(version_dir: Path) -> None:
    """Make the manifest vouch for the tampered files."""
    manifest = json.loads((version_dir / MANIFEST_FILE).read_text())
    manifest["files"] = {name: sha256_file(version_dir / name) for name in manifest["files"]}
    (version_dir / MANIFEST_FILE).write_text(json.dumps(manifest))


def edit_program(version_dir: Path, edit: Callable[[Document], Any]) -> None:
    program = json.loads((version_dir / PROGRAM_FILE).read_bytes())
    edit(program)
    (version_dir / PROGRAM_FILE).write_text(json.dumps(program))
    rehash(version_dir)


def edit_manifest(version_dir: Path, edit: Callable[[Document], Any], *, vouch: bool = True) -> None:
    """`vouch`: rewrite the sha256s afterwards (not when the edit is to the sha256s themselves)."""
    manifest = json.loads((version_dir / MANIFEST_FILE).read_text())
    edit(manifest)
    (version_dir / MANIFEST_FILE).write_text(json.dumps(manifest))
    if vouch:
        rehash(version_dir)


def set_manifest_text(version_dir: Path, field: str, key: str, json_text: str) -> None:
    """manifest[field][key] = the raw JSON `json_text` (e.g. 1e999 or NaN, which json.dumps never writes)."""
    edit_manifest(version_dir, lambda manifest: manifest[field].update({key: "__planted__"}))
    path = version_dir / MANIFEST_FILE
    path.write_text(path.read_text().replace('"__planted__"', json_text, 1))


def write_file(version_dir: Path, name: str, data: bytes) -> None:
    """Replace one file verbatim (e.g. text json.dumps would never write) and re-vouch for it."""
    (version_dir / name).write_bytes(data)
    if name != MANIFEST_FILE:
        rehash(version_dir)


def edit_weights(version_dir: Path, edit: Callable[[dict[str, torch.Tensor]], Any]) -> None:
    tensors = load_file(version_dir / WEIGHTS_FILE)
    edit(tensors)
    save_file(tensors, str(version_dir / WEIGHTS_FILE), metadata={"format": "pt"})
    rehash(version_dir)


def nodes(program: Document) -> list[Document]:
    return program["graph_module"]["graph"]["nodes"]


def node_named(program: Document, name: str) -> Document:
    return next(node for node in nodes(program) if node["name"] == name)


def symbolic_sizes(program: Document) -> Iterator[Document]:
    """Every {"as_expr": {"expr_str": ...}} of the graph's declared tensor sizes."""
    for meta in program["graph_module"]["graph"]["tensor_values"].values():
        for size in meta["sizes"]:
            if "as_expr" in size:
                yield size["as_expr"]


def shell_expression(marker: Path) -> str:
    """A symbolic size that, evaluated by sympy, runs a shell command creating `marker` and still reads as the
    batch symbol (so nothing else in the program notices)."""
    return f"__import__('os').system('touch {marker}') or {SIZE_SYMBOL}"


def operator_node(target: str, name: str, inputs: list[Document] | None = None) -> Document:
    """A graph node calling `target`, in the serialized form."""
    return {"target": target, "inputs": inputs or [], "outputs": [{"as_tensor": {"name": name}}], "metadata": {},
            "is_hop_single_tensor_return": None, "name": name}


def nested_graph_argument(node: Document) -> Document:
    """An argument carrying a whole graph (as higher-order operators' arguments do) whose one node is `node`."""
    graph = {"inputs": [], "outputs": node["outputs"], "nodes": [node], "tensor_values": {}, "sym_int_values": {},
             "sym_bool_values": {}, "is_single_tensor_return": True, "custom_obj_values": {}, "sym_float_values": {}}
    return {"name": "body", "arg": {"as_graph": {"name": "body_graph", "graph": graph}}, "kind": 1}


def plant_computed_allocation(program: Document, multiplier: int, columns: int, *, squared: bool = False) -> None:
    """Make the graph allocate `full([batch * multiplier, columns])` (`squared`: batch * batch * multiplier), a
    shape computed at run time from the batch size (no literal in it is large), and feed its sum into the
    first ReLU so the call cannot skip it."""
    graph = program["graph_module"]["graph"]
    computed = f"Mul(Integer({multiplier}), {SIZE_SYMBOL})"
    batch_size = operator_node("torch.ops.aten.sym_size.int", "batch_size", [
        {"name": "self", "arg": {"as_tensor": {"name": "features_item_dense"}}, "kind": 1},
        {"name": "dim", "arg": {"as_int": 0}, "kind": 1}])
    batch_size["outputs"] = [{"as_sym_int": {"as_name": "batch_size"}}]
    factor = {"as_sym_int": {"as_name": "scaled"}} if squared else {"as_int": multiplier}
    scaled = operator_node("_operator.mul", "scaled", [
        {"name": "a", "arg": {"as_sym_int": {"as_name": "batch_size"}}, "kind": 1},
        {"name": "b", "arg": {"as_int": multiplier}, "kind": 1}])
    scaled["outputs"] = [{"as_sym_int": {"as_name": "scaled"}}]
    rows = operator_node("_operator.mul", "rows", [
        {"name": "a", "arg": {"as_sym_int": {"as_name": "batch_size"}}, "kind": 1},
        {"name": "b", "arg": factor, "kind": 1}])
    rows["outputs"] = [{"as_sym_int": {"as_name": "rows"}}]
    huge = operator_node("torch.ops.aten.full.default", "huge", [
        {"name": "size", "arg": {"as_sym_ints": [{"as_name": "rows"}, {"as_int": columns}]}, "kind": 1},
        {"name": "fill_value", "arg": {"as_float": 1.0}, "kind": 1}])
    total = operator_node("torch.ops.aten.sum.default", "total", [
        {"name": "self", "arg": {"as_tensor": {"name": "huge"}}, "kind": 1}])
    relu = node_named(program, "relu")
    plus = operator_node("torch.ops.aten.add.Tensor", "plus", [
        relu["inputs"][0], {"name": "other", "arg": {"as_tensor": {"name": "total"}}, "kind": 1}])
    relu["inputs"][0] = {"name": "self", "arg": {"as_tensor": {"name": "plus"}}, "kind": 1}
    graph["nodes"][0:0] = [batch_size, scaled, rows, huge, total]
    graph["nodes"].insert(graph["nodes"].index(relu), plus)
    graph["sym_int_values"]["batch_size"] = {"as_expr": {"expr_str": SIZE_SYMBOL, "hint": {"as_int": 8}}}
    graph["sym_int_values"]["scaled"] = {"as_expr": {"expr_str": computed, "hint": {"as_int": 8 * multiplier}}}
    if squared:
        computed = f"Mul(Integer({multiplier}), {SIZE_SYMBOL}, {SIZE_SYMBOL})"
    graph["sym_int_values"]["rows"] = {"as_expr": {"expr_str": computed}}
    values = graph["tensor_values"]
    values["huge"] = {**values["relu"], "sizes": [{"as_expr": {"expr_str": computed}}, {"as_int": columns}],
                      "strides": [{"as_int": columns}, {"as_int": 1}]}
    values["total"] = {**values["relu"], "sizes": [], "strides": []}
    values["plus"] = values["relu"]
