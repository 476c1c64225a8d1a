"""A stored program never runs code on load: symbolic sizes are held to a grammar before sympy sees them, and
operators to an allow-list before torch resolves them (issue 21 item 1)."""

from __future__ import annotations

from pathlib import Path

import pytest
import sympy
import torch

from service.store import ArtifactError, load_artifact
from service.store.operators import ALLOWED_OPERATORS, REFUSED_OPERATORS, OperatorError, check_target
from service.store.symbolic import ExpressionError, check_expression
from tests.conftest import SMALL_MODEL_NAME
from tests.security.hostile_artifacts import (
    SIZE_SYMBOL,
    edit_program,
    nested_graph_argument,
    node_named,
    nodes,
    operator_node,
    plant,
    shell_expression,
    symbolic_sizes,
)


@pytest.fixture
def version_dir(store: Path, tmp_path: Path) -> Path:
    return plant(store / SMALL_MODEL_NAME / "v1", tmp_path / SMALL_MODEL_NAME / "v1")


@pytest.fixture
def marker(tmp_path: Path) -> Path:
    return tmp_path / "pwned"


def test_the_shell_payload_is_live_when_sympy_evaluates_it(marker: Path) -> None:
    """What torch's deserializer would do with the expression: it runs the command (so the tests below can fail)."""
    sympy.sympify(shell_expression(marker))
    assert marker.exists()


def test_a_shell_command_in_a_symbolic_size_is_refused_without_running(version_dir: Path, marker: Path) -> None:
    def plant_payload(program: dict) -> None:
        next(symbolic_sizes(program))["expr_str"] = shell_expression(marker)

    edit_program(version_dir, plant_payload)
    with pytest.raises(ArtifactError, match="program.json: expression .* characters outside"):
        load_artifact(version_dir)
    assert not marker.exists()


@pytest.mark.parametrize("place", ["strides", "storage_offset", "sym_int_values", "sym_bool_values", "signature"])
def test_an_expression_anywhere_in_the_program_is_checked(version_dir: Path, marker: Path, place: str) -> None:
    """Every `expr_str` of the document, not only tensor sizes (torch parses all sym_int/sym_bool values)."""
    payload = {"expr_str": shell_expression(marker), "hint": {"as_int": 4}}

    def plant_payload(program: dict) -> None:
        graph = program["graph_module"]["graph"]
        meta = graph["tensor_values"]["features_user_dense"]
        if place == "strides":
            meta["strides"][0] = {"as_expr": payload}
        elif place == "storage_offset":
            meta["storage_offset"] = {"as_expr": payload}
        elif place == "sym_int_values":
            graph["sym_int_values"]["sym_size_int_99"] = {"as_expr": payload}
        elif place == "sym_bool_values":
            graph["sym_bool_values"]["sym_bool_99"] = {"as_expr": {"expr_str": payload["expr_str"]}}
        else:
            program["graph_module"]["signature"]["note"] = {"as_expr": payload}

    edit_program(version_dir, plant_payload)
    with pytest.raises(ArtifactError, match="expression"):
        load_artifact(version_dir)
    assert not marker.exists()


def test_a_range_constraint_key_must_be_a_symbol_name(version_dir: Path, marker: Path) -> None:
    def plant_key(program: dict) -> None:
        program["range_constraints"][f"__import__('os').system('touch {marker}')"] = {"min_val": 1, "max_val": 2}

    edit_program(version_dir, plant_key)
    with pytest.raises(ArtifactError, match="symbol name"):
        load_artifact(version_dir)
    assert not marker.exists()


@pytest.mark.parametrize("text", [
    "__import__('os').system('id')",
    "open('/etc/passwd')",
    "(lambda: Symbol('s1'))()",
    "().__class__.__bases__[0].__subclasses__()",
    "Symbol('s1').__class__",
    "Symbol('s1', integer=__import__('os'))",
    "Symbol('s1', integer=True, evaluate=True)",
    "Symbol('x; import os')",
    "Symbol('s1') # comment",
    "exec('1')",
    "eval('1')",
    "getattr(Symbol('s1'), 'name')",
    "Pow(Symbol('s1'), Integer(1000000))",
    "PowByNatural(Integer(10), Integer(100000))",
    "Integer(10000000000000000000000)",
    "Integer(Symbol('s1'))",
    "Add(" * 20 + SIZE_SYMBOL + ")" * 20,
    "Mul(" + ", ".join([SIZE_SYMBOL] * 60) + ")",
    "Symbol('s1'\n)",
])
def test_expressions_outside_the_grammar_are_refused(text: str) -> None:
    with pytest.raises(ExpressionError):
        check_expression(text)


