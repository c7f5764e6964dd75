"""Training the hypernetwork with Hugging Face Accelerate (CPU, one GPU, DDP over GPUs/nodes, mixed precision).

Each step samples a meta-batch of architectures, predicts all their parameters in one hypernetwork pass, runs every
network on the same image batch through ``torch.func.functional_call`` and backpropagates the mean classification
loss into the hypernetwork.

Randomness is a pure function of ``(seed, step, rank)`` (:mod:`ghn.archstream`): which architectures and which
images a step sees does not depend on history, so ``--resume`` reproduces the following steps exactly (model,
optimizer, scheduler and RNG through ``Accelerator.save_state``/``load_state``, the counters in
``trainer_state.json``). The run directory is locked and checkpoints appear only when complete (:mod:`ghn.rundir`).

:class:`Trainer` is the loop in named steps: ``__init__`` (set-up and resume), :meth:`Trainer.train_step`,
:meth:`Trainer.log`, :meth:`Trainer.save`; :func:`train` runs it.
"""
from __future__ import annotations

import json
import math
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field, fields, replace
from pathlib import Path
from typing import Any, Callable, Dict, List, NamedTuple, Optional, Sequence, Tuple

import torch
import torch.nn as nn
import torch.nn.functional as F

from ghn import rundir
from ghn.archstream import (
    ArchPool,
    StepArchs,
    iterate_steps,
    pack_meta_batch,
    parse_arch_filter,
    select_archs,
    split_by_size,
    step_rng,
)
from ghn.fastconv import fast_convs
from ghn.graph import ArchGraph
from ghn.hypernet import GHNConfig, GraphHyperNetwork
from ghn.task import Task
from ghn.teacher import distill_loss, load_logits, tensor_digest

__all__ = ["TrainConfig", "TrainerState", "Trainer", "train", "resume_config", "robust_mean", "standardize_logits",
           "ArchLosses", "Distill", "classifier_layer", "participation_ratio", "meta_batch_loss", "pack_meta_batch",
           "parse_arch_filter", "select_archs", "step_rng"]


@dataclass
class TrainConfig:
    """Options of :func:`train` (``train.py`` exposes each as a flag)."""

    dataset: str = "fashion-mnist"
    data_root: Optional[str] = None
    archs: str = "train"              # architecture split name (data/) or a specs file
    out_dir: str = "runs/ghn"
    steps: int = 1000
    meta_batch: int = 4               # architectures per step and process
    batch_size: int = 64              # images per step and process
    lr: float = 1e-3
    weight_decay: float = 1e-2
    warmup_steps: int = 50
    grad_clip: float = 5.0
    grad_accum: int = 1
    mixed_precision: str = "no"       # "no" | "bf16" | "fp16"
    max_params_per_step: int = 20_000_000  # memory budget: predicted values per meta-batch (never drops an arch)
    loss_cap: float = 10.0            # per-architecture loss above this has its gradient scaled down to it
    logit_norm: float = 0.0           # > 0: train on per-sample standardised logits times this (scale-free loss)
    arch_grad_norm: bool = True       # each architecture's gradient (w.r.t. its predicted tensors) scaled to unit norm
    feat_rank: float = 0.0            # > 0: adds -feat_rank * log(participation ratio of the classifier's input
                                      # features on the batch) per architecture: an anti-collapse term
    channels_last: bool = True        # target networks' conv weights in NHWC (~1.2x on CPU; float rounding differs)
    arch_threads: int = 1             # > 1 (with arch_grad_norm): target networks run this many at once in Python
                                      # threads of one intra-op thread each (same results as one thread)
    lookahead_steps: int = 0          # > 0 (with arch_grad_norm): also train on the loss after this many plain SGD
                                      # steps of each target network from its predicted weights (first-order)
    lookahead_lr: float = 0.2         # learning rate of those steps (gradient norm clipped at 5, as in fine-tuning)
    distill: str = ""                 # teacher logits of the training images (python -m ghn.teacher): each
                                      # architecture's loss becomes (1 - a) CE + a T^2 KL(teacher || predicted net)
    distill_alpha: float = 0.5        # a: weight of the distillation term
    distill_temp: float = 2.0         # T: temperature of both softmaxes in it
    workers: int = 0                  # processes building architectures (models + graphs) ahead of the step
    max_arch_params: int = 0          # > 0: train only on architectures with at most this many parameters
    pool_size: int = 0                # > 0: train only on the first N architectures (after the filters)
    arch_filter: str = ""             # e.g. "norm=bn" or "family=cnn;norm=bn|gn": spec fields that must match
    small_share: float = 0.0          # > 0: each architecture of a step is drawn from those with at most
                                      # small_params parameters with this probability, else from the larger ones
    small_params: int = 500_000       # (after the filters above; 0 < small_share < 1 needs both groups non-empty)
    ckpt_every: int = 500
    keep_checkpoints: int = 0         # > 0: keep only the newest N checkpoint directories (0: keep all)
    log_every: int = 10
    seed: int = 0
    resume: Optional[str] = None      # a checkpoint directory written by this trainer
    init_from: Optional[str] = None   # a hypernetwork .safetensors to fine-tune
    cpu: bool = False
    max_minutes: float = 0.0          # > 0: stop (and checkpoint) after this wall-clock budget
    progress: bool = True
    max_skipped: int = 50             # stop with an error after this many consecutive non-finite steps
    ghn: Dict[str, Any] = field(default_factory=dict)  # GHNConfig overrides for a fresh hypernetwork


