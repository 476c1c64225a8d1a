"""JSON from an untrusted file, with its size and nesting bounded before the parser sees it.

Python's json module recurses once per nesting level (a document nested 100,000 deep raises RecursionError,
deep enough can exhaust the C stack) and accepts NaN/Infinity, which no artifact field may hold. So the bytes
are measured and their bracket depth counted (outside strings) first, and non-finite literals are refused.
"""

from __future__ import annotations

import json
import re
from itertools import accumulate
from typing import Any

MAX_MANIFEST_BYTES = 1 << 20  # model.json: names, schema, metrics; real ones are a few KB
MAX_PROGRAM_BYTES = 16 << 20  # program.json: the exported graph; the default model's is 130 KB
MAX_JSON_DEPTH = 64  # real programs nest ~12 deep (graph_module.graph.nodes[].inputs[].arg.as_tensors[])

_STRING = re.compile(rb'"(?:[^"\\]|\\.)*"', re.DOTALL)  # a JSON string, escapes included
_OPEN = frozenset(b"[{")
_NOT_BRACKETS = bytes(byte for byte in range(256) if byte not in b"[]{}")


class JsonBoundError(ValueError):
    """The document is too large, nested too deep, or not JSON; the message says which and the bound."""


def loads_bounded(data: bytes, *, max_bytes: int, max_depth: int, what: str) -> Any:
    """`json.loads(data)` once `data` is at most `max_bytes` long and nests at most `max_depth` deep."""
    if len(data) > max_bytes:
        raise JsonBoundError(f"{what} is {len(data)} bytes, more than the {max_bytes} allowed")
    depth = json_depth(data)
    if depth > max_depth:
        raise JsonBoundError(f"{what} nests deeper than {max_depth} levels")
    try:
        return json.loads(data, parse_constant=_refuse_constant)
    except (UnicodeDecodeError, json.JSONDecodeError) as error:
        raise JsonBoundError(f"{what} is not valid JSON ({error})") from error


def json_depth(data: bytes) -> int:
    """Deepest bracket nesting of `data`, brackets inside strings not counted (linear, at C speed)."""
    brackets = _STRING.sub(b"", data).translate(None, _NOT_BRACKETS)
    return max(accumulate(1 if byte in _OPEN else -1 for byte in brackets), default=0)


def _refuse_constant(name: str) -> Any:
    raise JsonBoundError(f"{name} is not a finite number; JSON artifacts hold finite numbers only")
