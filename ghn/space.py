"""The architecture space: sampling compact JSON specs and building ``nn.Module`` s from them.

Two families of image classifiers, plus causal language models and named built-in models:

* ``"cnn"``: DARTS-like networks of normal and reduction cells. A cell has ``steps`` nodes; node ``j`` sums two
  ops applied to two earlier states (state 0: output of the cell before the previous one, state 1: output of the
  previous cell, state ``k >= 2``: node ``k - 2``). A cell outputs the concatenation of its nodes; the next cell
  preprocesses its inputs with 1x1 convs (a factorized reduce when the resolution differs). Reductions (stride 2,
  channels x ``mult``) sit at cells ``n // 3`` and ``2n // 3``.
* ``"vit"``: ViT-like, built by :class:`ghn.predefined.ViT`; the patch size is chosen at build time so that the
  image has about ``patches`` patches per side.
* ``"gpt"``: GPT-like, built by :class:`ghn.predefined.GPT` (only sampled for the ``lm`` split).
* ``"predefined"``: a name resolved by :func:`ghn.predefined.build_predefined` (e.g. ``"resnet18"``).

    >>> import random
    >>> spec = sample_spec(random.Random(0), "train")
    >>> model = build_model(spec, num_classes=10, in_channels=1, image_size=28)

Everything is deterministic given the spec; nothing random happens at import time and no global RNG is touched
(sampling takes a ``random.Random``; parameter init is the ordinary torch init at build time).
"""
from __future__ import annotations

import hashlib
import json
import random
from collections import Counter
from dataclasses import dataclass, field
from typing import Any, Dict, List, Mapping, MutableMapping, Optional, Sequence, Tuple

import torch
import torch.nn as nn
import torch.nn.functional as F

__all__ = [
    "OPS", "CONV_OPS", "LEARNABLE_OPS", "NORMS", "ACTS", "STEMS", "SPLITS", "SAMPLED_SPLITS", "PREDEFINED_NAMES",
    "SplitSpace", "SPACES", "Spec",
    "canonical_json", "spec_hash", "split_seed", "draw_spec", "sample_spec", "rejection_reason", "check_spec",
    "count_params", "build_model", "patch_size_for", "spec_ops", "describe",
    "DartsNet", "Cell",
]

Spec = Dict[str, Any]

# ----------------------------------------------------------------------------------------------------------------
# vocabulary
# ----------------------------------------------------------------------------------------------------------------
#: Cell ops: conv kxk (act-conv-norm), separable (act-dw-pw-norm, twice), dilated (act-dw(dil 2)-pw-norm),
#: pools, identity (a factorized reduce on stride-2 edges), zero (the edge is dropped), squeeze-excite gating.
OPS: Tuple[str, ...] = ("conv1", "conv3", "conv5", "sep3", "sep5", "dil3", "dil5",
                        "max3", "avg3", "skip", "zero", "se")
CONV_OPS = frozenset({"conv1", "conv3", "conv5", "sep3", "sep5", "dil3", "dil5"})
LEARNABLE_OPS = CONV_OPS | {"se"}
NORMS: Tuple[str, ...] = ("bn", "ln", "gn", "none")  # ln: channels-last LayerNorm; gn: GroupNorm(1, C)
ACTS: Tuple[str, ...] = ("relu", "gelu", "silu", "hardswish")
STEMS: Tuple[str, ...] = ("conv", "conv2")
VIT_ATTN: Tuple[str, ...] = ("fused", "separate", "torch")
GPT_ATTN: Tuple[str, ...] = ("fused", "separate")
TF_NORMS: Tuple[str, ...] = ("layer", "rms")
PREDEFINED_NAMES: Tuple[str, ...] = ("resnet18", "resnet50", "vit_small", "mobilenet_v2")

#: reference task used for parameter caps (and what ``count_params`` defaults to)
REF_TASK = dict(num_classes=10, in_channels=3, image_size=32)


@dataclass(frozen=True)
class SplitSpace:
    """The sampling distribution of one split (see docs/DESIGN_space.md)."""

    p_vit: float = 0.13  # per draw; ~15% of accepted train specs (see docs/DESIGN_space.md)
    cells: Tuple[int, int] = (4, 18)
    steps: Tuple[int, int] = (1, 4)
    widths: Tuple[int, ...] = tuple(range(16, 65, 8))
    norms: Mapping[str, float] = field(default_factory=lambda: {"bn": 0.5, "ln": 0.15, "gn": 0.15, "none": 0.2})
    max_params: float = 5e6
    vit_depth: Tuple[int, int] = (2, 12)
    family: str = "image"  # "image" (cnn/vit), "lm" (gpt), "predefined"