# Settings a resumed run must keep: changing any of them would silently make it another run.
RESUME_FIXED = ("dataset", "seed", "lr", "weight_decay", "warmup_steps", "grad_clip", "grad_accum", "meta_batch",
                "batch_size", "mixed_precision", "max_params_per_step", "loss_cap", "logit_norm", "arch_grad_norm",
                "feat_rank", "channels_last", "lookahead_steps", "lookahead_lr", "max_arch_params", "pool_size",
                "arch_filter", "small_share", "small_params", "distill", "distill_alpha", "distill_temp")
# hypernetwork settings a resume may switch: decoding dials with no parameters of their own (the weights, optimizer,
# schedule and data order continue; later checkpoints store the new value, so their resumes stay exact)
RESUME_SWITCHABLE = ("max_dir_ratio",)


@dataclass
class TrainerState:
    """Counters of a run, saved as ``trainer_state.json`` in every checkpoint (JSON: loading it runs no code,
    unlike Accelerate's ``register_for_checkpointing``, which unpickles)."""

    step: int = 0
    skipped_nan: int = 0
    capped_archs: int = 0
    nonfinite_archs: int = 0
    archs_seen: int = 0
    image_passes: int = 0
    consecutive_skipped: int = 0

    @classmethod
    def read(cls, path: Path) -> "TrainerState":
        d = json.loads(Path(path).read_text())
        return cls(**{f.name: int(d[f.name]) for f in fields(cls) if f.name in d})

    def write(self, path: Path) -> None:
        Path(path).write_text(json.dumps(asdict(self)))


# What settings added later meant for runs whose stored config lacks them (their value before they existed).
LEGACY_TRAIN: Dict[str, Any] = {"arch_grad_norm": False, "channels_last": False}


def resume_config(checkpoint: str, **overrides: Any) -> TrainConfig:
    """The :class:`TrainConfig` a checkpoint was trained with, ``overrides`` applied (e.g. more ``steps``)."""
    ck = Path(checkpoint)
    meta = GraphHyperNetwork.load(ck / "ghn.safetensors").extra if rundir.is_checkpoint(ck) else {}
    stored = dict(meta.get("train_config") or {})
    known = {f.name for f in fields(TrainConfig)}
    stored.pop("init_from", None)  # how the run began; a resume continues from the checkpoint itself
    stored = {**LEGACY_TRAIN, **stored} if stored else stored
    return TrainConfig(**{**{k: v for k, v in stored.items() if k in known}, "resume": checkpoint, **overrides})


def robust_mean(losses: torch.Tensor, cap: float) -> Tuple[torch.Tensor, int, int]:
    """Mean of per-architecture losses, robust to the few networks whose predicted weights diverge.

    A loss above ``cap`` is rescaled to ``cap`` (``L * cap / L.detach()``: same direction, bounded gradient), so
    one exploding architecture cannot dominate the step; non-finite losses are left out of the mean. Returns the
    mean (NaN when every loss is non-finite), the number of capped and the number of non-finite architectures.
    """
    finite = torch.isfinite(losses)
    n_bad = int((~finite).sum())
    if n_bad == losses.numel():
        return losses.sum() * float("nan"), 0, n_bad
    ls = losses[finite]
    over = ls.detach() > cap
    if cap > 0 and bool(over.any()):
        ls = torch.where(over, ls * (cap / ls.detach().clamp_min(cap)), ls)
    return ls.mean(), int(over.sum()), n_bad


def standardize_logits(logits: torch.Tensor, temperature: float) -> torch.Tensor:
    """Per-sample zero-mean, unit-std logits times ``temperature`` (the argmax, hence accuracy, is unchanged)."""
    z = logits - logits.mean(-1, keepdim=True)
    return z / (z.std(-1, keepdim=True) + 1e-5) * temperature


class Distill(NamedTuple):
    """Soft targets of one batch (``TrainConfig.distill_*``): the objective is ``(1 - alpha) CE + alpha T^2 KL``."""

    logits: torch.Tensor  # the teacher's logits of the batch's images, [B, classes]
    alpha: float
    temp: float


class ArchLosses(NamedTuple):
    """Per-architecture results of one meta-batch, each ``[n]``."""

    losses: torch.Tensor   # the trained objective: cross-entropy, or its mix with distillation, plus the feature term
    accs: torch.Tensor     # top-1 on the batch (detached)
    ce: torch.Tensor       # cross-entropy (detached)
    feat_pr: torch.Tensor  # participation ratio of the classifier's input features (detached; NaN: no classifier)
    lookahead_ce: Optional[torch.Tensor] = None  # cross-entropy after the lookahead steps (when on)


def classifier_layer(model: nn.Module) -> Optional[nn.Linear]:
    """The last ``nn.Linear`` of ``model`` (its classifier in every generated and predefined architecture)."""
    last = None
    for m in model.modules():
        if isinstance(m, nn.Linear):
            last = m
    return last


def participation_ratio(f: torch.Tensor) -> torch.Tensor:
    """``(sum l)^2 / sum l^2`` over the eigenvalues ``l`` of the centred features' covariance (``f``: ``[B, ...]``).

    A differentiable, scale-free effective rank: 1 when every sample differs along one direction, up to
    ``min(B - 1, D)`` when the batch spans its dimensions evenly. Computed on the ``B x B`` Gram matrix, which has
    the same non-zero spectrum as the ``D x D`` covariance.
    """
    z = f.flatten(1).float()
    z = z - z.mean(0)
    g = z @ z.T
    return g.diagonal().sum().pow(2) / g.pow(2).sum().clamp_min(1e-20)


