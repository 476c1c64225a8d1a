"""Which operators a stored program may call: an explicit allow-list, not namespaces.

A namespace is too wide to trust: `aten` holds `from_file` (reads any server file) and `save`, and torch's
deserializer resolves a target by a chain of getattr (`torch.ops.aten.x.__class__...`). So a target must be
exactly `torch.ops.<namespace>.<op>.<overload>` with its op in ALLOWED_OPERATORS, an overload that exists
and mutates nothing, or one of the few Python-level size functions below. The set is what torch.export
(then `run_decompositions({})`) emits for every model the test suite stores or captures (the six built-in
architectures, tests/engine/reference_models.py, the DeepCTR/DLRM conventions, tests/engine/torchrec_models.py,
tests/store/my_ranker.py: 56 targets) plus their obvious siblings. Operators with file, random, printing or
in-place effects are refused by name, with the reason, even if someone adds them to the set.
"""

from __future__ import annotations

import re

import torch

_POINTWISE = {
    "abs", "add", "sub", "rsub", "mul", "div", "neg", "reciprocal", "sqrt", "rsqrt", "exp", "expm1", "log",
    "log1p", "log2", "log10", "pow", "square", "sign", "floor", "ceil", "round", "trunc", "frac", "remainder",
    "fmod", "floor_divide", "maximum", "minimum", "clamp", "clamp_min", "clamp_max", "clip", "where",
    "masked_fill", "lerp", "addcmul", "addcdiv", "erf", "sin", "cos", "tan", "atan", "atan2",
    "eq", "ne", "lt", "le", "gt", "ge", "logical_and", "logical_or", "logical_not", "logical_xor",
    "bitwise_and", "bitwise_or", "bitwise_not", "bitwise_xor", "__and__", "__or__", "__xor__", "__invert__",
    "isnan", "isinf", "isfinite", "nan_to_num",
}
_ACTIVATIONS = {
    "relu", "relu6", "leaky_relu", "elu", "selu", "celu", "gelu", "silu", "mish", "sigmoid", "tanh", "hardtanh",
    "hardsigmoid", "hardswish", "softplus", "logsigmoid", "prelu", "glu", "threshold",
    "softmax", "log_softmax", "_softmax", "_log_softmax",
}
_LINEAR_ALGEBRA = {"mm", "bmm", "addmm", "baddbmm", "matmul", "linear", "dot", "einsum", "t", "addmv", "mv"}
_NORMALIZATION = {"layer_norm", "native_layer_norm", "batch_norm", "_native_batch_norm_legit_no_training",
                  "group_norm", "native_group_norm"}
_LOOKUPS = {"embedding", "embedding_bag", "_embedding_bag", "index", "index_select", "gather", "take_along_dim"}
_REDUCTIONS = {"sum", "mean", "prod", "amax", "amin", "max", "min", "argmax", "argmin", "cumsum", "cumprod",
               "norm", "linalg_vector_norm", "var", "std", "any", "all", "logsumexp", "topk", "sort"}
_SHAPES = {
    "view", "_unsafe_view", "reshape", "expand", "expand_as", "permute", "transpose", "slice", "select",
    "narrow", "cat", "stack", "split", "split_with_sizes", "chunk", "unbind", "squeeze", "unsqueeze", "flatten",
    "unflatten", "contiguous", "clone", "alias", "detach", "repeat", "tile", "flip", "roll", "tril", "triu",
    "diagonal", "sym_size", "sym_numel", "sym_stride", "item", "_local_scalar_dense",
}
_CREATION = {"full", "full_like", "zeros", "zeros_like", "ones", "ones_like", "empty", "empty_like", "new_zeros",
             "new_ones", "new_full", "new_empty", "arange", "scalar_tensor", "_to_copy", "to", "type_as",
             "triu_indices", "tril_indices", "_assert_tensor_metadata", "_assert_scalar"}
