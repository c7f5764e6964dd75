"""Inspection of predicted parameters: are they degenerate (rank-1, identical across layers, badly scaled)?

Per tensor, against the model's default initialisation (``reset_parameters()``):

- ``rms_ratio``: RMS of the predicted tensor / RMS of default init;
- ``eff_rank`` / ``default_eff_rank``: effective rank ``(sum s)^2 / sum s^2`` of the weight reshaped to
  (out, in * kernel), and its ratio;
- ``top_energy``: fraction of the energy ``s_1^2 / sum s^2`` in the top singular value;
- ``role_cos`` (matrices): the largest |cosine| to another matrix of the same role (op, shape) elsewhere in the
  model; about 0 for default init;
- ``dup_rows`` (matrices with >= 8 inputs per output): the fraction of output channels whose weights are a copy
  (|cosine| > 0.99) of another output channel's; 0 for default init. Copies get equal gradients, so fine-tuning
  cannot separate them: the layer trains as if it were narrower.

    >>> from ghn.inspect import inspect_model
    >>> rep = inspect_model(model)            # predicts with the shipped hypernetwork; does not change ``model``
    >>> print(rep)                            # one screen: summary + the worst tensors
"""
from __future__ import annotations

import copy
import math
import statistics
from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional, Sequence

import torch
import torch.nn as nn
from torch import Tensor

# Thresholds of the "degenerate" flags (also the acceptance numbers of the rank-collapse work, docs/BENCHMARKS.md)
MIN_RANK_RATIO = 0.25
MAX_TOP_ENERGY = 0.5
MAX_ROLE_COS = 0.9
MAX_DUP_ROWS = 0.25
RMS_RANGE = (0.25, 4.0)


def spectrum(w: Tensor, max_rows: int = 4096) -> tuple:
    """``(effective rank, top-singular-value energy)`` of ``w`` reshaped to (out, -1); rows are subsampled
    (evenly) above ``max_rows`` to bound the cost on huge tables."""
    m = w.detach().float().reshape(w.shape[0], -1)
    if m.shape[0] > max_rows:
        m = m[torch.linspace(0, m.shape[0] - 1, max_rows).long()]
    s = torch.linalg.svdvals(m)
    e = s.pow(2).sum()
    if e <= 0:
        return 0.0, 1.0
    return float(s.sum() ** 2 / e), float(s[0] ** 2 / e)


def duplicate_rows(w: Tensor, max_rows: int = 1024, threshold: float = 0.99) -> Optional[float]:
    """Fraction of the rows of ``w`` (as (out, -1)) with |cosine| > ``threshold`` to another row; None when rows
    have fewer than 8 entries (random short rows are often alike). Rows are subsampled (evenly) above ``max_rows``."""
    m = w.detach().float().reshape(w.shape[0], -1)
    if m.shape[0] < 2 or m.shape[1] < 8:
        return None
    if m.shape[0] > max_rows:
        m = m[torch.linspace(0, m.shape[0] - 1, max_rows).long()]
    r = torch.nn.functional.normalize(m, dim=1)
    g = (r @ r.t()).abs().fill_diagonal_(0.0)
    return float((g.max(dim=1).values > threshold).float().mean())


def _cos(a: Tensor, b: Tensor) -> float:
    a, b = a.detach().float().flatten(), b.detach().float().flatten()
    d = a.norm() * b.norm()
    return float((a @ b).abs() / d) if d > 0 else 1.0


