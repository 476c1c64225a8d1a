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
    "__and__", "__invert__", "__or__", "__xor__", "abs", "acos", "acosh", "add", "addcdiv", "addcmul", "asin",
    "asinh", "atan", "atan2", "atanh", "bitwise_and", "bitwise_not", "bitwise_or", "bitwise_xor", "ceil", "clamp",
    "clamp_max", "clamp_min", "clip", "copy", "cos", "cosh", "div", "eq", "erf", "erfc", "exp", "exp2", "expm1",
    "fill", "floor", "floor_divide", "fmod", "frac", "ge", "gt", "hardshrink", "heaviside", "hypot", "isfinite",
    "isinf", "isnan", "le", "lerp", "lift_fresh_copy", "log", "log10", "log1p", "log2", "logaddexp",
    "logical_and", "logical_not", "logical_or", "logical_xor", "logit", "lt", "masked_fill", "maximum", "minimum",
    "mul", "nan_to_num", "ne", "neg", "pow", "reciprocal", "remainder", "round", "rsqrt", "rsub", "sign",
    "signbit", "sin", "sinh", "softshrink", "sqrt", "square", "sub", "tan", "trunc", "where", "xlogy",
}
_ACTIVATIONS = {
    "_log_softmax", "_softmax", "celu", "elu", "gelu", "glu", "hardsigmoid", "hardswish", "hardtanh",
    "leaky_relu", "log_softmax", "logsigmoid", "mish", "prelu", "relu", "relu6", "selu", "sigmoid", "silu",
    "softmax", "softplus", "tanh", "threshold",
}
# convolutions, recurrent layers and attention stay whole in export (DIEN-style GRUs, CNN feature
# generators, transformer behaviour encoders)
_LINEAR_ALGEBRA = {
    "_cdist_forward", "_convolution", "_native_multi_head_attention", "_scaled_dot_product_attention_math",
    "_scaled_dot_product_flash_attention_for_cpu", "_trilinear", "addmm", "addmv", "baddbmm", "bilinear", "bmm",
    "cdist", "conv1d", "conv2d", "convolution", "cross", "dot", "einsum", "gru", "gru_cell", "kron",
    "linalg_cross", "linear", "lstm", "lstm_cell", "matmul", "mm", "mv", "outer", "rnn_relu", "rnn_relu_cell",
    "rnn_tanh", "rnn_tanh_cell", "scaled_dot_product_attention", "t", "tensordot",
}
_NORMALIZATION = {
    "_batch_norm_impl_index", "_fused_rms_norm", "_native_batch_norm_legit",
    "_native_batch_norm_legit_no_training", "batch_norm", "cosine_similarity", "group_norm", "instance_norm",
    "layer_norm", "native_batch_norm", "native_group_norm", "native_layer_norm", "pairwise_distance", "rms_norm",
}
_LOOKUPS = {
    "_embedding_bag", "bucketize", "embedding", "embedding_bag", "embedding_renorm", "gather", "index",
    "index_add", "index_copy", "index_fill", "index_put", "index_select", "masked_scatter", "masked_select",
    "nonzero", "one_hot", "repeat_interleave", "scatter", "scatter_add", "scatter_reduce", "searchsorted", "take",
    "take_along_dim",
}
_REDUCTIONS = {
    "_adaptive_avg_pool2d", "adaptive_avg_pool1d", "adaptive_avg_pool2d", "adaptive_max_pool1d",
    "adaptive_max_pool2d", "all", "amax", "amin", "aminmax", "any", "argmax", "argmin", "avg_pool1d",
    "avg_pool2d", "count_nonzero", "cummax", "cummin", "cumprod", "cumsum", "kthvalue", "linalg_vector_norm",
    "logcumsumexp", "logsumexp", "max", "max_pool1d", "max_pool2d", "max_pool2d_with_indices", "mean", "median",
    "min", "nanmean", "nansum", "norm", "prod", "sort", "std", "std_mean", "sum", "topk", "var", "var_mean",
}
_SHAPES = {
    "_local_scalar_dense", "_unsafe_view", "alias", "broadcast_to", "cat", "chunk", "clone", "concat",
    "concatenate", "constant_pad_nd", "contiguous", "detach", "diag", "diag_embed", "diagonal", "expand",
    "expand_as", "expand_copy", "flatten", "flip", "hstack", "item", "moveaxis", "movedim", "narrow", "pad",
    "permute", "permute_copy", "reflection_pad1d", "repeat", "replication_pad1d", "reshape", "reshape_as", "roll",
    "select", "select_copy", "slice", "slice_copy", "split", "split_copy", "split_with_sizes", "squeeze",
    "squeeze_copy", "stack", "swapaxes", "swapdims", "sym_numel", "sym_size", "sym_stride", "t_copy",
    "tensor_split", "tile", "transpose", "transpose_copy", "tril", "triu", "unbind", "unbind_copy", "unflatten",
    "unfold", "unsqueeze", "unsqueeze_copy", "view", "view_as", "view_copy", "vstack",
}
_CREATION = {
    "_assert_scalar", "_assert_tensor_metadata", "_to_copy", "arange", "empty", "empty_like", "full", "full_like",
    "new_empty", "new_full", "new_ones", "new_zeros", "ones", "ones_like", "scalar_tensor", "to", "tril_indices",
    "triu_indices", "type_as", "zeros", "zeros_like",
}
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
