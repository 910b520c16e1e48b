"""Package indexes whose names import on first use (PEP 562), for packages whose modules need heavy imports
(torch) that some of their users never touch."""

from __future__ import annotations

import importlib
from typing import Any, Callable


def exports(
    package: str, where: dict[str, list[str]]
) -> tuple[Callable[[str], Any], Callable[[], list[str]], list[str]]:
    """`__getattr__`, `__dir__` and `__all__` for `package`, whose public names live in the submodules that
    `where` maps to them: `__getattr__, __dir__, __all__ = exports(__name__, {"checkpoint": ["load_generator"]})`."""
    module_of = {name: module for module, names in where.items() for name in names}
    namespace = importlib.import_module(package).__dict__
    namespace["_WHERE"] = module_of  # name -> submodule, for tests and the curious

    def __getattr__(name: str) -> Any:
        if name not in module_of:
            raise AttributeError(f"module {package!r} has no attribute {name!r}")
        value = getattr(importlib.import_module(f".{module_of[name]}", package), name)
        namespace[name] = value
        return value

    def __dir__() -> list[str]:
        return sorted(set(namespace) | set(module_of))

    return __getattr__, __dir__, sorted(module_of)
