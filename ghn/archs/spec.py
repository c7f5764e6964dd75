"""The architecture vocabulary and spec format: op/norm/activation names, split spaces, hashing, validation.

A spec is a compact JSON object (``family``: cnn, vit, gpt or predefined; see :mod:`ghn.archs`). Everything here
is pure data and checks: no torch modules are built.
"""
from __future__ import annotations

import hashlib
import json
from collections import Counter
from dataclasses import dataclass, field
from typing import Any, Dict, List, Mapping, Sequence, Tuple

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

@dataclass(frozen=True)
class SplitSpace:
    """The sampling distribution of one split (see docs/DESIGN.md, "Sampling distribution")."""

    p_vit: float = 0.13  # per draw; ~15% of accepted train specs (see docs/DESIGN.md, "Sampling distribution")
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

Spec = Dict[str, Any]


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
                f"act={spec['act']} stem={spec['stem']}{spec['stem_k']} params={_count(spec):,}")
    if fam in ("vit", "gpt"):
        return (f"{fam} dim={spec['dim']} depth={spec['depth']} heads={spec['heads']} mlp={spec['mlp']} "
                f"attn={spec['attn']} norm={spec['norm']}")
    return f"predefined {spec.get('name')}"


def _count(spec: Mapping[str, Any]) -> int:
    from ghn.archs.counting import count_params  # counting reads the vocabulary defined here

    return count_params(spec)


def patch_size_for(image_size: int, patches: int) -> int:
    """The divisor ``p`` of ``image_size`` whose ``image_size // p`` is closest to ``patches`` (ties: fewer tokens).

    28 px: patches 8 -> p 4 (7x7), patches 4 -> p 7; 32 px: patches 8 -> p 4, patches 4 -> p 8.
    """
    divisors = [p for p in range(1, image_size + 1) if image_size % p == 0]
    return min(divisors, key=lambda p: (abs(image_size // p - patches), -p))