@pytest.mark.parametrize("text", [
    SIZE_SYMBOL,
    "Symbol('u0', integer=True)",
    "Add(Mul(Integer(2), Symbol('s16', positive=True, integer=True)), Symbol('u0', integer=True))",
    "Mul(Integer(16), Max(Integer(1), Symbol('u2', integer=True)))",
    "FloorDiv(Symbol('s0', positive=True, integer=True), Integer(-2))",
    "Eq(Mod(Symbol('s0', positive=True, integer=True), Integer(2)), Integer(0))",
    "And(StrictLessThan(Integer(1), Symbol('s3', positive=True, integer=True)), true)",
])
def test_expressions_torch_emits_for_sizes_are_accepted(text: str) -> None:
    check_expression(text)
    sympy.sympify(text)  # and they mean something to sympy


@pytest.mark.parametrize(("target", "reason"), [
    ("torch.ops.aten.from_file.default", "reads or writes files"),
    ("torch.ops.aten._print.default", "reads or writes files"),
    ("torch.ops.aten.save.default", "reads or writes files"),
    ("torch.ops.aten.rand.default", "random"),
    ("torch.ops.aten.bernoulli.p", "random"),
    ("torch.ops.aten.normal_.default", "random"),
    ("torch.ops.aten.native_dropout.default", "random"),
    ("torch.ops.aten.set_.source_Tensor", "in place"),
    ("torch.ops.aten.as_strided.default", "raw memory"),
])
def test_file_random_and_in_place_operators_are_refused_by_name(version_dir: Path, target: str, reason: str) -> None:
    def call(program: dict) -> None:
        node_named(program, "relu")["target"] = target

    edit_program(version_dir, call)
    with pytest.raises(ArtifactError, match=f"{target}.*refused: it .*{reason}"):
        load_artifact(version_dir)


def test_refusal_by_name_wins_over_the_allow_list(monkeypatch: pytest.MonkeyPatch) -> None:
    """Someone adding aten.from_file to the allow-list later still gets it refused."""
    monkeypatch.setattr("service.store.operators.ALLOWED_OPERATORS", ALLOWED_OPERATORS | {"aten.from_file"})
    with pytest.raises(OperatorError, match="reads or writes files"):
        check_target("torch.ops.aten.from_file.default")


def test_the_allow_list_holds_no_refused_operator() -> None:
    assert not {op.split(".")[1] for op in ALLOWED_OPERATORS} & set(REFUSED_OPERATORS)


@pytest.mark.parametrize("target", [
    "builtins.exec",
    "os.system",
    "math.factorial",
    "torch.load",
    "#fancy:op",
    "torch.ops.aten.add.Tensor.__class__",
    "torch.ops.aten.add.__globals__",
    "torch.ops.aten.__class__.__base__.mro",
    "torch.ops.aten.linear.__call__",
    "torch.sym_max.__globals__",
    "_operator.attrgetter",
    "_operator.pow",
    "torch.ops.aten.add.out",
    "torch.ops.aten.add.Scalar_out",
    "torch.ops.aten.add.NoSuchOverload",
    "torch.ops.aten.unknown_op.default",
    "torch.ops.custom.anything.default",
    "torch.ops.higher_order.invoke_subgraph.default",
])
def test_targets_outside_the_allow_list_are_refused(version_dir: Path, target: str) -> None:
    def call(program: dict) -> None:
        node_named(program, "relu")["target"] = target

    edit_program(version_dir, call)
    with pytest.raises(ArtifactError, match="operator"):
        load_artifact(version_dir)


