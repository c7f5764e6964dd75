"""The built-in model registry (like timm's): factories register themselves with ``@register_model``.

    >>> from ghn.archs.registry import build_predefined, list_models
    >>> model = build_predefined("resnet18", num_classes=10, in_channels=1, image_size=28)
"""
from __future__ import annotations

from typing import Any, Callable, Dict, Iterator, List, Mapping

import torch.nn as nn

_FACTORIES: Dict[str, Callable[..., nn.Module]] = {}
ALIASES: Dict[str, str] = {}


def register_model(*aliases: str) -> Callable[[Callable[..., nn.Module]], Callable[..., nn.Module]]:
    """Decorator: register a factory under its function name (and ``aliases``)."""
    def deco(fn: Callable[..., nn.Module]) -> Callable[..., nn.Module]:
        _FACTORIES[fn.__name__] = fn
        for a in aliases:
            ALIASES[a] = fn.__name__
        return fn
    return deco


def _load() -> None:
    from ghn.archs import cnns, transformers  # noqa: F401  (importing registers their factories)


class _Registry(Mapping):
    """Read-only ``{name: factory}`` view, filled on first use."""

    def __getitem__(self, name: str) -> Callable[..., nn.Module]:
        _load()
        return _FACTORIES[name]

    def __iter__(self) -> Iterator[str]:
        _load()
        return iter(_FACTORIES)

    def __len__(self) -> int:
        _load()
        return len(_FACTORIES)


PREDEFINED: Mapping[str, Callable[..., nn.Module]] = _Registry()


def list_models() -> List[str]:
    """Sorted names of the built-in models."""
    return sorted(PREDEFINED)


def resolve_name(name: str) -> str:
    """Canonical registry name for ``name`` (lowercase, '-' -> '_', aliases resolved); KeyError if unknown."""
    _load()
    key = name.strip().lower().replace("-", "_")
    key = ALIASES.get(key, key)
    if key not in _FACTORIES:  # "resnet_18", "densenet_121", "mobilenetv2": compare without underscores
        compact = {k.replace("_", ""): ALIASES.get(k, k) for k in (*_FACTORIES, *ALIASES)}
        key = compact.get(key.replace("_", ""), key)
    if key not in _FACTORIES:
        raise KeyError(f"unknown predefined model {name!r}; available: {', '.join(sorted(_FACTORIES))} "
                       f"(aliases: {', '.join(sorted(ALIASES))})")
    return key


def build_predefined(name: str, num_classes: int = 1000, in_channels: int = 3, image_size: int = 224,
                     **kw: Any) -> nn.Module:
    """Build a built-in model by name; GPT models ignore ``num_classes``/``in_channels``/``image_size``."""
    fn = PREDEFINED[resolve_name(name)]
    return fn(num_classes=num_classes, in_channels=in_channels, image_size=image_size, **kw)
