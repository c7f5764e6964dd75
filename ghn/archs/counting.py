"""Exact parameter counts of specs, analytically (microseconds, no torch), and the CNN cell plan shared with
:mod:`ghn.archs.darts`."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, List, Mapping, Optional, Sequence, Tuple

from ghn.archs.spec import _nodes, patch_size_for


# ----------------------------------------------------------------------------------------------------------------
# CNN: shared plan + analytic parameter count
# ----------------------------------------------------------------------------------------------------------------
def _scale(c: int, mult: float) -> int:
    return max(1, int(c * float(mult) + 0.5))


def _reductions(n: int) -> Tuple[int, ...]:
    return tuple(sorted({n // 3, 2 * n // 3}))


@dataclass(frozen=True)
class _CellPlan:
    c_pp: int
    c_p: int
    c: int
    reduction: bool
    reduction_prev: bool


def _cnn_plan(spec: Mapping[str, Any]) -> Tuple[int, List[_CellPlan], int]:
    """(stem channels, per-cell plan, channels into the head)."""
    C, n, steps = int(spec["C"]), int(spec["cells"]), int(spec["steps"])
    c_stem = int(spec["stem_mult"]) * C
    c_pp, c_p, c = c_stem, c_stem, C
    red = _reductions(n)
    plans, reduction_prev = [], False
    for i in range(n):
        reduction = i in red
        if reduction:
            c = _scale(c, spec["mult"])
        plans.append(_CellPlan(c_pp, c_p, c, reduction, reduction_prev))
        c_pp, c_p = c_p, steps * c
        reduction_prev = reduction
    return c_stem, plans, c_p


def _se_hidden(c: int) -> int:
    return max(8, c // 4)


def _op_params(op: str, c: int, stride: int, nb: int) -> int:
    """Parameters of a cell op on ``c`` channels; ``nb`` = params of the norm slot (or conv bias) for ``c``."""
    if op in ("conv1", "conv3", "conv5"):
        k = int(op[-1])
        return c * c * k * k + nb
    if op in ("sep3", "sep5"):
        k = int(op[-1])
        return 2 * (c * k * k + c * c + nb)
    if op in ("dil3", "dil5"):
        k = int(op[-1])
        return c * k * k + c * c + nb
    if op == "skip":
        return 0 if stride == 1 else c * c + nb
    if op == "se":
        h = _se_hidden(c)
        return 2 * c * h + h + c
    return 0  # max3, avg3, zero


def _used_inputs(cell: Sequence[Sequence[Any]]) -> set:
    return {i for node in _nodes(cell) for op, i in node if op != "zero"}


def _count_cnn(spec: Mapping[str, Any], num_classes: int, in_channels: int) -> int:
    nb = (lambda c: c) if spec["norm"] == "none" else (lambda c: 2 * c)
    c_stem, plans, c_out = _cnn_plan(spec)
    k = int(spec["stem_k"])
    if spec["stem"] == "conv":
        total = in_channels * c_stem * k * k + nb(c_stem)
    else:
        h = max(1, c_stem // 2)
        total = in_channels * h * k * k + nb(h) + h * c_stem * 9 + nb(c_stem)
    for p in plans:
        cell = spec["reduce"] if p.reduction else spec["normal"]
        used = _used_inputs(cell)
        if 0 in used:
            total += p.c_pp * p.c + nb(p.c)  # 1x1 conv or factorized reduce: same count
        if 1 in used:
            total += p.c_p * p.c + nb(p.c)
        for node in _nodes(cell):
            for op, i in node:
                total += _op_params(op, p.c, 2 if p.reduction and i < 2 else 1, nb(p.c))
    h = int(spec["fc_hidden"])
    if h:
        total += c_out * h + h + h * num_classes + num_classes
    else:
        total += c_out * num_classes + num_classes
    return total


def _count_blocks(spec: Mapping[str, Any], qkv_bias: bool) -> int:
    d, depth = int(spec["dim"]), int(spec["depth"])
    hidden = max(1, int(round(d * float(spec["mlp"]))))
    norm = d if spec.get("norm", "layer") == "rms" else 2 * d
    attn = 4 * d * d + (3 * d if qkv_bias else 0) + d
    if spec.get("attn") == "torch" and not qkv_bias:
        attn -= d  # nn.MultiheadAttention(bias=False) also drops the out_proj bias
    mlp = 2 * d * hidden + hidden + d
    return depth * (2 * norm + attn + mlp) + norm


def _count_nonembedding(spec: Mapping[str, Any]) -> int:
    return _count_blocks(spec, True)


def count_params(spec: Mapping[str, Any], num_classes: int = 10, in_channels: int = 3, image_size: int = 32,
                 vocab_size: Optional[int] = None) -> int:
    """Exact number of parameters of ``build_model(spec, ...)`` computed analytically (microseconds, no torch).

    Predefined models are built on the meta device instead.
    """
    fam = spec["family"]
    if fam == "cnn":
        return _count_cnn(spec, num_classes, in_channels)
    if fam == "vit":
        d, p = int(spec["dim"]), patch_size_for(image_size, int(spec["patches"]))
        tokens = (image_size // p) ** 2 + (1 if spec["pool"] == "cls" else 0)
        total = in_channels * d * p * p + d + tokens * d + (d if spec["pool"] == "cls" else 0)
        return total + _count_blocks(spec, bool(spec.get("qkv_bias", True))) + d * num_classes + num_classes
    if fam == "gpt":
        vocab = int(vocab_size or spec.get("vocab", 50257))
        d = int(spec["dim"])
        emb = vocab * d + int(spec["block"]) * d + (0 if spec.get("tie", True) else vocab * d)
        return emb + _count_nonembedding(spec)
    import torch

    from ghn.archs.darts import build_model  # predefined names: count a meta-device build

    with torch.device("meta"):
        model = build_model(spec, num_classes, in_channels, image_size)
    return sum(p.numel() for p in model.parameters())
