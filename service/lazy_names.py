"""A package's names imported on first use (PEP 562's module `__getattr__`), so importing the package, or any of its
torch-free modules, does not import torch: service.engine and service.store use it (tests/store/test_versions.py).
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from typing import Any


def lazy_names(package: str, modules: dict[str, str]) -> Callable[[str], Any]:
    """The module `__getattr__` of `package`: each name of `modules` (name -> module that defines it) is imported
    from its module when first asked for; any other name is an AttributeError, as for a plain module."""

    def __getattr__(name: str) -> Any:
        if name in modules:
            return getattr(importlib.import_module(modules[name]), name)
        raise AttributeError(f"module {package!r} has no attribute {name!r}")

    return __getattr__
