"""The low-rank decoder: a node embedding -> parameter tensors of ANY shape, without tiling.

A weight of shape (out, in, *kernel) is emitted as a rank-r CP factorisation

    W[o, j, p] = sum_r A[o, r] * B[j, r] * K[p, r],   A = E(o) M_A,  B = E(j) M_B,  K = P(p) M_K

where ``E(i)`` is a fixed random-Fourier code of the channel index ``i`` (any index, so any width: 8192 channels
or a 50k-row embedding table are native), ``P(p)`` a code of the kernel offset, and ``M_A, M_B, M_K`` are
produced from the node's context vector by small linear heads. The hypernetwork's size therefore does not depend
on the widest layer. Vectors (biases, norm gains/shifts, class tokens) are ``v[i] = E(i) . m_kind``.

Against rank collapse (docs/DESIGN.md, "decoder"), by construction rather than by training luck:

- every weight is a mix ``cos(t) * Z + sin(t) * P`` of a deterministic full-rank Gaussian base ``Z`` (seeded by the
  parameter's name and shape, so two layers never share it and the same model always gets the same weights) and
  the predicted low-rank part ``P``, each at unit RMS; ``t`` is predicted per tensor but bounded by
  ``max_pred_share`` (the largest energy fraction ``sin(t)^2`` the predicted part may take);
- optionally (``orth``), ``P`` has a flat spectrum: its factors are orthonormalised (QR) and the small core is
  pushed to an orthogonal matrix by Newton-Schulz iterations, so ``P`` is a rank-``r`` semi-orthogonal map;
- optionally (``noise_share``), a fixed name-seeded Gaussian takes that energy fraction of the final matrix. With
  the identity base, channels duplicated by a widening (and every stem filter of a 1-channel input) are otherwise
  exact copies, and SGD cannot tell copies apart: predicted init then fine-tunes worse than default init.

Scaling is fan-in aware: the raw matrix is normalised to RMS ``sqrt(1 / fan_in)`` (LeCun variance; for embedding
tables fan_in is the embedding width) times a learned, op- and layer-dependent factor in ``[e^-2, e^2]`` (so a
ReLU conv can move to Kaiming's sqrt(2 / fan_in) and a residual branch can shrink), so predictions start with a
sensible variance and training only learns deviations. Gains start at 1, biases and shifts near 0. A matrix whose
output feeds normalisations only (``default_scale_under_norm``) takes PyTorch's default-init RMS
``sqrt(1 / (3 fan_in))`` instead: the normalisation divides its scale out, so the loss cannot teach it (the factor
stayed near its initial 1, 1.5x default), and under a normalisation the scale sets the effective learning rate of
fine-tuning (``lr / scale^2``): the default scale is the one SGD recipes are tuned for. ``norm_fed_scale`` multiplies
it (a predicted network's loss is more sensitive than default init's, so the same learning rate moves it more).
"""
from __future__ import annotations

import functools
import hashlib
import itertools
import math
from typing import AbstractSet, Callable, Dict, List, Optional, Sequence, Tuple

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch import Tensor

from ghn.tracing import PARAM_KINDS, VECTOR_KINDS, ParamRef, squeeze_shape

MAX_KERNEL_DIMS = 3
# (centre, half-width) of bounded vector predictions: unbounded ones drifted far from any default init in training
# (class biases of +-6, MLP biases of +-2.6, the same in every layer) and made fine-tuning from them slow.
VECTOR_BOUNDS = {"bias": (0.0, 0.1), "shift": (0.0, 0.1), "gain": (1.0, 0.25), "token": (0.0, 1.0)}
NUM_PARAM_FEATURES = len(PARAM_KINDS) + 5
GROUPED_CONVS = frozenset({"conv_depthwise", "conv_grouped"})
BASE_KINDS = ("gaussian", "identity", "mixed", "shifted")
EQUAL_ROWS = ("none", "norm_fed", "all")
# RMS of nn.Linear / nn.ConvNd default init (kaiming_uniform_ with a = sqrt(5): U(+-1/sqrt(fan_in))), times sqrt(fan_in)
DEFAULT_INIT_RMS = 1.0 / math.sqrt(3.0)