@dataclass
class TensorStats:
    """Statistics of one predicted tensor (see module docstring)."""

    name: str
    shape: tuple
    role: str
    rms_ratio: Optional[float]
    eff_rank: Optional[float] = None
    default_eff_rank: Optional[float] = None
    top_energy: Optional[float] = None
    role_cos: Optional[float] = None
    dup_rows: Optional[float] = None

    @property
    def rank_ratio(self) -> Optional[float]:
        if self.eff_rank is None or not self.default_eff_rank:
            return None
        return self.eff_rank / self.default_eff_rank

    def flags(self) -> List[str]:
        """Why this tensor looks degenerate (empty when healthy)."""
        out = []
        if self.rank_ratio is not None and self.rank_ratio < MIN_RANK_RATIO:
            out.append(f"low rank ({self.eff_rank:.1f} vs {self.default_eff_rank:.1f})")
        if self.top_energy is not None and self.top_energy > MAX_TOP_ENERGY:
            out.append(f"top-sigma energy {self.top_energy:.2f}")
        if self.role_cos is not None and self.role_cos > MAX_ROLE_COS:
            out.append(f"same as another layer (cos {self.role_cos:.2f})")
        if self.dup_rows is not None and self.dup_rows > MAX_DUP_ROWS:
            out.append(f"{100 * self.dup_rows:.0f}% of output channels are copies")
        if self.rms_ratio is not None and not (RMS_RANGE[0] <= self.rms_ratio <= RMS_RANGE[1]):
            out.append(f"scale x{self.rms_ratio:.2g} of default")
        return out


def _median(xs: Sequence[Optional[float]]) -> Optional[float]:
    xs = [x for x in xs if x is not None and math.isfinite(x)]
    return statistics.median(xs) if xs else None


@dataclass
class Inspection:
    """Per-tensor statistics of one model's predicted parameters, with a one-screen summary."""

    model: str
    tensors: List[TensorStats] = field(default_factory=list)

    def summary(self) -> Dict[str, Any]:
        mats = [t for t in self.tensors if t.eff_rank is not None]
        return {"tensors": len(self.tensors), "matrices": len(mats),
                "median_rank_ratio": _median([t.rank_ratio for t in mats]),
                "median_top_energy": _median([t.top_energy for t in mats]),
                "median_role_cos": _median([t.role_cos for t in self.tensors]),
                "median_rms_ratio": _median([t.rms_ratio for t in self.tensors]),
                "median_dup_rows": _median([t.dup_rows for t in mats]),
                "degenerate": sum(bool(t.flags()) for t in self.tensors)}

    def __str__(self) -> str:
        return format_summary(self.model, self.summary(), [t for t in self.tensors if t.flags()])


def _fmt(v: Optional[float]) -> str:
    return "-" if v is None else f"{v:.2f}"


def format_summary(name: str, s: Dict[str, Any], flagged: Sequence[TensorStats] = (), top: int = 8) -> str:
    lines = [f"{name}: {s['tensors']} tensors ({s['matrices']} matrices) | effective rank / default "
             f"{_fmt(s['median_rank_ratio'])} | top-sigma energy {_fmt(s['median_top_energy'])} | same-role cos "
             f"{_fmt(s['median_role_cos'])} | RMS / default {_fmt(s['median_rms_ratio'])} | copied channels "
             f"{_fmt(s.get('median_dup_rows'))} (medians) | "
             f"degenerate: {s['degenerate']}"]
    for t in list(flagged)[:top]:
        lines.append(f"  ! {t.name} {tuple(t.shape)}: " + "; ".join(t.flags()))
    if len(flagged) > top:
        lines.append(f"  ... and {len(flagged) - top} more")
    return "\n".join(lines)


def default_init(model: nn.Module, seed: int = 0) -> nn.Module:
    """A copy of ``model`` re-initialised by every submodule's own ``reset_parameters()`` (seeded)."""
    ref = copy.deepcopy(model)
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        for m in ref.modules():
            if hasattr(m, "reset_parameters") and m is not ref:
                m.reset_parameters()
    return ref


