"""ghn: graph hypernetworks that predict the parameters of any PyTorch model.

Importing the package has no side effects; heavy submodules are imported lazily.

    >>> import ghn
    >>> report = ghn.initialize(model)          # predicted weights written into ``model``
"""
from __future__ import annotations

import importlib
from typing import Any

__version__ = "0.1.0"

_LAZY = {
    "ArchGraph": ("ghn.graph", "ArchGraph"),
    "GraphHyperNetwork": ("ghn.hypernet", "GraphHyperNetwork"),
    "initialize": ("ghn.hypernet", "initialize"),
    "load_pretrained": ("ghn.hypernet", "load_pretrained"),
    "get_model": ("ghn.zoo", "get_model"),
}

__all__ = list(_LAZY) + ["__version__"]


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        mod, attr = _LAZY[name]
        return getattr(importlib.import_module(mod), attr)
    raise AttributeError(f"module 'ghn' has no attribute {name!r}")