class DecoderShapeError(ValueError):
    """A parameter has a shape the decoder cannot emit (e.g. more than 3 kernel dimensions)."""


def param_shape(ref: ParamRef) -> Tuple[int, ...]:
    """The shape the decoder emits for ``ref``: leading singleton dims dropped, at most (out, in, k1, k2, k3)."""
    shape = squeeze_shape(ref.shape)
    if ref.kind != "matrix" and len(shape) > 1:  # a gain stored (out, 1, 1): weight_norm's g
        shape = tuple(d for d in shape if d != 1) or (1,)
    if ref.kind == "matrix" and len(shape) > 2 + MAX_KERNEL_DIMS:
        raise DecoderShapeError(
            f"{ref.name}: shape {tuple(ref.shape)} has {len(shape) - 2} kernel dims; the decoder emits at most "
            f"{MAX_KERNEL_DIMS} (conv1d/2d/3d)")
    if ref.kind != "matrix" and len(shape) > 1:
        raise DecoderShapeError(f"{ref.name}: a {ref.kind} vector must be 1-D, got shape {tuple(ref.shape)}")
    if ref.kind not in PARAM_KINDS:
        raise DecoderShapeError(f"{ref.name}: unknown parameter kind {ref.kind!r}")
    return shape


def param_features(ref: ParamRef) -> List[float]:
    """Descriptor of a parameter: kind one-hot, log sizes of out/in/kernel, fan-in, transposed flag."""
    shape = param_shape(ref)
    onehot = [float(ref.kind == k) for k in PARAM_KINDS]
    out = shape[0] if shape else 1
    inp = shape[1] if len(shape) > 1 else 1
    k = math.prod(shape[2:]) if len(shape) > 2 else 1
    lg = lambda v: math.log2(1 + v) / 8  # noqa: E731
    return onehot + [lg(out), lg(inp), lg(k), lg(ref.fan_in), float(ref.transposed)]


