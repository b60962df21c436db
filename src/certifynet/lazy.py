"""Lazy package exports (PEP 562): a package lists which of its modules holds each public name, and a name is
imported on first use, so that the torch-free parts of a package never import torch."""
from __future__ import annotations

import importlib
from collections.abc import Callable


def lazy_exports(package: str, exports: dict[str, tuple[str, ...]]) -> tuple[list[str], Callable, Callable]:
    """(__all__, __getattr__, __dir__) for `package`, whose module `m` exports the names `exports[m]`.
    A name is imported from `package.m` on first access and cached in the package's namespace."""
    module_of = {name: module for module, names in exports.items() for name in names}
    names = sorted(module_of)

    def __getattr__(name: str):
        module = module_of.get(name)
        if module is None:
            raise AttributeError(f"module {package!r} has no attribute {name!r}")
        pkg = importlib.import_module(package)
        value = getattr(importlib.import_module(f"{package}.{module}"), name)
        setattr(pkg, name, value)
        return value

    def __dir__():
        return sorted(set(vars(importlib.import_module(package))) | set(names))

    return names, __getattr__, __dir__