_EVAL_LIKE = SplitSpace()
SPACES: Dict[str, SplitSpace] = {
    "train": _EVAL_LIKE,
    "val": _EVAL_LIKE,
    "test": _EVAL_LIKE,
    "wide": SplitSpace(p_vit=0.0, widths=tuple(range(96, 193, 8)), max_params=3e7),
    "deep": SplitSpace(p_vit=0.0, cells=(19, 36), max_params=2e7),
    "dense": SplitSpace(p_vit=0.0, steps=(5, 8), max_params=2e7),
    "normfree": SplitSpace(p_vit=0.0, norms={"none": 1.0}),
    "transformer": SplitSpace(p_vit=1.0),
    "lm": SplitSpace(p_vit=0.0, max_params=3e7, family="lm"),
    "predefined": SplitSpace(p_vit=0.0, family="predefined"),
}
SPLITS: Tuple[str, ...] = tuple(SPACES)
SAMPLED_SPLITS: Tuple[str, ...] = tuple(s for s in SPLITS if s != "predefined")

# op sampling weights: conv-like ops a bit more often than parameter-free ones
_OP_WEIGHTS: Dict[str, float] = {"conv1": 1.0, "conv3": 1.0, "conv5": 1.0, "sep3": 1.0, "sep5": 1.0, "dil3": 1.0,
                                 "dil5": 1.0, "max3": 0.7, "avg3": 0.7, "skip": 1.0, "zero": 0.5, "se": 0.6}
_ACT_WEIGHTS: Dict[str, float] = {"relu": 0.4, "gelu": 0.2, "silu": 0.2, "hardswish": 0.2}


# ----------------------------------------------------------------------------------------------------------------
# hashing
# ----------------------------------------------------------------------------------------------------------------
def canonical_json(spec: Mapping[str, Any]) -> str:
    """The canonical text of a spec: sorted keys, compact separators (what split files store, one per line)."""
    return json.dumps(spec, sort_keys=True, separators=(",", ":"))


def spec_hash(spec: Mapping[str, Any]) -> str:
    """sha1 hex digest of :func:`canonical_json`; identical architectures have identical hashes."""
    return hashlib.sha1(canonical_json(spec).encode()).hexdigest()


def split_seed(seed: int, split: str, chunk: int = 0) -> int:
    """A 64-bit seed for the random stream of ``(seed, split, chunk)`` (independent streams per split)."""
    return int.from_bytes(hashlib.sha256(f"ghn-space:{seed}:{split}:{chunk}".encode()).digest()[:8], "little")


# ----------------------------------------------------------------------------------------------------------------
# sampling
# ----------------------------------------------------------------------------------------------------------------
def _choice(rng: random.Random, weights: Mapping[str, float]) -> str:
    keys = list(weights)
    return rng.choices(keys, weights=[weights[k] for k in keys])[0]


def _genotype(rng: random.Random, steps: int) -> List[List[Any]]:
    ops, w = list(_OP_WEIGHTS), list(_OP_WEIGHTS.values())
    cell = []
    for j in range(steps):
        a, b = rng.choices(ops, weights=w, k=2)
        cell.append([a, rng.randint(0, j + 1), b, rng.randint(0, j + 1)])
    return cell


def _draw_cnn(rng: random.Random, sp: SplitSpace) -> Spec:
    steps = rng.randint(*sp.steps)
    return {
        "family": "cnn",
        "C": rng.choice(sp.widths),
        "cells": rng.randint(*sp.cells),
        "steps": steps,
        "normal": _genotype(rng, steps),
        "reduce": _genotype(rng, steps),
        "mult": rng.choice((1.5, 2.0)),
        "norm": _choice(rng, sp.norms),
        "act": _choice(rng, _ACT_WEIGHTS),
        "stem": rng.choice(STEMS),
        "stem_k": rng.choice((3, 5, 7)),
        "stem_mult": rng.choice((1, 2, 3)),
        "fc_hidden": rng.choice((0, 0, 128, 256, 512)),
    }


