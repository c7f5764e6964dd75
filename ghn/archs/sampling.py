"""Sampling specs from a split's space with a ``random.Random`` (no global RNG touched)."""
from __future__ import annotations

import random
from typing import Any, List, Mapping, MutableMapping, Optional, Tuple

from ghn.archs.counting import _count_nonembedding, count_params
from ghn.archs.spec import (
    _ACT_WEIGHTS,
    _OP_WEIGHTS,
    CONV_OPS,
    GPT_ATTN,
    LEARNABLE_OPS,
    PREDEFINED_NAMES,
    SPACES,
    SPLITS,
    STEMS,
    TF_NORMS,
    VIT_ATTN,
    Spec,
    SplitSpace,
    _nodes,
    check_spec,
)


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
