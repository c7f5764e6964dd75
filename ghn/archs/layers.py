"""Layers shared by the generated networks and the built-in models: norm and activation factories, squeeze-excite.

Defined once so a DARTS cell and a MobileNet block are made of the same parts (same parameter names, same
traced graph).
"""
from __future__ import annotations

from typing import Callable, Dict

import torch
import torch.nn as nn
import torch.nn.functional as F

TF_NORM_KINDS = ("layer", "rms")


class LayerNorm2d(nn.LayerNorm):
    """LayerNorm over channels of an NCHW tensor (channels-last LayerNorm)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x.permute(0, 2, 3, 1)
        x = F.layer_norm(x, self.normalized_shape, self.weight, self.bias, self.eps)
        return x.permute(0, 3, 1, 2)


def norm2d(kind: str, c: int) -> nn.Module:
    """Norm of a conv feature map: ``bn`` BatchNorm2d, ``ln`` channels-last LayerNorm, ``gn`` GroupNorm(1, C),
    ``none`` Identity."""
    if kind == "bn":
        return nn.BatchNorm2d(c)
    if kind == "ln":
        return LayerNorm2d(c)
    if kind == "gn":
        return nn.GroupNorm(1, c)
    if kind == "none":
        return nn.Identity()
    raise ValueError(f"unknown norm {kind!r}; expected bn, ln, gn or none")


def make_norm(kind: str, dim: int) -> nn.Module:
    """Norm of a token vector: ``"layer"`` -> nn.LayerNorm, ``"rms"`` -> nn.RMSNorm."""
    if kind == "layer":
        return nn.LayerNorm(dim)
    if kind == "rms":
        if not hasattr(nn, "RMSNorm"):
            raise RuntimeError("norm='rms' needs torch>=2.4 (nn.RMSNorm)")
        return nn.RMSNorm(dim)
    raise ValueError(f"unknown norm {kind!r}; expected one of {TF_NORM_KINDS}")


_ACTS: Dict[str, Callable[[bool], nn.Module]] = {
    "relu": lambda inplace: nn.ReLU(inplace=inplace), "relu6": lambda inplace: nn.ReLU6(inplace=inplace),
    "gelu": lambda inplace: nn.GELU(), "silu": lambda inplace: nn.SiLU(inplace=inplace),
    "hardswish": lambda inplace: nn.Hardswish(inplace=inplace),
}


def make_act(name: str, inplace: bool = False) -> nn.Module:
    """Activation module by name (relu, relu6, gelu, silu, hardswish)."""
    if name not in _ACTS:
        raise ValueError(f"unknown activation {name!r}; expected one of {sorted(_ACTS)}")
    return _ACTS[name](inplace)


class SqueezeExcite(nn.Module):
    """Channel gating: [avg pool if strided] -> global pool -> 1x1 conv -> act -> 1x1 conv -> gate -> multiply.

    ``gate`` is ``"sigmoid"`` (DARTS cells) or ``"hardsigmoid"`` (MobileNetV3-style blocks).
    """

    def __init__(self, channels: int, hidden: int, act: str = "relu", gate: str = "sigmoid", stride: int = 1):
        super().__init__()
        if gate not in ("sigmoid", "hardsigmoid"):
            raise ValueError(f"unknown gate {gate!r}")
        self.stride, self.gate = stride, gate
        self.fc1 = nn.Conv2d(channels, hidden, 1)
        self.act = make_act(act)
        self.fc2 = nn.Conv2d(hidden, channels, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.stride > 1:
            x = F.avg_pool2d(x, 3, self.stride, 1, count_include_pad=False)
        g = self.fc2(self.act(self.fc1(F.adaptive_avg_pool2d(x, 1))))
        return x * (torch.sigmoid(g) if self.gate == "sigmoid" else F.hardsigmoid(g))
