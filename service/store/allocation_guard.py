"""Bounds on what a stored program allocates, measured while the loader runs it on its example call.

Literal shapes are bounded in the document (service.store.program_document), but a shape can also be
computed at run time (`full([sym_size * 2**31])`, sizes read from data with `item()`), which no static check
sees. So the load-time call runs under a dispatch mode that works out each operator's output shape on the
meta device (no memory) first and refuses the operator before it runs if an output would exceed the bound.
The mode also records every output's size, so `check_affine_growth` can tell, from the example tiled 1, 2
and 3 times, that no operator grows faster than linearly with the candidates (`full([n * n])` passes any
bound at the example's few rows and exhausts memory at a thousand).
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten, tree_map

MAX_OUTPUT_ELEMENTS = 1 << 26  # per operator output on the example call (a few rows), unless a weight is larger


class AllocationRefused(RuntimeError):
    """An operator of the program would allocate more than the bound; the message names it and the size."""


class AllocationGuard(TorchDispatchMode):  # type: ignore[no-untyped-call]
    """Refuses any operator whose output would hold more than `max_elements` elements."""

    def __init__(self, max_elements: int) -> None:
        super().__init__()  # type: ignore[no-untyped-call]
        self.max_elements = max_elements
        self.outputs: list[tuple[str, int]] = []  # (operator, elements of its outputs), in call order

    def __torch_dispatch__(self, func: Any, types: Any, args: Any = (), kwargs: Any = None) -> Any:
        kwargs = kwargs or {}
        names = [argument.name for argument in func._schema.arguments]
        creates = "device" in names  # a factory (zeros, full, arange, _to_copy...) allocates where `device` says
        try:  # the mode is off inside this method: these meta calls allocate nothing and are not intercepted
            meta_args, meta_kwargs = tree_map(_to_meta, (list(args), kwargs))
            for name, value in (("device", torch.device("meta")), ("pin_memory", False)):
                if name in names and names.index(name) < len(meta_args):
                    meta_args[names.index(name)] = value
                elif name in names:
                    meta_kwargs[name] = value
            predicted = func(*meta_args, **meta_kwargs)
        except Exception as error:  # no meta kernel, or a size read from data: checked after the call instead
            if creates:  # ... except for a factory, whose allocation is the call itself
                raise AllocationRefused(f"operator {func}: cannot bound what it allocates ({error})"[:300]) from error
            predicted = None
        if predicted is not None:
            self._check(func, predicted)
        result = func(*args, **kwargs)
        self._check(func, result)
        self.outputs.append((str(func), sum(t.numel() for t in tree_flatten(result)[0] if isinstance(t, torch.Tensor))))
        return result

    def _check(self, func: Any, output: Any) -> None:
        for tensor in tree_flatten(output)[0]:
            if isinstance(tensor, torch.Tensor) and tensor.numel() > self.max_elements:
                raise AllocationRefused(f"operator {func} would produce a tensor of shape {list(tensor.shape)} "
                                        f"({tensor.numel():.3g} elements), more than the {self.max_elements} "
                                        "allowed on the example call")


def check_affine_growth(runs: list[list[tuple[str, int]]]) -> None:
    """`runs`: the guard's records for the example tiled 1, 2 and 3 times. Each operator's output size must be
    a + b * copies (its second difference zero): sizes linear in the candidates, as row-wise ranking is."""
    once, twice, thrice = runs
    if not len(once) == len(twice) == len(thrice):
        raise AllocationRefused(f"the program calls {len(once)}, {len(twice)} and {len(thrice)} operators for 1, 2 "
                                "and 3 copies of the example; a stored graph calls the same ones at any batch")
    for (op, size1), (_, size2), (_, size3) in zip(once, twice, thrice):
        if size3 - 2 * size2 + size1 != 0:
            raise AllocationRefused(f"operator {op} produces {size1}, {size2}, {size3} elements for 1, 2, 3 copies "
                                    "of the example: its size grows faster than linearly with the candidates")


def output_bound(tensors: dict[str, torch.Tensor]) -> int:
    """MAX_OUTPUT_ELEMENTS, or the largest stored tensor if larger (a model may copy or cast a whole table)."""
    return max([MAX_OUTPUT_ELEMENTS, *(math.prod(tensor.shape) for tensor in tensors.values())])


def _to_meta(value: Any) -> Any:
    return value.to("meta") if isinstance(value, torch.Tensor) else value