def meta_batch_loss(ghn: nn.Module, models: List[nn.Module], graphs: List[ArchGraph], x: torch.Tensor,
                    y: torch.Tensor, batch=None, logit_norm: float = 0.0, channels_last: bool = False,
                    feat_rank: float = 0.0, distill: Optional[Distill] = None) -> ArchLosses:
    """Per-architecture losses of the predicted networks (:class:`ArchLosses`).

    With ``logit_norm > 0`` the loss sees standardised logits (:func:`standardize_logits`): shrinking every
    classifier towards constant outputs no longer lowers it, the shortcut that stalls training at chance level.
    With ``feat_rank > 0`` it adds ``-feat_rank * log(participation_ratio(classifier input))``: features that span
    few directions fine-tune badly, however well they separate the classes (docs/DESIGN.md). With ``distill`` the
    cross-entropy is mixed with a distillation term (:class:`Distill`).
    """
    preds = ghn(graphs, batch)
    return _stack([_arch_loss(model, params, x, y, logit_norm, channels_last, feat_rank, distill)
                   for model, params in zip(models, preds)])


def _stack(out: List[Tuple[torch.Tensor, ...]]) -> ArchLosses:
    return ArchLosses(*(torch.stack([o[k] for o in out]) for k in range(len(out[0]))))


def _arch_loss(model: nn.Module, params: Dict[str, torch.Tensor], x: torch.Tensor, y: torch.Tensor,
               logit_norm: float, channels_last: bool = False, feat_rank: float = 0.0,
               distill: Optional[Distill] = None) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """``(objective, accuracy, cross-entropy, feature participation ratio)`` of one predicted network."""
    if channels_last:  # conv weights (and images) in NHWC: mkldnn's faster CPU path, float rounding aside
        cl = torch.channels_last
        params = {k: t.contiguous(memory_format=cl) if t.dim() == 4 else t for k, t in params.items()}
        x = x.contiguous(memory_format=cl) if x.dim() == 4 else x
    head, feats = classifier_layer(model), []
    hook = head.register_forward_pre_hook(lambda mod, args: feats.append(args[0])) if head is not None else None
    try:
        with fast_convs(model):  # exact (ghn.fastconv)
            logits = torch.func.functional_call(model, params, (x,), strict=False).float()
    finally:
        if hook is not None:
            hook.remove()
    if logit_norm > 0:
        logits = standardize_logits(logits, logit_norm)
    ce = F.cross_entropy(logits, y)
    loss = ce
    if distill is not None and distill.alpha > 0:
        loss = (1 - distill.alpha) * ce + distill.alpha * distill_loss(logits, distill.logits, distill.temp)
    with torch.set_grad_enabled(feat_rank > 0 and torch.is_grad_enabled()):  # only logged when the term is off
        pr = participation_ratio(feats[-1]) if feats and len(x) > 2 else ce.new_tensor(float("nan"))
    loss = loss - feat_rank * pr.log() if feat_rank > 0 and bool(torch.isfinite(pr)) else loss
    return loss, (logits.argmax(-1) == y).float().mean(), ce.detach(), pr.detach()


class Lookahead(NamedTuple):
    """Plain SGD steps taken from each predicted network before a second gradient (``TrainConfig.lookahead_*``)."""

    steps: int
    lr: float
    xs: torch.Tensor  # [steps, B, ...]: xs[k] is read at the weights after step k + 1 (the first step descends
    ys: torch.Tensor  # [steps, B]     the gradient on the training step's own batch)


def clipped_step_scale(grads: Sequence[torch.Tensor], lr: float, max_norm: float = 5.0) -> float:
    """The factor of a plain SGD step ``-factor * grads`` at ``lr`` with the gradient norm clipped to ``max_norm`` (as
    ``ghn.evaluation.finetune`` clips); NaN when the gradient is not finite."""
    norm = float(torch.sqrt(sum(g.pow(2).sum() for g in grads)))
    return lr * min(1.0, max_norm / (norm + 1e-6)) if math.isfinite(norm) else float("nan")


def lookahead_grads(model: nn.Module, names: Dict[int, List[str]], theta0: List[torch.Tensor],
                    g0: Sequence[torch.Tensor], la: Lookahead, logit_norm: float = 0.0, channels_last: bool = False
                    ) -> Tuple[torch.Tensor, Optional[List[torch.Tensor]]]:
    """``(cross-entropy, gradient)`` at the weights ``la.steps`` plain SGD steps from ``theta0`` (a first-order
    fine-tuning-aware objective, as in first-order MAML): step ``k`` uses the gradient at step ``k - 1`` (``g0`` on
    the step's batch first, then ``la.xs[k - 1]``), each clipped to norm 5 as ``ghn.evaluation.finetune`` does; the
    returned gradient is taken on ``la.xs[-1]``. To first order it is the gradient of ``L - lr/2 |grad L|^2`` at
    ``theta0``: predictions from which SGD descends fast are preferred. ``None`` when a step is non-finite."""
    theta = [t.detach() for t in theta0]
    g = [h.detach() for h in g0]
    for k in range(la.steps):
        scale = clipped_step_scale(g, la.lr)
        if not math.isfinite(scale):
            return g[0].new_tensor(float("nan")), None
        theta = [(t - scale * h).requires_grad_() for t, h in zip(theta, g)]
        params = {n: t for t, i in zip(theta, names) for n in names[i]}
        ce, *_ = _arch_loss(model, params, la.xs[k], la.ys[k], logit_norm, channels_last)
        if not bool(torch.isfinite(ce)):
            return ce.detach(), None
        g = list(torch.autograd.grad(ce, theta))
    return ce.detach(), g