def test_an_operator_passed_as_an_argument_is_checked(version_dir: Path) -> None:
    def pass_operator(program: dict) -> None:
        node_named(program, "relu")["inputs"].append(
            {"name": "fn", "arg": {"as_operator": "torch.ops.aten.from_file.default"}, "kind": 2})

    edit_program(version_dir, pass_operator)
    with pytest.raises(ArtifactError, match="from_file"):
        load_artifact(version_dir)


def test_a_bad_operator_inside_a_nested_graph_is_refused(version_dir: Path) -> None:
    def nest(program: dict) -> None:
        inner = operator_node("torch.ops.aten.from_file.default", "leak",
                              [{"name": "filename", "arg": {"as_string": "/etc/passwd"}, "kind": 1}])
        node_named(program, "relu")["inputs"].append(nested_graph_argument(inner))

    edit_program(version_dir, nest)
    with pytest.raises(ArtifactError, match="from_file"):
        load_artifact(version_dir)


@pytest.mark.parametrize("metadata", [
    {"stack_trace": "File x"},
    {"nn_module_stack": "a,b,torch.nn.Module.__subclasses__"},
    {"custom": "[[[[]]]]"},
])
def test_node_metadata_is_refused(version_dir: Path, metadata: dict) -> None:
    """torch parses metadata (JSON, getattr chains on torch.nn); stored programs never carry any."""
    edit_program(version_dir, lambda program: nodes(program)[0].update(metadata=metadata))
    with pytest.raises(ArtifactError, match="metadata"):
        load_artifact(version_dir)


def test_a_call_signature_naming_other_python_types_is_refused(version_dir: Path) -> None:
    def retype(program: dict) -> None:
        call_graph = program["graph_module"]["module_call_graph"][0]["signature"]
        call_graph["in_spec"] = call_graph["in_spec"].replace("builtins.tuple", "os.system", 1)

    edit_program(version_dir, retype)
    with pytest.raises(ArtifactError, match="in_spec uses type 'os.system'"):
        load_artifact(version_dir)


def test_custom_objects_are_refused(version_dir: Path) -> None:
    def add_object(program: dict) -> None:
        node_named(program, "relu")["inputs"].append(
            {"name": "obj", "arg": {"as_custom_obj": {"name": "x", "class_fqn": "os.system"}}, "kind": 2})

    edit_program(version_dir, add_object)
    with pytest.raises(ArtifactError, match="custom"):
        load_artifact(version_dir)


@pytest.mark.parametrize("where", ["graph", "signature", "call_graph"])
def test_names_anywhere_in_the_program_must_be_identifiers(version_dir: Path, marker: Path, where: str) -> None:
    """fx writes value and input names into the Python source it generates for the module."""
    injected = f"x=__import__('os').system('touch {marker}')"

    def rename(program: dict) -> None:
        graph_module = program["graph_module"]
        if where == "graph":
            node_named(program, "relu")["outputs"][0]["as_tensor"]["name"] = injected
        elif where == "signature":
            graph_module["signature"]["input_specs"][0]["parameter"]["arg"]["name"] = injected
        else:
            graph_module["module_call_graph"][0]["signature"]["forward_arg_names"] = [injected]

    edit_program(version_dir, rename)
    with pytest.raises(ArtifactError, match="is not an identifier"):
        load_artifact(version_dir)
    assert not marker.exists()


def test_packaging_a_model_whose_export_calls_an_operator_outside_the_allow_list_names_it(tmp_path: Path) -> None:
    """The allow-list is enforced when writing too: the packager hears which operator to add (with a reason)."""
    from torch import nn

    from service.features.schema import FeatureSchema, FeatureSpec
    from service.store import PackageError, package

    class ErfinvRanker(nn.Module):
        def forward(self, features: dict) -> torch.Tensor:
            return torch.sigmoid(torch.special.erfinv(features["item_dense"].clamp(-0.5, 0.5)).sum(1))

    schema = FeatureSchema((FeatureSpec("user_id", "user", "sparse_id", vocab_size=5),
                            FeatureSpec("item_dense", "item", "dense", dim=3)))
    with pytest.raises(PackageError, match=r"'torch.ops.aten.special_erfinv.default' is not in the allow-list"):
        package(ErfinvRanker(), schema.example_batch(8), schema, tasks=["score"], store=tmp_path, name="erfinv")
    assert not (tmp_path / "erfinv").exists()