def _heads_dim(rng: random.Random, lo: int, hi: int) -> Tuple[int, int]:
    pairs = [(h, h * d) for h in (1, 2, 3, 4, 6, 8, 12) for d in range(16, 65, 8) if lo <= h * d <= hi]
    return rng.choice(pairs)


def _draw_vit(rng: random.Random, sp: SplitSpace) -> Spec:
    heads, dim = _heads_dim(rng, 64, 384)
    return {
        "family": "vit",
        "dim": dim,
        "depth": rng.randint(*sp.vit_depth),
        "heads": heads,
        "mlp": rng.choice([1.0 + 0.25 * i for i in range(13)]),  # 1.0 .. 4.0
        "pre_norm": rng.random() < 0.8,
        "pool": rng.choice(("cls", "mean")),
        "attn": rng.choice(VIT_ATTN),
        "norm": rng.choice(TF_NORMS),
        "qkv_bias": rng.random() < 0.7,
        "patches": rng.choice((4, 8)),
    }


def _draw_gpt(rng: random.Random, sp: SplitSpace) -> Spec:
    heads, dim = _heads_dim(rng, 64, 768)
    return {
        "family": "gpt",
        "dim": dim,
        "depth": rng.randint(2, 12),
        "heads": heads,
        "mlp": rng.choice([1.0 + 0.25 * i for i in range(13)]),
        "pre_norm": rng.random() < 0.8,
        "tie": rng.random() < 0.7,
        "attn": rng.choice(GPT_ATTN),
        "norm": rng.choice(TF_NORMS),
        "block": rng.choice((128, 256, 512, 1024)),
    }


def draw_spec(rng: random.Random, split: str) -> Spec:
    """One raw draw from the split's distribution (may be invalid: see :func:`rejection_reason`)."""
    if split not in SPACES:
        raise ValueError(f"unknown split {split!r}; expected one of {SPLITS}")
    sp = SPACES[split]
    if sp.family == "predefined":
        return {"family": "predefined", "name": rng.choice(PREDEFINED_NAMES)}
    if sp.family == "lm":
        return _draw_gpt(rng, sp)
    if rng.random() < sp.p_vit:
        return _draw_vit(rng, sp)
    return _draw_cnn(rng, sp)


def sample_spec(rng: random.Random, split: str, rejected: Optional[MutableMapping[str, int]] = None,
                max_tries: int = 10_000) -> Spec:
    """Draw specs from ``split`` until one is valid; rejection reasons are counted into ``rejected`` if given."""
    cap = SPACES[split].max_params if split in SPACES else None
    for _ in range(max_tries):
        spec = draw_spec(rng, split)
        reason = rejection_reason(spec, cap)
        if reason is None:
            return spec
        if rejected is not None:
            rejected[reason] = rejected.get(reason, 0) + 1
    raise RuntimeError(f"no valid spec for split {split!r} in {max_tries} draws")


# ----------------------------------------------------------------------------------------------------------------
# validation
# ----------------------------------------------------------------------------------------------------------------
def _nodes(cell: Sequence[Sequence[Any]]) -> List[List[Tuple[str, int]]]:
    return [[(str(n[0]), int(n[1])), (str(n[2]), int(n[3]))] for n in cell]


# Keys of each family (unknown keys are refused: a typo must not silently fall back to a default) and the size
# guards: a spec beyond them is refused in microseconds instead of building a model for minutes and running out
# of memory (the generated splits stay far inside: <= 40 cells, depth <= 24).
SPEC_KEYS = {
    "cnn": {"family", "C", "cells", "steps", "normal", "reduce", "mult", "norm", "act", "stem", "stem_k",
            "stem_mult", "fc_hidden"},
    "vit": {"family", "dim", "depth", "heads", "mlp", "pre_norm", "pool", "attn", "norm", "qkv_bias", "patches"},
    "gpt": {"family", "dim", "depth", "heads", "mlp", "pre_norm", "tie", "attn", "norm", "block", "vocab"},
    "predefined": {"family", "name"},
}
OPTIONAL_KEYS = {"vocab"}
MAX_CELLS, MAX_STEPS, MAX_DEPTH, MAX_WIDTH = 256, 16, 256, 8192


