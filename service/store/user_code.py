"""`ranker package file.py:function`: run the user's build function (their code, their trust) once."""

from __future__ import annotations

import importlib.util
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any

PACKAGE_ARGUMENTS = ("model", "example_features", "schema")


class UserCodeError(ValueError):
    """The build function cannot be found or returned something package() cannot take."""


def call_build_function(reference: str) -> tuple[Any, Any, Any, dict[str, Any]]:
    """(model, example_features, schema, other package() options) from `path/to/file.py:function`."""
    path_text, _, function_name = reference.rpartition(":")
    if not path_text or not function_name:
        raise UserCodeError(f"{reference!r}: expected path/to/file.py:function")
    path = Path(path_text)
    if not path.is_file():
        raise UserCodeError(f"{path}: no such file")
    spec = importlib.util.spec_from_file_location(f"ranker_user_build_{path.stem}", path)
    if spec is None or spec.loader is None:
        raise UserCodeError(f"{path}: not a Python file")
    module = importlib.util.module_from_spec(spec)
    sys.path.insert(0, str(path.parent.resolve()))  # the user's file may import its neighbours
    try:
        sys.modules[spec.name] = module
        spec.loader.exec_module(module)
    finally:
        sys.path.pop(0)
    build = getattr(module, function_name, None)
    if not callable(build):
        raise UserCodeError(f"{path} has no function {function_name!r}")
    return _unpack(build(), reference)


def _unpack(result: Any, reference: str) -> tuple[Any, Any, Any, dict[str, Any]]:
    if isinstance(result, Mapping):
        options = dict(result)
        missing = [key for key in PACKAGE_ARGUMENTS if key not in options]
        if missing:
            raise UserCodeError(f"{reference} returned a dict without {missing}")
        return options.pop("model"), options.pop("example_features"), options.pop("schema"), options
    if isinstance(result, tuple) and len(result) in (3, 4):
        options = dict(result[3]) if len(result) == 4 else {}
        return result[0], result[1], result[2], options
    raise UserCodeError(f"{reference} must return (model, example_features, schema[, options]) or a dict, "
                        f"got {type(result).__name__}")
