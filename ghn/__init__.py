"""ghn: graph hypernetworks that predict the parameters of any PyTorch model.

Importing the package has no side effects; heavy submodules are imported lazily (``__getattr__``), while type
checkers and IDEs see the public API through the ``TYPE_CHECKING`` imports below.

    >>> import ghn
    >>> report = ghn.initialize(model)          # predicted weights written into ``model``
"""
from __future__ import annotations

import importlib
from importlib.metadata import PackageNotFoundError, version
from typing import TYPE_CHECKING, Any

try:
    __version__ = version("ghn")
except PackageNotFoundError:  # running from a source tree that was never installed
    __version__ = "0+unknown"

if TYPE_CHECKING:
    from ghn.graph import ArchGraph
    from ghn.hypernet import GHNConfig, GraphHyperNetwork, InitReport, initialize, load_pretrained
    from ghn.task import Task
    from ghn.zoo import get_model, initialize_zoo

_LAZY = {
    "ArchGraph": ("ghn.graph", "ArchGraph"),
    "GraphHyperNetwork": ("ghn.hypernet", "GraphHyperNetwork"),
    "GHNConfig": ("ghn.hypernet", "GHNConfig"),
    "InitReport": ("ghn.hypernet", "InitReport"),
    "initialize": ("ghn.hypernet", "initialize"),
    "load_pretrained": ("ghn.hypernet", "load_pretrained"),
    "Task": ("ghn.task", "Task"),
    "get_model": ("ghn.zoo", "get_model"),
    "initialize_zoo": ("ghn.zoo", "initialize_zoo"),
}

__all__ = ["ArchGraph", "GraphHyperNetwork", "GHNConfig", "InitReport", "initialize", "load_pretrained", "Task",
           "get_model", "initialize_zoo", "__version__"]


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        mod, attr = _LAZY[name]
        return getattr(importlib.import_module(mod), attr)
    raise AttributeError(f"module 'ghn' has no attribute {name!r}")