def _positive(spec: Mapping[str, Any], key: str, hi: float) -> float:
    v = spec[key]
    if isinstance(v, bool) or not isinstance(v, (int, float)) or not 0 < v <= hi:
        raise ValueError(f"{spec['family']} spec: {key}={v!r} must be a number in (0, {hi:g}]")
    return v


def check_spec(spec: Mapping[str, Any]) -> None:
    """Raise a one-line ``ValueError`` if ``spec`` cannot be built (not a dict, unknown family/key/op/norm, missing
    key, bad input index, empty node, zero or absurd sizes)."""
    if not isinstance(spec, Mapping):
        raise ValueError(f"a spec must be a JSON object, got {type(spec).__name__}: {str(spec)[:80]}")
    fam = spec.get("family")
    if fam not in SPEC_KEYS:
        raise ValueError(f"unknown spec family {fam!r}; expected cnn, vit, gpt or predefined")
    missing = sorted(SPEC_KEYS[fam] - OPTIONAL_KEYS - set(spec))
    unknown = sorted(set(spec) - SPEC_KEYS[fam])
    if missing or unknown:
        raise ValueError(f"{fam} spec: " + "; ".join(
            ([f"missing keys {missing}"] if missing else []) + ([f"unknown keys {unknown}"] if unknown else [])))
    if fam == "cnn":
        if spec["norm"] not in NORMS or spec["act"] not in ACTS or spec["stem"] not in STEMS:
            raise ValueError(f"bad norm/act/stem in spec: {spec['norm']!r}, {spec['act']!r}, {spec['stem']!r}")
        _positive(spec, "C", MAX_WIDTH)
        _positive(spec, "cells", MAX_CELLS)
        _positive(spec, "steps", MAX_STEPS)
        _positive(spec, "mult", 8)
        _positive(spec, "stem_mult", 8)
        for which in ("normal", "reduce"):
            cell = spec[which]
            if not isinstance(cell, list) or len(cell) != int(spec["steps"]):
                n = len(cell) if isinstance(cell, list) else type(cell).__name__
                raise ValueError(f"{which} cell has {n} nodes, expected steps={spec['steps']}")
            for j, node in enumerate(cell):
                if not isinstance(node, list) or len(node) != 4:
                    raise ValueError(f"{which} node {j}: expected [op, input, op, input], got {node}")
                for op, i in _nodes([node])[0]:
                    if op not in OPS:
                        raise ValueError(f"{which} node {j}: unknown op {op!r}; expected one of {OPS}")
                    if not 0 <= i <= j + 1:
                        raise ValueError(f"{which} node {j}: input {i} out of range 0..{j + 1}")
                if node[0] == "zero" and node[2] == "zero":
                    raise ValueError(f"{which} node {j}: both ops are 'zero'")
    elif fam in ("vit", "gpt"):
        dim = _positive(spec, "dim", MAX_WIDTH)
        _positive(spec, "depth", MAX_DEPTH)
        heads = _positive(spec, "heads", dim)
        _positive(spec, "mlp", 16)
        if int(dim) % int(heads):
            raise ValueError(f"dim {spec['dim']} is not a multiple of heads {spec['heads']}")
        if fam == "vit" and spec["pool"] not in ("cls", "mean"):
            raise ValueError(f"vit spec: pool={spec['pool']!r}; expected 'cls' or 'mean'")
    elif not isinstance(spec.get("name"), str):
        raise ValueError("predefined spec needs a 'name'")


def rejection_reason(spec: Mapping[str, Any], max_params: Optional[float] = None) -> Optional[str]:
    """Why the sampler rejects ``spec`` (``None`` if it is accepted).

    Reasons: ``empty_node`` (both ops of a node are zero), ``prev_unused`` (a cell ignores the previous cell, so
    that cell's parameters would be dead in the last cell), ``no_learnable_op`` (only pool/skip/zero ops),
    ``se_only`` (squeeze-excite is the only learnable op), ``too_many_params`` (over ``max_params`` at the
    reference task 10 classes, 3x32x32), ``invalid`` (anything :func:`check_spec` rejects).
    """
    fam = spec.get("family")
    if fam == "cnn":
        for cell in (spec["normal"], spec["reduce"]):
            nodes = _nodes(cell)
            if any(a[0] == "zero" and b[0] == "zero" for a, b in nodes):
                return "empty_node"
            if not any(op != "zero" and i == 1 for node in nodes for op, i in node):
                return "prev_unused"
            ops = {op for node in nodes for op, _ in node}
            if not ops & LEARNABLE_OPS:
                return "no_learnable_op"
            if not ops & CONV_OPS:
                return "se_only"
    try:
        check_spec(spec)
    except ValueError:
        return "invalid"
    if max_params is not None and fam != "predefined":
        n = _count_nonembedding(spec) if fam == "gpt" else count_params(spec)
        if n > max_params:
            return "too_many_params"
    return None


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
    with torch.device("meta"):
        model = build_model(spec, num_classes, in_channels, image_size)
    return sum(p.numel() for p in model.parameters())