class LowRankDecoder(nn.Module):
    """Decodes context vectors into weights of arbitrary shape (see module docstring)."""

    def __init__(self, hidden: int = 64, rank: int = 32, code_dim: int = 64, kernel_code_dim: int = 16,
                 code_seed: int = 0, base: bool = True, orth: bool = True, max_pred_share: float = 0.9,
                 bounded_vectors: bool = True, base_kind: str = "identity", noise_share: float = 0.5,
                 default_scale_under_norm: bool = True, equal_rows: str = "none",
                 max_dir_ratio: float = 0.0, free_rows: float = 0.0,
                 norm_fed_scale: float = 1.0, max_dir_ratio_loose: float = 0.0,
                 max_dir_ratio_attn: float = 0.0):  # GHNConfig's defaults
        super().__init__()
        if not norm_fed_scale > 0:
            raise ValueError(f"norm_fed_scale must be > 0, got {norm_fed_scale}")
        self.norm_fed_scale = norm_fed_scale
        if not 0.0 <= free_rows < 1.0:
            raise ValueError(f"free_rows must be in [0, 1), got {free_rows}")
        self.free_rows = free_rows
        if max_dir_ratio < 0:
            raise ValueError(f"max_dir_ratio must be >= 0 (0: no cap), got {max_dir_ratio}")
        if max_dir_ratio > 0 and not base:
            raise ValueError("max_dir_ratio caps the mixing angle of the base design: it needs base=True")
        self.max_dir_ratio = max_dir_ratio
        for name, v in (("max_dir_ratio_loose", max_dir_ratio_loose), ("max_dir_ratio_attn", max_dir_ratio_attn)):
            if v < 0 or (v > 0 and max_dir_ratio == 0):  # per-model caps (GraphHyperNetwork.dir_cap) refine a cap
                raise ValueError(f"{name} must be >= 0 and needs max_dir_ratio > 0, got {v}")
        if equal_rows not in EQUAL_ROWS:
            raise ValueError(f"equal_rows must be one of {EQUAL_ROWS}, got {equal_rows!r}")
        self.equal_rows = equal_rows
        if not 0.0 < max_pred_share <= 1.0:
            raise ValueError(f"max_pred_share must be in (0, 1], got {max_pred_share}")
        if not 0.0 <= noise_share < 1.0:
            raise ValueError(f"noise_share must be in [0, 1), got {noise_share}")
        if base_kind not in BASE_KINDS:
            raise ValueError(f"base_kind must be one of {BASE_KINDS}, got {base_kind!r}")
        if not 0 < rank <= code_dim:  # A = E M_A: an index code of code_dim dims carries at most that rank
            raise ValueError(f"rank must be in [1, code_dim={code_dim}], got {rank}")
        self.rank, self.code_dim, self.kernel_code_dim = rank, code_dim, kernel_code_dim
        self.base, self.orth, self.bounded_vectors, self.base_kind = base, orth, bounded_vectors, base_kind
        self.max_angle = math.asin(math.sqrt(max_pred_share))
        self.noise_share, self.default_scale_under_norm = noise_share, default_scale_under_norm
        ctx = 2 * hidden
        self.context = nn.Sequential(nn.Linear(hidden + NUM_PARAM_FEATURES, ctx), nn.GELU(),
                                     nn.Linear(ctx, ctx), nn.GELU())
        self.head_a = nn.Linear(ctx, code_dim * rank)
        self.head_b = nn.Linear(ctx, code_dim * rank)
        self.head_k = nn.Linear(ctx, kernel_code_dim * rank)
        self.head_scale = nn.Linear(ctx, 1)
        self.head_vec = nn.Linear(ctx, code_dim * len(VECTOR_KINDS))
        heads = [self.head_scale, self.head_vec]
        if base:
            self.head_gate = nn.Linear(ctx, 1)  # mixing angle of the predicted part (sigmoid of it, times max_angle)
            heads.append(self.head_gate)
        for head in heads:
            nn.init.normal_(head.weight, std=1e-3)
            nn.init.zeros_(head.bias)
        # Fixed random-Fourier codes (buffers: saved with the checkpoint, identical on every device).
        g = torch.Generator().manual_seed(code_seed)
        self.register_buffer("freq", torch.rand(code_dim, generator=g) * math.pi)
        self.register_buffer("phase", torch.rand(code_dim, generator=g) * 2 * math.pi)
        self.register_buffer("kfreq", torch.randn(kernel_code_dim, MAX_KERNEL_DIMS, generator=g))
        self.register_buffer("kphase", torch.rand(kernel_code_dim, generator=g) * 2 * math.pi)

    def grown_state(self, old: Dict[str, Tensor], old_rank: int, prefix: str = "") -> Dict[str, Tensor]:
        """The factor heads of a rank-``old_rank`` decoder's state ``old`` grown to this decoder's rank: component
        ``i < old_rank`` of every code dimension keeps its trained weights, the others take this decoder's own
        (fresh) init rescaled to the trained head's RMS, so their gradients start at the trained ones' size."""
        out = {}
        for name, d in (("head_a", self.code_dim), ("head_b", self.code_dim), ("head_k", self.kernel_code_dim)):
            for kind in ("weight", "bias"):
                mine = getattr(self, name).state_dict()[kind].detach()
                was = old[f"{name}.{kind}"].to(mine)
                grown = mine.reshape(d, self.rank, -1).clone()
                trained = was.reshape(d, old_rank, -1)
                fresh = grown[:, old_rank:]
                rms = trained.pow(2).mean().sqrt()
                grown[:, old_rank:] = fresh * (rms / fresh.pow(2).mean().sqrt().clamp_min(1e-12))
                grown[:, :old_rank] = trained
                out[f"{prefix}{name}.{kind}"] = grown.reshape(mine.shape)
        return out

    # -- codes -----------------------------------------------------------------------------------------------
    def index_code(self, n: int) -> Tensor:
        """``E``: [n, code_dim] deterministic pseudo-random code of indices 0..n-1 (unit-norm rows on average)."""
        i = torch.arange(n, device=self.freq.device, dtype=self.freq.dtype)
        return torch.cos(i[:, None] * self.freq + self.phase) * math.sqrt(2.0 / self.code_dim)

    def kernel_code(self, kernel: Sequence[int]) -> Tensor:
        """``P``: [prod(kernel), kernel_code_dim] code of kernel offsets relative to the kernel centre."""
        dev, dt = self.kfreq.device, self.kfreq.dtype
        if not kernel:
            offs = torch.zeros(1, MAX_KERNEL_DIMS, device=dev, dtype=dt)
        else:
            axes = [torch.arange(k, device=dev, dtype=dt) - (k - 1) / 2 for k in kernel]
            grid = torch.stack(torch.meshgrid(*axes, indexing="ij"), -1).reshape(-1, len(kernel))
            offs = torch.zeros(grid.shape[0], MAX_KERNEL_DIMS, device=dev, dtype=dt)
            offs[:, MAX_KERNEL_DIMS - len(kernel):] = grid
        return torch.cos(offs @ self.kfreq.t() + self.kphase) * math.sqrt(2.0 / self.kernel_code_dim)

    # -- decoding --------------------------------------------------------------------------------------------
    def forward(self, node_emb: Tensor, refs: Sequence[ParamRef], trusted_ops: Optional[AbstractSet[str]] = None,
                norm_fed: Optional[Sequence[bool]] = None, caps: Optional[Sequence[float]] = None) -> List[Tensor]:
        """Decode one tensor per ref (``node_emb[i]`` is the embedding of the node owning ``refs[i]``).

        Refs of the same shape and kind are decoded together in one batched einsum; the result for a ref does
        not depend on which other refs are in the batch. With ``trusted_ops`` (the op types the hypernetwork was
        trained on), a matrix of any other op type gets the neutral scale factor 1 (LeCun RMS): its learned factor
        would be an extrapolation (an image-trained hypernetwork never saw an embedding table). ``norm_fed[i]``
        tells whether the output of ``refs[i]``'s node feeds normalisations only (``default_scale_under_norm``);
        ``caps[i]`` the direction cap of ``refs[i]``'s model (``GraphHyperNetwork.dir_cap``; default
        ``max_dir_ratio``), used when ``max_dir_ratio`` > 0.
        """
        if len(refs) == 0:
            return []
        shapes = [param_shape(r) for r in refs]
        feats = torch.tensor([param_features(r) for r in refs], device=node_emb.device, dtype=node_emb.dtype)
        ctx = self.context(torch.cat([node_emb, feats], -1))
        out: List[Tensor] = [None] * len(refs)  # type: ignore[list-item]
        groups: Dict[Tuple, List[int]] = {}
        for i, (r, s) in enumerate(zip(refs, shapes)):
            groups.setdefault((r.kind, s), []).append(i)
        jobs = []  # matrix groups: (indices, r x r core awaiting Newton-Schulz or None, finishing function)
        for (kind, shape), idx in groups.items():
            c = ctx[idx]
            if kind == "matrix":
                fed = [bool(norm_fed[i]) for i in idx] if norm_fed is not None else None
                cp = [float(caps[i]) for i in idx] if caps is not None else None
                jobs.append((idx, *self._matrices(c, shape, [refs[i] for i in idx], trusted_ops, fed, cp)))
            else:
                ws = self._vectors(c, shape[0] if shape else 1, kind)
                for j, i in enumerate(idx):
                    out[i] = ws[j].reshape(refs[i].shape)
        cores = iter(newton_schulz_many([core for _, core, _ in jobs if core is not None]))
        for idx, core, finish in jobs:  # every group's core flattened in one batched call
            ws = finish(next(cores) if core is not None else None)
            for j, i in enumerate(idx):
                out[i] = ws[j].reshape(refs[i].shape)
        return out

    def _matrices(self, c: Tensor, shape: Tuple[int, ...], refs: Sequence[ParamRef],
                  trusted_ops: Optional[AbstractSet[str]] = None, norm_fed: Optional[Sequence[bool]] = None,
                  caps: Optional[Sequence[float]] = None
                  ) -> Tuple[Optional[Tensor], Callable[[Optional[Tensor]], Tensor]]:
        """``(core, finish)``: with ``orth`` the r x r core of :func:`flat_low_rank` whose spectrum is still to be
        flattened (``forward`` does every group's in one :func:`newton_schulz_many` call), else None; ``finish``
        takes the flattened core (or None) and returns the group's tensors."""
        g, r, d = c.shape[0], self.rank, self.code_dim
        n_out, n_in, kernel = shape[0], shape[1], shape[2:]
        e_out, e_in = self.index_code(n_out), self.index_code(n_in)
        a = torch.einsum("od,gdr->gor", e_out, self.head_a(c).view(g, d, r))
        b = torch.einsum("jd,gdr->gjr", e_in, self.head_b(c).view(g, d, r))
        k = torch.einsum("pd,gdr->gpr", self.kernel_code(kernel), self.head_k(c).view(g, self.kernel_code_dim, r))
        fan_in = torch.tensor([float(ref.fan_in) for ref in refs], device=c.device, dtype=c.dtype)
        factor = torch.exp(2 * torch.tanh(self.head_scale(c).squeeze(-1) / 2))
        if trusted_ops is not None and any(ref.op not in trusted_ops for ref in refs):
            seen = torch.tensor([ref.op in trusted_ops for ref in refs], device=c.device)
            factor = torch.where(seen, factor, torch.ones_like(factor))
        if self.default_scale_under_norm and norm_fed is not None and any(norm_fed):
            fed = torch.tensor(norm_fed, device=c.device)
            factor = torch.where(fed, torch.full_like(factor, DEFAULT_INIT_RMS * self.norm_fed_scale), factor)
        scale = fan_in.rsqrt() * factor
        if self.orth:  # the (out) x (in, kernel) unfolding: W = A C^T with C[(j, p)] = B[j] * K[p]
            cols = (b[:, :, None, :] * k[:, None, :, :]).reshape(g, n_in * k.shape[1], r)
            q1, q2, core = low_rank_core(a, cols)
            return core, lambda flat: self._finish(
                (q1 @ flat @ q2.transpose(1, 2)).to(a.dtype), c, shape, refs, scale, norm_fed, caps)
        # (A * K) @ B^T as one batched matmul: the same FLOPs as the 3-way einsum, but through BLAS
        ak = (a[:, :, None, :] * k[:, None, :, :]).reshape(g, n_out * k.shape[1], r)
        w = torch.bmm(ak, b.transpose(1, 2)).view(g, n_out, k.shape[1], n_in).transpose(2, 3)
        return None, lambda _: self._finish(w, c, shape, refs, scale, norm_fed, caps)

    def _finish(self, w: Tensor, c: Tensor, shape: Tuple[int, ...], refs: Sequence[ParamRef], scale: Tensor,
                norm_fed: Optional[Sequence[bool]], caps: Optional[Sequence[float]] = None) -> Tensor:
        """The predicted low-rank part ``w`` [g, ...] of a group, mixed with the base and the noise floor, scaled."""
        g, n_out, n_in, kernel = c.shape[0], shape[0], shape[1], shape[2:]
        w = w / _rms(w)
        if self.base:  # same values whatever the layout: (out, in * kernel) or (out, in, kernel)
            t = self.max_angle * torch.sigmoid(self.head_gate(c).squeeze(-1)).view(g, *([1] * (w.dim() - 1)))
            if self.max_dir_ratio > 0:  # per tensor: its model's cap
                m = min(n_out, n_in * math.prod(kernel))
                kappas = caps if caps is not None else [self.max_dir_ratio] * g
                t = torch.minimum(t, torch.tensor([self._dir_cap_angle(m, k) for k in kappas], device=t.device,
                                                  dtype=t.dtype).view_as(t))
            z = self._base(refs, n_out, n_in, kernel, w.shape[1:], w.device, w.dtype)
            w = torch.cos(t) * z + torch.sin(t) * w
            w = w / _rms(w)
        if self.noise_share > 0:  # a fixed full-rank floor, distinct per layer: breaks the symmetry of duplicates
            z = base_weights(refs, w.shape[1:], w.device, w.dtype, salt="noise")
            w = math.sqrt(1.0 - self.noise_share) * w + math.sqrt(self.noise_share) * z
            w = w / _rms(w)
        if self.free_rows > 0 and norm_fed is not None and any(norm_fed):
            w = self._free_rows(w, refs, norm_fed)
        if self.equal_rows != "none":
            w = self._equalize_rows(w, refs, norm_fed)
        w = w * scale.view(g, *([1] * (w.dim() - 1)))
        return w.reshape(g, n_out, n_in, *kernel)

    def _dir_cap_angle(self, m: int, kappa: float) -> float:
        """The largest mixing angle at which each of the predicted part's ``rank`` directions carries at most
        ``kappa`` (``max_dir_ratio``) times the energy of each of the other ``m`` directions of the final matrix
        (after the noise floor): ``f m / ((1 - f) r) <= kappa`` with ``f = (1 - noise_share) sin(t)^2``. The
        predicted part is rank ``r`` whatever the width, so at a fixed share its directions grow ``m / r`` times
        stronger than the rest on wide layers (a 512-channel conv: 4.7x at share 0.2); the cap keeps that ratio
        width-independent."""
        kr = kappa * min(self.rank, m)
        f_max = kr / (m + kr) / (1.0 - self.noise_share)
        return math.asin(math.sqrt(min(1.0, f_max)))

    def _equalize_rows(self, w: Tensor, refs: Sequence[ParamRef], norm_fed: Optional[Sequence[bool]]) -> Tensor:
        """Every output row (filter) of the selected matrices at the same RMS as the whole matrix (``equal_rows``):
        ``"norm_fed"`` only matrices whose output feeds normalisations only, ``"all"`` every one. Transposed
        convolutions (rows are inputs) are left as they are."""
        pick = [not r.transposed and (self.equal_rows == "all" or bool(norm_fed and norm_fed[i]))
                for i, r in enumerate(refs)]
        if not any(pick):
            return w
        flat = w.reshape(w.shape[0], w.shape[1], -1)
        eq = flat * (flat.pow(2).mean((1, 2), keepdim=True) / flat.pow(2).mean(2, keepdim=True).clamp_min(1e-20)).sqrt()
        mask = torch.tensor(pick, device=w.device).view(-1, 1, 1)
        return torch.where(mask, eq, flat).view_as(w)

    def _free_rows(self, w: Tensor, refs: Sequence[ParamRef], norm_fed: Sequence[bool]) -> Tensor:
        """The last ``free_rows`` fraction of the output rows of every matrix feeding normalisations only replaced
        by a fixed name-seeded Gaussian (``free_rows``); transposed convolutions (rows are inputs) are left alone."""
        n_out = w.shape[1]
        first = n_out - round(n_out * self.free_rows)
        pick = [bool(f) and not r.transposed for f, r in zip(norm_fed, refs)]
        if first >= n_out or not any(pick):
            return w
        z = base_weights(refs, w.shape[1:], w.device, w.dtype, salt="free")
        rows = torch.arange(n_out, device=w.device) >= first
        mask = torch.tensor(pick, device=w.device).view(-1, 1) & rows.view(1, -1)
        return torch.where(mask.view(*mask.shape, *([1] * (w.dim() - 2))), z, w)

    def _base(self, refs: Sequence[ParamRef], n_out: int, n_in: int, kernel: Sequence[int], shape: Sequence[int],
              device, dtype) -> Tensor:
        """The deterministic base ``Z`` [len(refs) or 1, *shape] at unit RMS (see ``base_kind``)."""
        if self.base_kind == "gaussian":
            return base_weights(refs, shape, device, dtype)
        eye = identity_base(n_out, n_in, kernel, device, dtype).reshape(1, *shape)
        if self.base_kind == "shifted":  # grouped convs keep the plain identity: a group's copies are other groups
            plain = [r.op in GROUPED_CONVS for r in refs]
            if all(plain):
                return eye
            shift = identity_base(n_out, n_in, kernel, device, dtype, shifted=True).reshape(1, *shape)
            return torch.cat([eye if p else shift for p in plain]) if any(plain) else shift
        if self.base_kind == "identity":
            return eye
        z = (eye + base_weights(refs, shape, device, dtype)) / math.sqrt(2.0)  # "mixed": half the energy each
        return z / _rms(z)

    def _vectors(self, c: Tensor, n: int, kind: str) -> Tensor:
        k = VECTOR_KINDS.index(kind)
        m = self.head_vec(c).view(c.shape[0], len(VECTOR_KINDS), self.code_dim)[:, k]
        v = m @ self.index_code(n).t()  # [g, n]
        if self.bounded_vectors:  # by construction within the range of a default init (VECTOR_BOUNDS)
            return VECTOR_BOUNDS[kind][0] + VECTOR_BOUNDS[kind][1] * torch.tanh(v)
        return 1.0 + v if kind == "gain" else v


