"""pydantic's validation errors read one way: the problems, the field each names, and the client's error.

Every door that validates input with pydantic (POST /rank's codec, the admin bodies, the Open Inference
Protocol header and parameters, serving.json, the RANKER_* settings) reports a bad field through this module,
so a field path is written the same everywhere (`candidates.item_id[3]`), a validator's own message is shown
without pydantic's "Value error, " prefix, and the input itself is never echoed (it may be anything, or a
secret). What each door adds is its own wording and error codes, on top of `Problem`.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from pydantic import ValidationError

from service.serving.errors import InvalidRequest, MalformedRequest

VALUE_ERROR_PREFIX = "Value error, "  # pydantic's prefix for a validator's ValueError
# at the top level, a pydantic model given something else than an object (a TypedDict's `dict_type` stays an
# invalid_type error: POST /rank documents `42` as 422 invalid_type)
NOT_AN_OBJECT = ("model_type",)


@dataclass(frozen=True)
class Problem:
    """One validation error: pydantic's type (`missing`, `json_invalid`...), where, and its message."""

    kind: str
    loc: tuple[str | int, ...]
    message: str
    given: str | None = None  # repr of the input, only when asked for (an operator's own file, never a request)

    @property
    def field(self) -> str | None:
        """The field path, `a.b[3].c`; None for the input as a whole."""
        return field_path(self.loc)

    @property
    def is_json_error(self) -> bool:
        return self.kind == "json_invalid"

    @property
    def is_not_an_object(self) -> bool:
        return not self.loc and self.kind in NOT_AN_OBJECT


def problems(exc: ValidationError, echo_chars: int = 0) -> list[Problem]:
    """Every error of `exc`, in pydantic's order; with `echo_chars`, the input's repr cut to that length."""
    return [Problem(error["type"], tuple(error["loc"]), str(error["msg"]).removeprefix(VALUE_ERROR_PREFIX),
                    repr(error.get("input"))[:echo_chars] if echo_chars else None)
            for error in exc.errors(include_url=False, include_input=echo_chars > 0, include_context=False)]


def field_path(loc: Sequence[Any]) -> str | None:
    """`("candidates", "item_id", 3)` -> `candidates.item_id[3]`; None for an empty location."""
    path = ""
    for part in loc:
        path += f"[{part}]" if isinstance(part, int) else (f".{part}" if path else str(part))
    return path or None


def request_error(
    exc: ValidationError, what: str = "body", code_of: Callable[[Problem], str] = lambda problem: "invalid_value",
) -> MalformedRequest | InvalidRequest:
    """The client's error for a request part (`what`) that failed validation: MalformedRequest when it is not
    JSON or not a JSON object, else InvalidRequest naming the first field at fault, with `code_of`'s code."""
    found = problems(exc)
    broken = next((problem for problem in found if problem.is_json_error), None)
    if broken is not None:
        return MalformedRequest(f"{what} is not valid JSON: {broken.message}")
    first = found[0]
    if first.is_not_an_object:
        return MalformedRequest(f"{what} must be a JSON object")
    return InvalidRequest(f"{first.field or what}: {first.message}", field=first.field, code=code_of(first))
