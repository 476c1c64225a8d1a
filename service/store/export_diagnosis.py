"""Why torch.export refused a model, said as the line of the user's code at fault and the likely fix.

Export's own errors name the symptom ("Constraints violated (candidates)!", "Could not guard on data-dependent
expression") and not the line. On a refusal, the model is traced once more with `torch.export.draft_export`,
which records, for every guard it had to add and every data-dependent branch it met, the user's stack at that
moment. Two causes cover most refusals of a ranker, and each has a known fix:

- the candidate batch written as a constant (`x.view(8, -1)`, `torch.zeros(8, 1)`): export ties the batch to
  the example's size; the fix reads it from the input (`x.size(0)`, `-1`, `torch.zeros_like`);
- control flow on tensor values (`if x.sum() > 0:`, `int(t.item())`): one program cannot branch per request;
  the fix computes both sides and selects (`torch.where`), or moves the decision out of the model.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import sympy
import torch

_TORCH_DIR = os.path.dirname(torch.__file__)
_THIS_PROJECT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))  # service/: our adapters, not theirs
_SYMBOL = re.compile(r"^s\d+$")  # export's names for input sizes (s35); u0 / zuf0 are data-dependent values

CONSTANT_BATCH_FIX = ("read the batch from the input instead of writing it: x.size(0), -1 in view/reshape "
                      "(x.view(-1, d)), torch.zeros_like(x) or x.new_zeros(x.size(0), d)")
DATA_DEPENDENT_FIX = ("a served program cannot branch on tensor values per request: compute both sides and pick "
                      "with torch.where(condition, a, b), or make the decision outside the model")


@dataclass(frozen=True)
class ExportDiagnosis:
    """The user's line at fault (file:line and its code) and what to change there."""

    cause: str
    where: str
    fix: str

    def sentence(self) -> str:
        return f"{self.cause} at {self.where}: {self.fix}"


def diagnose_export(model: torch.nn.Module, args: tuple[Any, ...], dynamic_shapes: Any) -> ExportDiagnosis | None:
    """Trace `model` again with draft_export and name the first failure that has a user line; None when the
    draft trace finds none (the caller then shows export's own message alone)."""
    try:
        program = torch.export.draft_export(model, args, dynamic_shapes=dynamic_shapes, strict=False)
        report = program._report  # type: ignore[attr-defined]  # draft_export attaches its findings here
    except Exception:  # noqa: BLE001 - a diagnosis is best effort; the refusal itself already stands
        return None
    for failure in report.failures:
        data = failure.data if isinstance(failure.data, Mapping) else {}
        where = user_line(data.get("user_stack") or [], _filenames(report.str_to_filename))
        if where is None:
            continue
        kind = getattr(failure.failure_type, "name", str(failure.failure_type))
        if kind == "DATA_DEPENDENT_ERROR":
            return ExportDiagnosis("control flow on tensor values", where, DATA_DEPENDENT_FIX)
        constant = batch_constant(str(data.get("expr", "")))
        if kind == "GUARD_ADDED" and constant is not None:
            return ExportDiagnosis(f"the candidate batch is written as a constant ({constant})", where,
                                   CONSTANT_BATCH_FIX)
    return None


def _filenames(reported: Mapping[int, str]) -> dict[int, str]:
    """Stack frames name files by id; draft_export's table holds only files first seen during its own trace (torch
    interns each name once per process), so the process-wide table fills the rest."""
    from torch._logging.structured import INTERN_TABLE

    return {**{index: name for name, index in INTERN_TABLE.items()}, **reported}


def user_line(stack: Sequence[Mapping[str, Any]], filenames: Mapping[int, str]) -> str | None:
    """`file:line (code)` of the innermost frame outside torch and this project: the user's model or adapter."""
    for frame in reversed(stack):
        filename = filenames.get(frame.get("filename"), str(frame.get("filename")))  # type: ignore[arg-type]
        path = os.path.abspath(filename)
        if path.startswith(_TORCH_DIR) or path.startswith(_THIS_PROJECT):
            continue
        code = str(frame.get("loc", "")).strip()
        return f"{filename}:{frame.get('line')}" + (f" ({code})" if code else "")
    return None


def batch_constant(expression: str) -> int | None:
    """The constant an input size was tied to by a guard like Eq(s35, 8) or Eq(8*s35, 64); None for any other
    guard (two sizes made equal, a bound)."""
    if not expression.startswith("Eq("):
        return None
    try:
        guard = sympy.sympify(expression)
    except (sympy.SympifyError, SyntaxError, TypeError):
        return None
    symbols = list(guard.free_symbols) if isinstance(guard, sympy.Equality) else []
    if len(symbols) != 1 or not _SYMBOL.match(str(symbols[0])):
        return None
    solutions = sympy.solve(guard, symbols[0])
    return int(solutions[0]) if len(solutions) == 1 and solutions[0].is_Integer else None