def _rms(w: Tensor) -> Tensor:
    """Per-tensor RMS over all but the first (group) dimension, kept broadcastable."""
    return w.pow(2).mean(dim=tuple(range(1, w.dim())), keepdim=True).add(1e-12).sqrt()


def _newton_schulz(m: Tensor, steps: int = 6) -> Tensor:
    """Push every non-negligible singular value of ``m`` [g, p, q] to about 1 (quintic Newton-Schulz iteration).

    Differentiable and free of SVD (whose gradient is unstable for repeated singular values); the result has
    singular values in roughly [0.7, 1.2], i.e. a nearly flat spectrum with the singular vectors of ``m``.
    """
    wide = m.shape[-2] > m.shape[-1]
    x = m.transpose(-1, -2) if wide else m
    x = x / (x.flatten(1).norm(dim=1).view(-1, 1, 1) + 1e-7)
    for _ in range(steps):
        xx = x @ x.transpose(-1, -2)
        x = 3.4445 * x + (-4.7750 * xx + 2.0315 * xx @ xx) @ x
    return x.transpose(-1, -2) if wide else x


def newton_schulz_many(ms: Sequence[Tensor], steps: int = 6) -> List[Tensor]:
    """:func:`_newton_schulz` of every ``m`` [g_i, p_i, q_i] in one batched call (per-call overhead dominates at
    these sizes: about 50 small matmuls per call, forward and backward). Each is put in its wide orientation and
    zero-padded to the largest; zero rows and columns stay zero under the iteration and do not change the norm, so
    each result is its own call's, up to float rounding."""
    if not ms:
        return []
    tall = [m.shape[-2] > m.shape[-1] for m in ms]
    ms = [m.transpose(-1, -2) if t else m for m, t in zip(ms, tall)]
    p, q = max(m.shape[-2] for m in ms), max(m.shape[-1] for m in ms)
    big = torch.cat([F.pad(m, (0, q - m.shape[-1], 0, p - m.shape[-2])) for m in ms])
    flat = _newton_schulz(big, steps).split([m.shape[0] for m in ms])
    out = [f[:, :m.shape[-2], :m.shape[-1]] for f, m in zip(flat, ms)]
    return [o.transpose(-1, -2) if t else o for o, t in zip(out, tall)]