def inspect_params(params: Dict[str, Tensor], reference: Dict[str, Tensor], roles: Optional[Dict[str, str]] = None,
                   name: str = "model") -> Inspection:
    """Statistics of ``params`` (predicted) against ``reference`` (default init), tensor by tensor.

    ``roles`` maps names to a role label (e.g. the owning op); tensors compare their cosine only with tensors of
    the same role and shape. Tied aliases (the same tensor object under two names) are counted once.
    """
    seen, items = set(), []
    for k, t in params.items():
        if id(t) in seen or k not in reference:
            continue
        seen.add(id(t))
        items.append((k, t))
    by_role: Dict[str, List[int]] = {}
    stats = []
    for i, (k, t) in enumerate(items):
        ref = reference[k].detach().float()
        rr = ref.pow(2).mean().sqrt()
        rms = float(t.detach().float().pow(2).mean().sqrt() / rr) if rr > 0 else None  # zero-init biases: no ratio
        role = f"{(roles or {}).get(k, '')}:{t.dim()}:{tuple(t.shape)}"
        st = TensorStats(k, tuple(t.shape), role, rms)
        shape = tuple(t.shape)
        while len(shape) > 1 and shape[0] == 1:  # (1, n, d) position tables are (n, d) matrices
            shape = shape[1:]
        if len(shape) >= 2 and min(shape[0], math.prod(shape[1:])) > 1:
            st.eff_rank, st.top_energy = spectrum(t.reshape(shape))
            st.default_eff_rank, _ = spectrum(reference[k].reshape(shape))
            st.dup_rows = duplicate_rows(t.reshape(shape))
            by_role.setdefault(role, []).append(i)  # vectors (norm gains all 1 by default) are alike by design
        stats.append(st)
    for idx in by_role.values():
        for i in idx:
            others = [_cos(items[i][1], items[j][1]) for j in idx if j != i]
            stats[i].role_cos = max(others) if others else None
    return Inspection(name, stats)


def inspect_model(model: nn.Module, ghn: Any = None, example_input: Any = None,
                  params: Optional[Dict[str, Tensor]] = None, strict: bool = True, seed: int = 0) -> Inspection:
    """Predict ``model``'s parameters (or take ``params``) and compare them with its default init.

    ``model`` is not modified. ``ghn`` is a hypernetwork, a checkpoint path, or None for the shipped one.
    """
    from ghn.graph import ArchGraph
    from ghn.hypernet import GraphHyperNetwork, load_pretrained

    graph = ArchGraph.from_module(model, example_input, strict=strict)
    if params is None:
        hyper = ghn if isinstance(ghn, GraphHyperNetwork) else load_pretrained(ghn)
        with torch.no_grad():
            params = hyper.predict_params(model, graph=graph)
    roles = {r.name: r.op for _, r in graph.param_refs()}
    reference = dict(default_init(model, seed).named_parameters())
    return inspect_params(params, reference, roles, type(model).__name__)


def zoo_summary(inspections: Sequence[Inspection]) -> str:
    """One screen for many models: one line per model, then the medians over the zoo."""
    rows = [(i.model, i.summary()) for i in inspections]
    lines = [f"{'model':32s} {'rank ratio':>10s} {'top energy':>10s} {'role cos':>9s} {'RMS ratio':>9s} "
             f"{'degenerate':>10s}"]
    for name, s in rows:
        lines.append(f"{name[:32]:32s} {_fmt(s['median_rank_ratio']):>10s} {_fmt(s['median_top_energy']):>10s} "
                     f"{_fmt(s['median_role_cos']):>9s} {_fmt(s['median_rms_ratio']):>9s} {s['degenerate']:>10d}")
    if rows:
        med = {k: _median([s[k] for _, s in rows]) for k in
               ("median_rank_ratio", "median_top_energy", "median_role_cos", "median_rms_ratio")}
        lines.append(f"{'median over ' + str(len(rows)) + ' models':32s} {_fmt(med['median_rank_ratio']):>10s} "
                     f"{_fmt(med['median_top_energy']):>10s} {_fmt(med['median_role_cos']):>9s} "
                     f"{_fmt(med['median_rms_ratio']):>9s} {sum(s['degenerate'] for _, s in rows):>10d}")
    return "\n".join(lines)


__all__ = ["Inspection", "TensorStats", "inspect_model", "inspect_params", "spectrum", "duplicate_rows", "default_init",
           "zoo_summary", "format_summary"]
