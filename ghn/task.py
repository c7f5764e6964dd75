"""The image task a hypernetwork predicts for: one value instead of a (num_classes, in_channels, image_size) triple.

A hypernetwork declares the task it was trained on (saved in its checkpoint); ``predict.py`` and
:func:`ghn.zoo.initialize_zoo` build target models for it unless told otherwise.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, replace
from typing import Any, Dict, Mapping, Optional

import torch


@dataclass(frozen=True)
class Task:
    """What the target models classify: ``num_classes`` classes of ``in_channels`` x ``image_size``^2 images."""

    num_classes: int = 10
    in_channels: int = 3
    image_size: int = 32
    dataset: str = ""

    def __post_init__(self) -> None:
        for k in ("num_classes", "in_channels", "image_size"):
            v = getattr(self, k)
            if isinstance(v, bool) or not isinstance(v, int) or v < 1:
                raise ValueError(f"task {k} must be an integer >= 1, got {v!r}")

    @classmethod
    def from_dict(cls, d: Optional[Mapping[str, Any]]) -> "Task":
        """The task of a mapping that has (some of) its fields, e.g. a checkpoint's metadata; others default."""
        d = d or {}
        return cls(**{k: d[k] for k in ("num_classes", "in_channels", "image_size", "dataset") if k in d})

    @classmethod
    def of(cls, data) -> "Task":
        """The task of an image dataset (``.num_classes`` and ``.images`` [N, C, H, W])."""
        return cls(int(data.num_classes), int(data.images.shape[1]), int(data.images.shape[-1]),
                   str(getattr(data, "name", "") or ""))

    def with_overrides(self, **kw: Optional[int]) -> "Task":
        """A copy with the given (non-None) fields replaced."""
        return replace(self, **{k: v for k, v in kw.items() if v is not None})

    def model_kwargs(self) -> Dict[str, int]:
        """Keyword arguments of the model factories (``build_model``, ``get_model``, ``build_predefined``)."""
        return {"num_classes": self.num_classes, "in_channels": self.in_channels, "image_size": self.image_size}

    def example_input(self, batch: int = 2) -> torch.Tensor:
        """A zero image batch that fits the task (for tracing)."""
        return torch.zeros(batch, self.in_channels, self.image_size, self.image_size)

    def to_dict(self) -> Dict[str, Any]:
        return asdict(self)

    def __str__(self) -> str:
        return f"{self.num_classes} classes, {self.in_channels}x{self.image_size}px" + (
            f" ({self.dataset})" if self.dataset else "")
