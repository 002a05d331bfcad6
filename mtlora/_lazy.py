"""Package attributes imported on first use, so importing a package stays cheap.

``mtlora`` and ``mtlora.io`` name their public API at the top, but ``mtlora --help``,
``mtlora report`` and ``mtlora data check`` must start without importing torch or Lightning.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Mapping
from typing import Any


def lazy_attributes(package: str, exports: Mapping[str, str]) -> Callable[[str], Any]:
    """A module ``__getattr__`` that imports ``exports[name]`` (a module path) and returns its ``name``."""

    def __getattr__(name: str) -> Any:
        if name not in exports:
            raise AttributeError(f"module {package!r} has no attribute {name!r}")
        return getattr(importlib.import_module(exports[name]), name)

    return __getattr__