ALLOWED_OPERATORS = frozenset(
    {f"aten.{op}" for op in _POINTWISE | _ACTIVATIONS | _LINEAR_ALGEBRA | _NORMALIZATION | _LOOKUPS | _REDUCTIONS
     | _SHAPES | _CREATION}
    # torchrec's jagged tensors as tests/engine/torchrec_models.py's models export them
    | {"fbgemm.asynchronous_complete_cumsum", "fbgemm.jagged_to_padded_dense", "fbgemm.dense_to_jagged",
       "fbgemm.jagged_2d_to_dense"}
)
# Python-level arithmetic on sizes (export writes `_operator.mul(sym_size, 4)`); no pow: unbounded values.
ALLOWED_PYTHON_FUNCTIONS = frozenset(
    {f"_operator.{name}" for name in ("add", "sub", "mul", "floordiv", "mod", "neg", "truediv", "eq", "ne", "lt",
                                      "le", "gt", "ge", "and_", "or_", "not_")}
    | {f"torch.{name}" for name in ("sym_max", "sym_min", "sym_not", "sym_float", "sym_int", "sym_ite")}
)
# Refused whatever the allow-list says: what an inference graph must never do.
REFUSED_OPERATORS: dict[str, str] = {
    **{op: "reads or writes files" for op in ("from_file", "save", "load", "_load", "to_file", "read",
                                              "_print", "print", "_save")},
    **{op: "draws random numbers from global state" for op in (
        "rand", "rand_like", "randn", "randn_like", "randint", "randint_like", "randperm", "normal", "bernoulli",
        "multinomial", "uniform", "exponential", "geometric", "cauchy", "log_normal", "random", "poisson",
        "dropout", "native_dropout", "feature_dropout", "alpha_dropout", "feature_alpha_dropout", "rrelu")},
    **{op: "changes tensors in place or reads raw memory" for op in (
        "set", "resize", "resize_as", "record_stream", "as_strided", "as_strided_scatter", "copy_", "set_",
        "resize_", "_copy_from", "_make_per_tensor_quantized_tensor", "from_blob")},
}
_IDENTIFIER = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
_PUBLIC = re.compile(r"^[A-Za-z][A-Za-z0-9_]*$")


class OperatorError(ValueError):
    """A program calls an operator it may not; the message names the target and the reason."""


def check_target(target: object) -> None:
    """Refuse `target` unless it is an allowed operator (see the module docstring)."""
    if not isinstance(target, str):
        raise OperatorError(f"operator target must be a string, got {type(target).__name__}")
    if target in ALLOWED_PYTHON_FUNCTIONS:
        return
    parts = target.split(".")
    if len(parts) != 5 or parts[:2] != ["torch", "ops"] or not all(_IDENTIFIER.match(part) for part in parts):
        raise OperatorError(f"operator {target[:200]!r} is not torch.ops.<namespace>.<op>.<overload> of "
                            f"identifiers, nor an allowed size function")
    namespace, op, overload = parts[2:]
    refused = REFUSED_OPERATORS.get(op) or REFUSED_OPERATORS.get(op.rstrip("_"))
    if refused:
        raise OperatorError(f"operator {target!r} is refused: it {refused}")
    if f"{namespace}.{op}" not in ALLOWED_OPERATORS:
        raise OperatorError(f"operator {target!r} is not in the allow-list of service/store/operators.py")
    if not _PUBLIC.match(overload) or overload == "out" or overload.endswith("_out"):
        raise OperatorError(f"operator {target!r}: overload {overload!r} is private or writes into its argument")
    _check_overload(target, namespace, op, overload)


def _check_overload(target: str, namespace: str, op: str, overload: str) -> None:
    """The overload exists and mutates none of its arguments (out= and in-place forms write into tensors)."""
    if namespace == "fbgemm":
        _import_fbgemm()
    packet = getattr(getattr(torch.ops, namespace), op, None)
    if packet is None or overload not in packet.overloads():
        raise OperatorError(f"operator {target!r} does not exist in this torch")
    if getattr(packet, overload)._schema.is_mutable:
        raise OperatorError(f"operator {target!r} is refused: it writes into its arguments")


def _import_fbgemm() -> None:
    """fbgemm's operators (torchrec's jagged ops) exist only once its package is imported."""
    try:
        import fbgemm_gpu  # noqa: F401  (registers torch.ops.fbgemm)
    except ImportError as error:
        raise OperatorError("the program calls torch.ops.fbgemm operators; install fbgemm-gpu-cpu to serve it "
                            f"({error})") from error