def normalized_arch_grads(preds: List[Dict[str, torch.Tensor]], models: List[nn.Module], x: torch.Tensor,
                          y: torch.Tensor, logit_norm: float = 0.0, channels_last: bool = False,
                          feat_rank: float = 0.0, lookahead: Optional["Lookahead"] = None,
                          distill: Optional[Distill] = None, threads: int = 1):
    """Per-architecture gradients w.r.t. the predicted tensors, each scaled to unit norm.

    Without it the meta-batch gradient is dominated by the architectures with the steepest loss: on the train
    split a 15-cell or norm-free network has a 5-12x larger gradient than a 5-cell BN one, and its (noisy) direction
    drowns every other architecture's. Returns ``(losses [n], accs [n], tensors, grads)``; backpropagate into the
    hypernetwork with ``torch.autograd.backward(tensors, grads)``. Each target network's graph is freed after its
    own backward, so peak memory is one target network instead of the meta-batch. Non-finite losses give no
    gradient; when none is finite the first network's tensors come back with zero gradients, so the backward (which
    DDP needs on every rank) still runs. Returns ``(ArchLosses, tensors, grads)``.

    With ``lookahead`` each architecture's gradient is the sum of the one at its predicted weights and the one after
    ``lookahead.steps`` plain SGD steps from them (:func:`lookahead_grads`), before the normalisation.

    ``threads > 1`` runs that many target networks at once in Python threads, every op on one intra-op thread (the
    networks' graphs are disjoint: each starts from its own detached leaves; a model drawn twice in a meta-batch runs
    once at a time, since ``functional_call`` swaps its parameters while it runs). The results, and their order, are
    those of ``threads=1`` at one intra-op thread, bit for bit; on a 2-core CPU two networks side by side use the
    cores better than one network on two intra-op threads (small convolutions parallelise poorly).
    """
    def one(model: nn.Module, params: Dict[str, torch.Tensor]):
        uniq = {id(t): t for t in params.values()}  # tied aliases share one tensor
        leaf = {i: t.detach().requires_grad_() for i, t in uniq.items()}
        loss, *rest = _arch_loss(model, {k: leaf[id(t)] for k, t in params.items()}, x, y, logit_norm,
                                 channels_last, feat_rank, distill)
        if not bool(torch.isfinite(loss)):
            return (loss.detach(), *rest) + ((loss.detach(),) if lookahead else ()), None, None
        gs = torch.autograd.grad(loss, list(leaf.values()))
        if lookahead is not None:
            names = {i: [k for k, t in params.items() if id(t) == i] for i in leaf}
            la_ce, la_gs = lookahead_grads(model, names, list(leaf.values()), gs, lookahead, logit_norm, channels_last)
            res = (loss.detach(), *rest, la_ce)
            if la_gs is not None:
                gs = [g + h for g, h in zip(gs, la_gs)]
        else:
            res = (loss.detach(), *rest)
        norm = torch.sqrt(sum(g.pow(2).sum() for g in gs))
        if not bool(torch.isfinite(norm)):
            return res, None, None
        return res, list(uniq.values()), [g / (norm + 1e-12) / len(models) for g in gs]

    if threads > 1 and len(models) > 1:
        # functional_call swaps a module's parameters while it runs: a model drawn twice runs once at a time
        locks = {id(m): threading.Lock() for m in models}

        def locked(model: nn.Module, params: Dict[str, torch.Tensor]):
            with locks[id(model)]:
                return one(model, params)

        intra = torch.get_num_threads()
        torch.set_num_threads(1)
        try:
            with ThreadPoolExecutor(min(threads, len(models)), thread_name_prefix="arch") as pool:
                results = list(pool.map(locked, models, preds))
        finally:
            torch.set_num_threads(intra)
    else:
        results = [one(m, p) for m, p in zip(models, preds)]
    out = [r for r, _, _ in results]
    tensors = [t for _, ts, _ in results if ts is not None for t in ts]
    grads = [g for _, _, gs in results if gs is not None for g in gs]
    if not tensors and preds:  # every rank must still run a backward (DDP): a zero one through the first network
        tensors = list({id(t): t for t in preds[0].values()}.values())
        grads = [torch.zeros_like(t) for t in tensors]
    return _stack(out), tensors, grads


def _nanmean(t: torch.Tensor) -> torch.Tensor:
    t = t.float()
    ok = torch.isfinite(t)
    return t[ok].mean() if bool(ok.any()) else t.new_tensor(float("nan"))


def _init_from(path: str, overrides: Dict[str, Any]) -> GraphHyperNetwork:
    """The hypernetwork of ``path`` with config ``overrides`` that keep its tensors (e.g. ``base_kind``): a design
    change can start from a trained hypernetwork instead of from scratch."""
    ghn = GraphHyperNetwork.load(path)
    try:
        return ghn.with_config(**overrides) if overrides else ghn
    except ValueError as e:
        raise ValueError(f"--init-from {path}: {e}") from None


def _load_data(cfg: TrainConfig):
    from ghn.datasets import get_dataset

    return get_dataset(cfg.dataset, cfg.data_root, train=True)