def low_rank_core(rows: Tensor, cols: Tensor) -> Tuple[Tensor, Tensor, Tensor]:
    """``(Q_rows, Q_cols, R_rows R_cols^T)`` of reduced QRs of both factors, in float64 (cheap at this size, and
    batch-independent to float32 precision): ``rows @ cols^T = Q_rows core Q_cols^T``."""
    q1, r1 = torch.linalg.qr(rows.double())
    q2, r2 = torch.linalg.qr(cols.double())
    return q1, q2, r1 @ r2.transpose(1, 2)


def flat_low_rank(rows: Tensor, cols: Tensor) -> Tensor:
    """``rows @ cols^T`` [g, n, m] with its spectrum flattened: an (almost) semi-orthogonal rank-r map.

    Both factors are orthonormalised by a reduced QR (cheap: n x r and m x r), so only the r x r core
    ``R_rows R_cols^T`` needs its singular values equalised. (:class:`LowRankDecoder` runs the same steps with the
    cores of all its groups flattened together.)
    """
    q1, q2, core = low_rank_core(rows, cols)
    return (q1 @ _newton_schulz(core) @ q2.transpose(1, 2)).to(rows.dtype)


def _base_seed(ref: ParamRef, salt: str = "") -> int:
    h = hashlib.sha256(f"{ref.name}|{tuple(ref.shape)}{salt}".encode()).digest()
    return int.from_bytes(h[:8], "little") & ((1 << 63) - 1)


