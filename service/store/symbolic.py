"""The grammar of symbolic sizes a stored program may hold, checked before torch hands them to sympy.

torch's deserializer passes every `expr_str` (sizes, sym_int/sym_bool values, hints' expressions) to
`sympy.sympify`, which evaluates Python: `__import__('os').system(...)` in an expression runs on load. An
expression here is parsed with `ast` (parsing runs nothing) and accepted only if it is a call tree of the
few constructors torch's printer (`srepr`) emits for ranking models, with bounded integers and no powers,
so sympy only ever sees what this module has proven harmless.
"""

from __future__ import annotations

import ast
import re

MAX_EXPRESSION_CHARS = 2000  # the longest real one is ~90 characters
MAX_EXPRESSION_DEPTH = 12  # calls inside calls; real ones nest 3 deep
MAX_EXPRESSION_INT = 1 << 40  # integer literals in sizes: multipliers and offsets, never this large
# Size symbols (s<N>, the dynamic batch and its relatives) and unbacked ones read from data (u<N>); torch
# loops up to the highest unbacked index on load, so the index is bounded too.
SYMBOL_NAME = re.compile(r"^[su](0|[1-9][0-9]{0,3})$")
# srepr's constructors for integer sizes and the conditions on them (no Pow/PowByNatural: unbounded values).
CONSTRUCTORS = frozenset({
    "Integer", "Symbol", "Add", "Mul", "Max", "Min", "FloorDiv", "CeilDiv", "Mod", "PythonMod", "CeilToInt",
    "FloorToInt", "Eq", "Ne", "StrictLessThan", "LessThan", "StrictGreaterThan", "GreaterThan", "And", "Or",
    "Not",
})
CONSTANTS = frozenset({"true", "false"})  # sympy's boolean atoms as srepr prints them
SYMBOL_ASSUMPTIONS = frozenset({"integer", "positive", "nonnegative", "negative", "nonpositive", "real", "finite"})
_CHARACTERS = re.compile(r"^[A-Za-z0-9_(),=' -]*$")  # what the grammar can need; no quotes of other kinds,
# no backslashes, dots or comment signs whose meaning could differ between ast and sympy's tokenizer


class ExpressionError(ValueError):
    """A symbolic expression is outside the grammar; the message names the part refused and why."""


def check_expression(text: object) -> None:
    """Refuse `text` unless it is a size expression of the grammar above (see the module docstring)."""
    if not isinstance(text, str):
        raise ExpressionError(f"expression must be a string, got {type(text).__name__}")
    if len(text) > MAX_EXPRESSION_CHARS:
        raise ExpressionError(f"expression is {len(text)} characters, more than {MAX_EXPRESSION_CHARS}")
    if not _CHARACTERS.match(text):
        raise ExpressionError(f"expression {text[:80]!r} has characters outside {_CHARACTERS.pattern}")
    try:
        tree = ast.parse(text, mode="eval")
    except (SyntaxError, ValueError, RecursionError, MemoryError) as error:
        raise ExpressionError(f"expression {text[:80]!r} does not parse ({type(error).__name__})") from error
    _check_node(tree.body, text, 1)


def check_symbol_name(name: object) -> None:
    if not isinstance(name, str) or not SYMBOL_NAME.match(name):
        raise ExpressionError(f"symbol name {str(name)[:80]!r} must match {SYMBOL_NAME.pattern}")


def _check_node(node: ast.expr, text: str, depth: int) -> None:
    if depth > MAX_EXPRESSION_DEPTH:
        raise ExpressionError(f"expression {text[:80]!r} nests deeper than {MAX_EXPRESSION_DEPTH} calls")
    if isinstance(node, ast.Name) and node.id in CONSTANTS:
        return
    if not isinstance(node, ast.Call) or not isinstance(node.func, ast.Name):
        raise ExpressionError(f"expression {text[:80]!r}: {ast.unparse(node)[:80]!r} is not a call of "
                              f"one of {sorted(CONSTRUCTORS)}")
    name = node.func.id
    if name not in CONSTRUCTORS:
        raise ExpressionError(f"expression {text[:80]!r} calls {name!r}, not one of {sorted(CONSTRUCTORS)}")
    if name == "Symbol":
        _check_symbol(node, text)
    elif name == "Integer":
        if len(node.args) != 1 or node.keywords:
            raise ExpressionError(f"expression {text[:80]!r}: Integer takes one integer literal")
        _check_int(node.args[0], text)
    else:
        if node.keywords or not node.args:
            raise ExpressionError(f"expression {text[:80]!r}: {name} takes expressions, no keywords")
        for argument in node.args:
            _check_node(argument, text, depth + 1)


def _check_symbol(node: ast.Call, text: str) -> None:
    if len(node.args) != 1 or not isinstance(node.args[0], ast.Constant):
        raise ExpressionError(f"expression {text[:80]!r}: Symbol takes one name literal")
    check_symbol_name(node.args[0].value)
    for keyword in node.keywords:
        value = keyword.value
        if keyword.arg not in SYMBOL_ASSUMPTIONS or not (isinstance(value, ast.Constant) and
                                                         isinstance(value.value, bool)):
            raise ExpressionError(f"expression {text[:80]!r}: Symbol takes only boolean assumptions "
                                  f"{sorted(SYMBOL_ASSUMPTIONS)}, got {ast.unparse(keyword)[:80]!r}")


def _check_int(node: ast.expr, text: str) -> None:
    if isinstance(node, ast.UnaryOp) and isinstance(node.op, ast.USub):
        node = node.operand
    if not isinstance(node, ast.Constant) or type(node.value) is not int:
        raise ExpressionError(f"expression {text[:80]!r}: Integer takes an integer literal")
    if node.value > MAX_EXPRESSION_INT:
        raise ExpressionError(f"expression {text[:80]!r}: integer {node.value} exceeds {MAX_EXPRESSION_INT}")