# ----------------------------------------------------------------------------------------------------------------
# CNN modules
# ----------------------------------------------------------------------------------------------------------------
class LayerNorm2d(nn.LayerNorm):
    """LayerNorm over channels of an NCHW tensor (channels-last LayerNorm)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x.permute(0, 2, 3, 1)
        x = F.layer_norm(x, self.normalized_shape, self.weight, self.bias, self.eps)
        return x.permute(0, 3, 1, 2)


def _norm(kind: str, c: int) -> nn.Module:
    if kind == "bn":
        return nn.BatchNorm2d(c)
    if kind == "ln":
        return LayerNorm2d(c)
    if kind == "gn":
        return nn.GroupNorm(1, c)
    return nn.Identity()


def _act(kind: str) -> nn.Module:
    return {"relu": nn.ReLU, "gelu": nn.GELU, "silu": nn.SiLU, "hardswish": nn.Hardswish}[kind]()


class ConvNorm(nn.Sequential):
    """[act] -> conv (optionally depthwise-separable / dilated) -> norm; conv bias only when there is no norm."""

    def __init__(self, c_in: int, c_out: int, k: int, stride: int, norm: str, act: Optional[str],
                 separable: bool = False, dilation: int = 1):
        layers: List[nn.Module] = [_act(act)] if act else []
        pad = dilation * (k - 1) // 2
        if separable:
            layers += [nn.Conv2d(c_in, c_in, k, stride, pad, dilation=dilation, groups=c_in, bias=False),
                       nn.Conv2d(c_in, c_out, 1, bias=norm == "none")]
        else:
            layers.append(nn.Conv2d(c_in, c_out, k, stride, pad, dilation=dilation, bias=norm == "none"))
        layers.append(_norm(norm, c_out))
        super().__init__(*layers)


class FactorizedReduce(nn.Module):
    """act -> two stride-2 1x1 convs on offset grids -> concat -> norm (halves the resolution, any size)."""

    def __init__(self, c_in: int, c_out: int, norm: str, act: str):
        super().__init__()
        self.act = _act(act)
        self.conv1 = nn.Conv2d(c_in, c_out // 2, 1, 2, bias=False)
        self.conv2 = nn.Conv2d(c_in, c_out - c_out // 2, 1, 2, bias=False)
        self.norm = _norm(norm, c_out)
        if norm == "none":
            self.bias = nn.Parameter(torch.zeros(c_out))
        else:
            self.register_parameter("bias", None)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.act(x)
        y = x[:, :, 1:, 1:]
        y = F.pad(y, (0, x.shape[3] % 2, 0, x.shape[2] % 2))  # odd sizes: same output size as conv1
        out = self.norm(torch.cat([self.conv1(x), self.conv2(y)], dim=1))
        if self.bias is not None:
            out = out + self.bias.view(1, -1, 1, 1)
        return out


class Pool(nn.Module):
    """3x3 max or average pooling (stride 1 or 2, padding 1)."""

    def __init__(self, kind: str, stride: int):
        super().__init__()
        self.kind, self.stride = kind, stride

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.kind == "max":
            return F.max_pool2d(x, 3, self.stride, 1)
        return F.avg_pool2d(x, 3, self.stride, 1, count_include_pad=False)


class SqueezeExcite(nn.Module):
    """Channel gating: global pool -> 1x1 conv -> act -> 1x1 conv -> sigmoid -> multiply (avg-pooled if strided)."""

    def __init__(self, c: int, act: str, stride: int):
        super().__init__()
        self.stride = stride
        h = _se_hidden(c)
        self.fc1 = nn.Conv2d(c, h, 1)
        self.act = _act(act)
        self.fc2 = nn.Conv2d(h, c, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.stride > 1:
            x = F.avg_pool2d(x, 3, self.stride, 1, count_include_pad=False)
        g = torch.sigmoid(self.fc2(self.act(self.fc1(F.adaptive_avg_pool2d(x, 1)))))
        return x * g


def _make_op(op: str, c: int, stride: int, norm: str, act: str) -> nn.Module:
    if op in ("conv1", "conv3", "conv5"):
        return ConvNorm(c, c, int(op[-1]), stride, norm, act)
    if op in ("sep3", "sep5"):
        k = int(op[-1])
        return nn.Sequential(ConvNorm(c, c, k, stride, norm, act, separable=True),
                             ConvNorm(c, c, k, 1, norm, act, separable=True))
    if op in ("dil3", "dil5"):
        return ConvNorm(c, c, int(op[-1]), stride, norm, act, separable=True, dilation=2)
    if op in ("max3", "avg3"):
        return Pool(op[:3], stride)
    if op == "skip":
        return nn.Identity() if stride == 1 else FactorizedReduce(c, c, norm, act)
    if op == "se":
        return SqueezeExcite(c, act, stride)
    raise ValueError(f"unknown op {op!r}")


class Cell(nn.Module):
    """A DARTS-like cell: preprocess the two inputs, ``steps`` nodes of two summed ops, concat the nodes."""

    def __init__(self, genotype: Sequence[Sequence[Any]], plan: _CellPlan, norm: str, act: str):
        super().__init__()
        self.reduction = plan.reduction
        used = _used_inputs(genotype)
        c = plan.c
        if 0 in used:
            self.pre0: Optional[nn.Module] = (FactorizedReduce(plan.c_pp, c, norm, act) if plan.reduction_prev
                                              else ConvNorm(plan.c_pp, c, 1, 1, norm, act))
        else:
            self.pre0 = None
        self.pre1 = ConvNorm(plan.c_p, c, 1, 1, norm, act) if 1 in used else None
        self.ops = nn.ModuleList()
        self.wiring: List[List[Tuple[int, int]]] = []  # per node: (op index in self.ops, input state)
        for node in _nodes(genotype):
            wires = []
            for op, i in node:
                if op == "zero":
                    continue
                stride = 2 if plan.reduction and i < 2 else 1
                wires.append((len(self.ops), i))
                self.ops.append(_make_op(op, c, stride, norm, act))
            self.wiring.append(wires)

    def forward(self, s0: torch.Tensor, s1: torch.Tensor) -> torch.Tensor:
        states: List[Optional[torch.Tensor]] = [
            self.pre0(s0) if self.pre0 is not None else None,
            self.pre1(s1) if self.pre1 is not None else None,
        ]
        for wires in self.wiring:
            outs = [self.ops[k](states[i]) for k, i in wires]
            h = outs[0]
            for o in outs[1:]:
                h = h + o
            states.append(h)
        nodes = states[2:]
        return nodes[0] if len(nodes) == 1 else torch.cat(nodes, dim=1)  # type: ignore[arg-type]


class DartsNet(nn.Module):
    """Stem -> cells (reductions at n//3 and 2n//3) -> global average pool -> 1 or 2 linear layers.

    The stem is stride 1 for images < 64 px; from 64 px its first conv is stride 2, and a two-conv stem's second
    conv is stride 2 as well from 128 px.
    """

    def __init__(self, spec: Mapping[str, Any], num_classes: int = 10, in_channels: int = 3, image_size: int = 32):
        super().__init__()
        check_spec(spec)
        if image_size < 8:
            raise ValueError(f"image_size must be >= 8, got {image_size}")
        self.num_classes, self.in_channels, self.image_size = num_classes, in_channels, image_size
        norm, act, k = str(spec["norm"]), str(spec["act"]), int(spec["stem_k"])
        c_stem, plans, c_out = _cnn_plan(spec)
        s1 = 2 if image_size >= 64 else 1
        if spec["stem"] == "conv":
            self.stem = ConvNorm(in_channels, c_stem, k, s1, norm, None)
        else:
            h = max(1, c_stem // 2)
            self.stem = nn.Sequential(ConvNorm(in_channels, h, k, s1, norm, None),
                                      ConvNorm(h, c_stem, 3, 2 if image_size >= 128 else 1, norm, act))
        self.cells = nn.ModuleList([
            Cell(spec["reduce"] if p.reduction else spec["normal"], p, norm, act) for p in plans])
        h = int(spec["fc_hidden"])
        if h:
            self.head = nn.Sequential(nn.Linear(c_out, h), _act(act), nn.Linear(h, num_classes))
        else:
            self.head = nn.Sequential(nn.Linear(c_out, num_classes))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        s0 = s1 = self.stem(x)
        for cell in self.cells:
            s0, s1 = s1, cell(s0, s1)
        return self.head(F.adaptive_avg_pool2d(s1, 1).flatten(1))


# ----------------------------------------------------------------------------------------------------------------
# building
# ----------------------------------------------------------------------------------------------------------------
def patch_size_for(image_size: int, patches: int) -> int:
    """The divisor ``p`` of ``image_size`` whose ``image_size // p`` is closest to ``patches`` (ties: fewer tokens).

    28 px: patches 8 -> p 4 (7x7), patches 4 -> p 7; 32 px: patches 8 -> p 4, patches 4 -> p 8.
    """
    divisors = [p for p in range(1, image_size + 1) if image_size % p == 0]
    return min(divisors, key=lambda p: (abs(image_size // p - patches), -p))


def build_model(spec: Mapping[str, Any], num_classes: int = 10, in_channels: int = 3, image_size: int = 32,
                *, vocab_size: Optional[int] = None) -> nn.Module:
    """Build the ``nn.Module`` of a spec for a task (deterministic structure, default torch init).

    GPT specs ignore ``num_classes``/``in_channels``/``image_size`` and use ``vocab_size`` (default: the spec's
    ``"vocab"`` or 50257).
    """
    fam = spec.get("family")
    if fam == "cnn":
        return DartsNet(spec, num_classes, in_channels, image_size)
    check_spec(spec)
    if fam == "vit":
        from ghn.predefined import ViT

        return ViT(num_classes=num_classes, in_channels=in_channels, image_size=image_size,
                   patch_size=patch_size_for(image_size, int(spec["patches"])), dim=int(spec["dim"]),
                   depth=int(spec["depth"]), heads=int(spec["heads"]), mlp_ratio=float(spec["mlp"]),
                   pre_norm=bool(spec["pre_norm"]), pool=str(spec["pool"]), attn=str(spec["attn"]),
                   norm=str(spec["norm"]), qkv_bias=bool(spec["qkv_bias"]))
    if fam == "gpt":
        from ghn.predefined import GPT

        return GPT(vocab_size=int(vocab_size or spec.get("vocab", 50257)), block_size=int(spec["block"]),
                   dim=int(spec["dim"]), depth=int(spec["depth"]), heads=int(spec["heads"]),
                   mlp_ratio=float(spec["mlp"]), pre_norm=bool(spec["pre_norm"]), tie_embeddings=bool(spec["tie"]),
                   attn=str(spec["attn"]), norm=str(spec["norm"]))
    from ghn.predefined import build_predefined

    return build_predefined(str(spec["name"]), num_classes=num_classes, in_channels=in_channels,
                            image_size=image_size)


# ----------------------------------------------------------------------------------------------------------------
# inspection
# ----------------------------------------------------------------------------------------------------------------
def spec_ops(spec: Mapping[str, Any]) -> Counter:
    """Counts of cell ops (cnn) or a single family tag (others) in a spec."""
    if spec.get("family") != "cnn":
        return Counter({str(spec.get("family")): 1})
    return Counter(op for cell in (spec["normal"], spec["reduce"]) for node in _nodes(cell) for op, _ in node)


def describe(spec: Mapping[str, Any]) -> str:
    """A one-line human summary of a spec."""
    fam = spec.get("family")
    if fam == "cnn":
        return (f"cnn C={spec['C']} cells={spec['cells']} steps={spec['steps']} norm={spec['norm']} "
                f"act={spec['act']} stem={spec['stem']}{spec['stem_k']} params={count_params(spec):,}")
    if fam in ("vit", "gpt"):
        return (f"{fam} dim={spec['dim']} depth={spec['depth']} heads={spec['heads']} mlp={spec['mlp']} "
                f"attn={spec['attn']} norm={spec['norm']}")
    return f"predefined {spec.get('name')}"