def _load_archs(cfg: TrainConfig):
    from ghn.archs.spec import check_spec
    from ghn.archs.storage import ArchDataset

    try:
        archs = ArchDataset(cfg.archs)
        if len(archs) == 0:
            raise ValueError("it holds no architecture specs")
        check_spec(archs[0])
    except FileNotFoundError:
        raise
    except Exception as e:  # gzip/JSON/spec errors: name the file, in one line
        raise ValueError(f"--archs {cfg.archs}: cannot read architecture specs ({type(e).__name__}: {e})") from None
    return archs


class Trainer:
    """One training run (see the module docstring). Holds the lock on ``cfg.out_dir`` until :meth:`close`."""

    def __init__(self, cfg: TrainConfig, data=None, archs=None):
        from accelerate import Accelerator
        from accelerate.utils import DistributedDataParallelKwargs

        if cfg.steps < 1:
            raise ValueError(f"--steps {cfg.steps}: nothing to train (must be >= 1)")
        if cfg.arch_grad_norm and cfg.mixed_precision == "fp16":
            raise ValueError("--arch-grad-norm does not support fp16 loss scaling; use --mixed-precision bf16 or no")
        if cfg.feat_rank < 0:
            raise ValueError(f"--feat-rank {cfg.feat_rank}: must be >= 0 (a negative weight would reward collapse)")
        if cfg.distill and not (0 < cfg.distill_alpha <= 1 and cfg.distill_temp > 0):
            raise ValueError(f"--distill-alpha {cfg.distill_alpha} / --distill-temp {cfg.distill_temp}: need "
                             "0 < alpha <= 1 and a temperature > 0")
        if cfg.lookahead_steps < 0 or (cfg.lookahead_steps > 0 and (not cfg.arch_grad_norm or cfg.lookahead_lr <= 0)):
            raise ValueError(f"--lookahead-steps {cfg.lookahead_steps}: must be >= 0, and > 0 needs --arch-grad-norm "
                             f"and --lookahead-lr > 0 (got {cfg.lookahead_lr})")
        if cfg.arch_threads < 1 or (cfg.arch_threads > 1 and (not cfg.arch_grad_norm or cfg.mixed_precision != "no")):
            raise ValueError(f"--arch-threads {cfg.arch_threads}: must be >= 1, and > 1 needs --arch-grad-norm and "
                             f"--mixed-precision no (autocast does not reach other threads; got {cfg.mixed_precision})")
        if not 0 <= cfg.small_share < 1 or cfg.small_params < 1:
            raise ValueError(f"--small-share {cfg.small_share} / --small-params {cfg.small_params}: need "
                             "0 <= share < 1 (0: uniform over all) and a parameter count >= 1")
        if cfg.resume and cfg.init_from:
            raise ValueError("--resume and --init-from are exclusive: resume continues a run, init-from starts one")
        self.cfg = cfg
        ddp = DistributedDataParallelKwargs(find_unused_parameters=False)
        self.acc = Accelerator(mixed_precision=cfg.mixed_precision, gradient_accumulation_steps=cfg.grad_accum,
                               cpu=cfg.cpu, kwargs_handlers=[ddp])
        self.out_dir = Path(cfg.out_dir)
        self.log_path = self.out_dir / "log.jsonl"
        self.resume_dir = self._resume_dir()
        self.lock, self.bar = self._lock(), None
        try:
            self._setup(data, archs)
        except BaseException:
            self.close()  # a failed set-up releases the run directory at once
            raise

    def _setup(self, data, archs) -> None:
        cfg, acc = self.cfg, self.acc
        data = data if data is not None else _load_data(cfg)
        archs = archs if archs is not None else _load_archs(cfg)
        self.images, self.labels = data.images, data.labels
        self.task = Task.of(data)
        self.teacher = None
        if cfg.distill:
            self.teacher = load_logits(cfg.distill, self.labels, str(getattr(data, "name", "") or ""))
            self._distill_digest = tensor_digest(self.teacher)
            was = self._saved.extra.get("distill_digest") if self._saved is not None else None
            if was and was != self._distill_digest:
                raise ValueError(f"--distill {cfg.distill}: not the teacher logits the run was trained with "
                                 f"(digest {self._distill_digest}, run: {was}); a resume would not be exact")
        counts: Dict[int, int] = {}  # parameter counts, shared by the size filter and the size mix
        indices = select_archs(archs, str(cfg.archs), cfg.arch_filter, cfg.max_arch_params, cfg.pool_size, self.task,
                               counts)
        # with worker processes the builds happen there and cache hits are rare (many architectures): keep few
        pool = ArchPool(archs, self.task, cache_size=4 if cfg.workers > 0 else 256, indices=indices)
        mix = None
        if cfg.small_share > 0:
            small, large = split_by_size(archs, indices, self.task, cfg.small_params, counts)
            if not small or not large:
                raise ValueError(f"--small-share {cfg.small_share}: {'no' if not small else 'every'} architecture of "
                                 f"the pool has <= {cfg.small_params} parameters (--small-params); nothing to mix")
            mix = (cfg.small_share, small, large)
        if acc.is_main_process:
            part = f" ({cfg.small_share:.0%} of draws from the {len(mix[1]):,} with <= {cfg.small_params:,} " \
                   "parameters)" if mix else ""
            print(f"training on {len(pool.indices):,} architectures of {cfg.archs}{part}", file=sys.stderr, flush=True)
        self._build_model()
        self.state = TrainerState()
        if self.resume_dir is not None:
            acc.load_state(str(self.resume_dir))
            self.state = TrainerState.read(self.resume_dir / "trainer_state.json")
            if self.state.step >= cfg.steps:
                raise ValueError(f"--resume {self.resume_dir}: the run is already at step {self.state.step} "
                                 f">= --steps {cfg.steps}; raise --steps to continue it")
        if acc.is_main_process:
            rundir.truncate_log(self.log_path, self.state.step)  # a resume repeats the steps after the checkpoint
        self.stream = StepArchs(pool, cfg.seed, acc.process_index, cfg.meta_batch, cfg.max_params_per_step,
                                self.inner.featurizer(), mix)
        if cfg.progress and acc.is_main_process:
            from tqdm.auto import tqdm

            self.bar = tqdm(total=cfg.steps, initial=self.state.step, desc="train", dynamic_ncols=True)
        self._rates = {"archs_s": "-", "img_s": "-"}
        self._last = (time.perf_counter(), self.state.archs_seen, self.state.image_passes)

    # -- set-up ------------------------------------------------------------------------------------------------
    def _resume_dir(self) -> Optional[Path]:
        """The checkpoint to resume (``latest`` resolved), its hypernetwork loaded once into ``self._saved``."""
        cfg = self.cfg
        self._saved: Optional[GraphHyperNetwork] = None
        self._switch: Dict[str, Any] = {}
        if not cfg.resume:
            return None
        rdir = rundir.latest_checkpoint(self.out_dir) if cfg.resume == "latest" else Path(cfg.resume)
        if rdir is None:
            raise FileNotFoundError(f"--resume latest: no complete checkpoint in {self.out_dir}")
        if not rundir.is_checkpoint(rdir):
            raise FileNotFoundError(f"--resume {rdir}: no trainer_state.json and ghn.safetensors (not a checkpoint "
                                    "of train.py)")
        self._saved = GraphHyperNetwork.load(rdir / "ghn.safetensors")
        self._check_resume_config(rdir, self._saved)
        return rdir

    def _check_resume_config(self, rdir: Path, saved: GraphHyperNetwork) -> None:
        """Refuse settings that differ from the ones the checkpoint was trained with (never silently ignored)."""
        stored = saved.extra.get("train_config") or {}
        diff = [f"{k}={getattr(self.cfg, k)!r} (run: {stored[k]!r})" for k in RESUME_FIXED
                if k in stored and stored[k] != getattr(self.cfg, k)]
        have = asdict(saved.config)
        changed = {k: v for k, v in self.cfg.ghn.items() if k in have and have[k] != v}
        self._switch = {k: v for k, v in changed.items() if k in RESUME_SWITCHABLE}
        diff += [f"{k}={v!r} (run: {have[k]!r})" for k, v in changed.items() if k not in RESUME_SWITCHABLE]
        if diff:
            raise ValueError(f"--resume {rdir}: {', '.join(diff)} differ from the run's settings; drop these "
                             "flags (the checkpoint's are used) or start a new run in another --out-dir")
        for k, v in self._switch.items():
            print(f"note: {k} {have[k]!r} -> {v!r} from this checkpoint on (the run continues: weights, optimizer, "
                  "schedule and data order)", file=sys.stderr)
        if stored.get("steps") not in (None, self.cfg.steps):
            print(f"note: --steps {self.cfg.steps} (run: {stored['steps']}): the cosine schedule is stretched "
                  "to the new length from here on", file=sys.stderr)

    def _lock(self) -> Optional[rundir.RunLock]:
        """Lock the run directory (main process); every rank raises the same one-line error if it is taken."""
        acc, err = self.acc, None
        lock = None
        if acc.is_main_process:
            try:
                lock = rundir.RunLock(self.out_dir).acquire()
                if self.resume_dir is None and rundir.holds_a_run(self.out_dir):
                    lock.release()
                    lock = None
                    raise rundir.RunDirError(f"{self.out_dir} already holds a run (log.jsonl / ckpt-*): pass "
                                             "--resume latest to continue it, or choose another --out-dir")
                rundir.remove_partial(self.out_dir)
            except rundir.RunDirError as e:
                err = e
        failed = torch.tensor([0.0 if err is None else 1.0], device=acc.device)
        if acc.gather(failed).sum() > 0:
            raise err or rundir.RunDirError(f"{self.out_dir}: the main process could not take the run directory")
        return lock

    def _build_model(self) -> None:
        cfg, acc = self.cfg, self.acc
        torch.manual_seed(cfg.seed)  # hypernetwork init only; the run's other randomness is in step_rng
        self._init_lineage: list = []
        if self.resume_dir is not None:  # the architecture of the run being resumed, whatever the flags say
            ghn = GraphHyperNetwork(replace(self._saved.config, **self._switch))
            ghn.extra = {"trained_ops": self._saved.extra.get("trained_ops") or []}
            self._init_lineage = list(self._saved.extra.get("init_lineage") or [])
        elif cfg.init_from:
            ghn = _init_from(cfg.init_from, cfg.ghn)
            # the runs behind the file started from, as its metadata and run log say now (the path may be
            # overwritten later): a shipped file's lineage, or a run's output and the runs before it
            self._init_lineage = rundir.lineage_of(cfg.init_from, ghn.extra)
        else:
            ghn = GraphHyperNetwork(GHNConfig.from_dict({**asdict(GHNConfig()), **cfg.ghn}))
        opt = torch.optim.AdamW(ghn.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
        total, warm = max(1, cfg.steps), cfg.warmup_steps

        def lr_lambda(s: int) -> float:
            if s < warm:
                return (s + 1) / warm
            return 0.5 * (1 + math.cos(math.pi * min(1.0, (s - warm) / max(1, total - warm))))

        sched = torch.optim.lr_scheduler.LambdaLR(opt, lr_lambda)
        self.ghn, self.opt, self.sched = acc.prepare(ghn, opt, sched)
        self.inner: GraphHyperNetwork = acc.unwrap_model(self.ghn)

    # -- the loop ----------------------------------------------------------------------------------------------
    def run(self, on_step: Optional[Callable[[Dict[str, Any]], None]] = None) -> Dict[str, Any]:
        cfg, st = self.cfg, self.state
        record: Dict[str, Any] = {}
        self.ghn.train()
        t_start = time.perf_counter()
        for models, graphs, datas in iterate_steps(self.stream, st.step, cfg.steps, cfg.workers):
            if cfg.max_minutes > 0 and self._all_ranks(time.perf_counter() - t_start > 60 * cfg.max_minutes):
                self.save()  # every rank stops at the same step
                break
            record = self.train_step(models, graphs, datas)
            self.log(record)
            if on_step is not None:
                on_step(record)
            if st.step % cfg.ckpt_every == 0 or st.step == cfg.steps:
                self.save()
            if st.consecutive_skipped >= cfg.max_skipped:
                raise FloatingPointError(
                    f"{st.consecutive_skipped} consecutive steps had a non-finite loss or gradient (step {st.step}); "
                    f"stopping. The last checkpoint in {self.out_dir} holds the last finite hypernetwork.")
        self.acc.wait_for_everyone()
        self.acc.end_training()
        return record

    def _all_ranks(self, flag: bool) -> bool:
        """True on every rank if ``flag`` is true on any (so all ranks take the same branch)."""
        t = torch.tensor([float(flag)], device=self.acc.device)
        return bool(self.acc.gather(t).sum() > 0)

    def train_step(self, models: List[nn.Module], graphs: List[ArchGraph], datas=None) -> Dict[str, Any]:
        """One optimisation step on a meta-batch; returns its log record."""
        cfg, acc, st = self.cfg, self.acc, self.state
        models = [m.to(acc.device) for m in models]
        x, y, distill = self._images()
        self.inner.record_trained_ops(graphs)  # before the forward: an op is trusted from its first step on
        with acc.accumulate(self.ghn):
            batch = self.inner.to_pyg_batch(graphs, datas)
            with acc.autocast():
                if cfg.arch_grad_norm:
                    preds = self.ghn(graphs, batch)
                    res, tensors, grads = normalized_arch_grads(preds, models, x, y, cfg.logit_norm,
                                                                cfg.channels_last, cfg.feat_rank, self._lookahead(),
                                                                distill, cfg.arch_threads)
                else:
                    res = meta_batch_loss(self.ghn, models, graphs, x, y, batch, cfg.logit_norm,
                                          cfg.channels_last, cfg.feat_rank, distill)
                    tensors, grads = None, None
            loss, n_capped, n_bad = robust_mean(res.losses, cfg.loss_cap)
            st.capped_archs += n_capped
            st.nonfinite_archs += n_bad
            skipped = self._update(loss, tensors, grads)
        st.skipped_nan += int(skipped)
        st.consecutive_skipped = st.consecutive_skipped + 1 if skipped else 0
        st.step += 1
        st.archs_seen += len(models) * acc.num_processes
        st.image_passes += cfg.batch_size * len(models) * acc.num_processes  # one image through one network = one pass
        return self._record(res, loss, len(models), mixed=cfg.feat_rank > 0 or distill is not None)

    def _images(self) -> Tuple[torch.Tensor, torch.Tensor, Optional[Distill]]:
        """This step's images and labels (and the teacher's logits of them when distilling): their own stream."""
        cfg, acc = self.cfg, self.acc
        bi = torch.randint(len(self.labels), (cfg.batch_size,),
                           generator=step_rng(cfg.seed, self.state.step, acc.process_index, "images"))
        x, y = self.images[bi].to(acc.device), self.labels[bi].to(acc.device)
        distill = (Distill(self.teacher[bi].to(acc.device), cfg.distill_alpha, cfg.distill_temp)
                   if self.teacher is not None else None)
        return x, y, distill

    def _update(self, loss: torch.Tensor, tensors, grads) -> bool:
        """Backward (through the per-architecture normalised ``grads`` of ``tensors`` when given), clip, step;
        returns whether the step was skipped (a non-finite loss or gradient on any rank)."""
        cfg, acc = self.cfg, self.acc
        skipped = self._all_ranks(not bool(torch.isfinite(loss)))  # DDP: every rank skips together
        if not skipped:
            if tensors is not None:
                torch.autograd.backward(tensors, [g / cfg.grad_accum for g in grads])
            else:
                acc.backward(loss)
            if acc.sync_gradients:  # gradients are all-reduced by now: every rank decides the same
                gnorm = acc.clip_grad_norm_(self.ghn.parameters(), cfg.grad_clip if cfg.grad_clip > 0 else math.inf)
                skipped = gnorm is not None and not bool(torch.isfinite(torch.as_tensor(gnorm)))
                if skipped:
                    self.opt.zero_grad(set_to_none=True)
            self.opt.step()
            self.sched.step()
        self.opt.zero_grad(set_to_none=True)
        return skipped

    def _record(self, res, loss: torch.Tensor, n: int, mixed: bool) -> Dict[str, Any]:
        """The step's log record, averaged over ranks. "loss" is the (capped) cross-entropy whatever the objective
        (``mixed``: extra terms), so curves with and without them compare."""
        cfg, acc, st = self.cfg, self.acc, self.state
        ce = robust_mean(res.ce, cfg.loss_cap)[0] if mixed else loss
        means = acc.gather(torch.stack([ce.detach().float(), res.accs.mean(), _nanmean(res.feat_pr),
                                        loss.detach().float()]).unsqueeze(0)).mean(0)
        extra = {"objective": float(means[3])} if mixed else {}
        if res.lookahead_ce is not None:  # the cross-entropy after the lookahead steps (uncapped, finite ones)
            extra["lookahead_loss"] = float(acc.gather(_nanmean(res.lookahead_ce).view(1)).mean())
        return {"step": st.step, "loss": float(means[0]), "acc": float(means[1]), "feat_pr": float(means[2]), **extra,
                "lr": float(self.sched.get_last_lr()[0]), "archs_per_step": n, "skipped_nan": st.skipped_nan,
                "capped_archs": st.capped_archs, "nonfinite_archs": st.nonfinite_archs,
                **({"max_dir_ratio": kappa} if (kappa := self.inner.config.max_dir_ratio) else {})}

    def _lookahead(self) -> Optional[Lookahead]:
        """This step's :class:`Lookahead` batches (their own stream, so runs without it keep their images)."""
        cfg, acc = self.cfg, self.acc
        if cfg.lookahead_steps <= 0:
            return None
        k, b = cfg.lookahead_steps, cfg.batch_size
        bi = torch.randint(len(self.labels), (k * b,),
                           generator=step_rng(cfg.seed, self.state.step, acc.process_index, "lookahead"))
        xs, ys = self.images[bi].to(acc.device), self.labels[bi].to(acc.device)
        return Lookahead(k, cfg.lookahead_lr, xs.view(k, b, *xs.shape[1:]), ys.view(k, b))

    def log(self, record: Dict[str, Any]) -> None:
        """Append every ``log_every``-th record (with throughput) to log.jsonl and update the progress bar."""
        st = self.state
        if st.step % self.cfg.log_every == 0 or st.step == self.cfg.steps:
            now = time.perf_counter()
            t0, archs0, imgs0 = self._last
            dt = max(now - t0, 1e-9)
            record["archs_per_s"] = (st.archs_seen - archs0) / dt
            record["images_per_s"] = (st.image_passes - imgs0) / dt
            # for CPU-hours (ghn.plot): arch threads of one core each can use more cores than the intra-op threads
            record["cores"] = max(torch.get_num_threads(), self.cfg.arch_threads) * self.acc.num_processes
            self._last = (now, st.archs_seen, st.image_passes)
            if self.acc.is_main_process:
                with open(self.log_path, "a") as f:
                    f.write(json.dumps(record) + "\n")
            self._rates = {"archs_s": f"{record['archs_per_s']:.2f}", "img_s": f"{record['images_per_s']:.0f}"}
        if self.bar is not None:
            self.bar.update(1)
            self.bar.set_postfix(loss=f"{record['loss']:.3f}", acc=f"{record['acc']:.3f}", **self._rates)

    def save(self) -> Path:
        """Write ``ckpt-<step>/`` (everything ``--resume`` needs) and ``ghn.safetensors``; a checkpoint directory
        is written under a ``.tmp`` name and renamed when complete, so a kill never leaves half of one."""
        acc, st = self.acc, self.state
        final = self.out_dir / f"ckpt-{st.step:07d}"
        tmp = final.with_name(final.name + ".tmp")
        if acc.is_main_process:
            tmp.mkdir(parents=True, exist_ok=True)
        acc.wait_for_everyone()  # the directory exists before any rank writes its RNG state into it
        acc.save_state(str(tmp))
        acc.wait_for_everyone()  # every rank has written before the directory is published
        if acc.is_main_process:
            st.write(tmp / "trainer_state.json")
            extra = {"step": st.step, "archs": str(self.cfg.archs), **self.task.to_dict(), "dataset": self.cfg.dataset,
                     "trained_ops": sorted(self.inner.trained_ops or ()),
                     "train_config": {k: v for k, v in asdict(self.cfg).items() if k not in ("resume", "progress")},
                     **({"distill_digest": self._distill_digest} if self.teacher is not None else {}),
                     **({"init_lineage": self._init_lineage} if self._init_lineage else {})}
            self.inner.save(tmp / "ghn.safetensors", extra=extra)
            rundir.publish(tmp, final)
            rundir.prune(self.out_dir, self.cfg.keep_checkpoints)
            self.inner.save(self.out_dir / "ghn.safetensors", extra=extra)
        acc.wait_for_everyone()
        return final

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
            self.bar = None
        if self.lock is not None:
            self.lock.release()
            self.lock = None


def train(cfg: TrainConfig, data=None, archs=None, on_step: Optional[Callable[[Dict[str, Any]], None]] = None
          ) -> Dict[str, Any]:
    """Train (or resume / fine-tune) a hypernetwork; returns the final log record.

    ``data`` (an image dataset with ``.images/.labels/.num_classes``) and ``archs`` (an ``ArchDataset``) may be
    passed directly, e.g. by tests; otherwise they come from ``cfg.dataset`` / ``cfg.archs``.
    """
    trainer = Trainer(cfg, data, archs)
    try:
        return trainer.run(on_step)
    finally:
        trainer.close()