def base_weights(refs: Sequence[ParamRef], shape: Sequence[int], device, dtype, salt: str = "") -> Tensor:
    """Deterministic Gaussian bases [len(refs), *shape], one per parameter, each at unit RMS.

    Seeded by name and shape only: the same model always gets the same base, different layers different ones.
    Drawn on the CPU so every device and process gets identical values.
    """
    zs = [torch.randn(*shape, generator=torch.Generator().manual_seed(_base_seed(r, salt))) for r in refs]
    z = torch.stack(zs).to(device=device, dtype=dtype)
    return z / _rms(z)


@functools.lru_cache(maxsize=None)
def _taps_by_distance(kernel: Tuple[int, ...]) -> Tuple[int, ...]:
    """Flat kernel offsets ordered by distance from the centre tap (the centre first), ties by index."""
    centre = [(k - 1) // 2 for k in kernel]
    pos = list(itertools.product(*(range(k) for k in kernel)))  # row-major: position f is flat offset f
    return tuple(sorted(range(len(pos)), key=lambda f: (sum((p - c) ** 2 for p, c in zip(pos[f], centre)), f)))


def identity_base(n_out: int, n_in: int, kernel: Sequence[int], device, dtype, shifted: bool = False) -> Tensor:
    """[n_out, n_in, prod(kernel)] channel-preserving base at unit RMS: output o reads input ``o mod n_in`` (or,
    when narrower, the sum of the inputs ``i`` with ``i mod n_out == o``) through the kernel's centre tap.

    ``shifted``: the ``c``-th copy of a channel (``c = o // n_in``; ``i // n_out`` when narrower) reads it with the
    sign ``(-1)^c`` through the ``(c // 2)``-th tap nearest the centre (cycling), so a widening's copies and the
    filters of a 1-channel stem are distinct (``x`` and ``-x`` survive a ReLU as two halves of ``x``; a shifted tap
    is a spatially shifted feature) while channel ``j`` still means the same thing in every network.
    """
    taps = _taps_by_distance(tuple(kernel))
    o = torch.arange(n_out, device=device)[:, None]
    i = torch.arange(n_in, device=device)[None, :]
    hit = ((i == o % n_in) if n_out >= n_in else (o == i % n_out)).to(dtype)
    z = torch.zeros(n_out, n_in, len(taps), device=device, dtype=dtype)
    if shifted:
        copy = (o // n_in).expand(n_out, n_in) if n_out >= n_in else (i // n_out).expand(n_out, n_in)
        tap = torch.tensor(taps, device=device)[(copy // 2) % len(taps)]
        z.scatter_(2, tap.unsqueeze(-1), (hit * (1.0 - 2.0 * (copy % 2).to(dtype))).unsqueeze(-1))
    else:
        z[..., taps[0]] = hit
    return z / _rms(z[None])[0]
