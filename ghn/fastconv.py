"""An exact, faster way to run convolutions whose stride equals their dilation, on this CPU.

A stride-``d``, dilation-``d`` convolution with zero padding ``p`` (``p`` a multiple of ``d``) only ever reads the
input pixels at multiples of ``d``: output ``o`` reads rows ``d*o - p + d*i = d*(o - p/d + i)``. It is therefore
the plain (stride 1, undilated) convolution with padding ``p/d`` of the subsampled input ``x[..., ::d, ::d]``, with
the same output size and the same products summed. oneDNN runs the strided dilated form of the generated
architectures' reduction ops (depthwise 5x5 / 3x3, dilation 2, stride 2) 7-20x slower than the plain one on the
subsampled input (benchmarks/conv_mix.py, docs/BENCHMARKS.md).

:func:`fast_convs` rewrites such ``conv2d`` calls while a model runs (training, fine-tuning, evaluation); the module
itself is untouched, so graphs traced from it (:mod:`ghn.tracing`) keep the stride and dilation the hypernetwork was
trained on.
"""
from __future__ import annotations

import contextlib
from typing import Any, ContextManager, Optional, Tuple

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.overrides import TorchFunctionMode

__all__ = ["StridedDilatedConvs", "fast_convs", "has_strided_dilated_conv"]

_CONV2D_ARGS = ("input", "weight", "bias", "stride", "padding", "dilation", "groups")


def _pair(v: Any) -> Tuple[Optional[int], Optional[int]]:
    """``(h, w)`` of an int or 1- or 2-sequence (``(None, None)`` for anything else)."""
    v = tuple(v) if isinstance(v, (tuple, list)) else (v,)
    v = v * 2 if len(v) == 1 else v
    return (int(v[0]), int(v[1])) if len(v) == 2 else (None, None)


def _rewritable(stride: Any, padding: Any, dilation: Any):
    """``(d, p / d)`` as pairs when a conv2d with these settings equals a plain conv on ``x[..., ::d, ::d]``."""
    if isinstance(padding, str):
        return None
    s, d, p = _pair(stride), _pair(dilation), _pair(padding)
    if None in s + d + p or s != d or d == (1, 1) or p[0] % d[0] or p[1] % d[1]:
        return None
    return d, (p[0] // d[0], p[1] // d[1])


class StridedDilatedConvs(TorchFunctionMode):
    """Runs every ``conv2d`` with stride == dilation > 1 as a plain conv on the subsampled input (exact)."""

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func is F.conv2d or func is torch.conv2d:
            a = {**dict(zip(_CONV2D_ARGS, args)), **kwargs}
            r = _rewritable(a.get("stride", 1), a.get("padding", 0), a.get("dilation", 1))
            if r is not None:
                (dh, dw), pad = r
                return func(a["input"][..., ::dh, ::dw], a["weight"], a.get("bias"), 1, pad, 1, a.get("groups", 1))
        return func(*args, **kwargs)


def has_strided_dilated_conv(model: nn.Module) -> bool:
    """True when ``model`` has an ``nn.Conv2d`` that :class:`StridedDilatedConvs` runs faster."""
    return any(isinstance(m, nn.Conv2d) and m.stride == m.dilation and max(m.dilation) > 1 for m in model.modules())


def fast_convs(model: nn.Module) -> ContextManager:
    """:class:`StridedDilatedConvs` for a model that has such a conv, else a no-op (the mode costs a Python call
    per torch function, so models without one do not pay it)."""
    return StridedDilatedConvs() if has_strided_dilated_conv(model) else contextlib.nullcontext()
