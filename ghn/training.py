"""Training the hypernetwork with Hugging Face Accelerate (CPU, one GPU, DDP over GPUs/nodes, mixed precision).

Each step samples a meta-batch of architectures, predicts all their parameters in one hypernetwork pass, runs every
network on the same image batch through ``torch.func.functional_call`` and backpropagates the mean classification
loss into the hypernetwork.

Randomness is a pure function of ``(seed, step, rank)``: which architectures and which images a step sees does not
depend on history, so ``--resume`` reproduces the following steps exactly (model, optimizer, scheduler and the step
counter are restored with ``Accelerator.save_state``/``load_state``).
"""
from __future__ import annotations

import hashlib
import json
import math
import pickle
import time
from collections import OrderedDict
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable, Dict, Iterable, List, Optional, Tuple

import torch
import torch.nn as nn
import torch.nn.functional as F

from ghn.graph import ArchGraph
from ghn.hypernet import GHNConfig, GraphHyperNetwork


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
    workers: int = 0                  # processes building architectures (models + graphs) ahead of the step
    max_arch_params: int = 0          # > 0: train only on architectures with at most this many parameters
    pool_size: int = 0                # > 0: train only on the first N architectures (after the filters)
    arch_filter: str = ""             # e.g. "norm=bn" or "family=cnn;norm=bn|gn": spec fields that must match
    ckpt_every: int = 500
    log_every: int = 10
    seed: int = 0
    resume: Optional[str] = None      # a checkpoint directory written by this trainer
    init_from: Optional[str] = None   # a hypernetwork .safetensors to fine-tune
    cpu: bool = False
    max_minutes: float = 0.0          # > 0: stop (and checkpoint) after this wall-clock budget
    progress: bool = True
    ghn: Dict[str, Any] = field(default_factory=dict)  # GHNConfig overrides for a fresh hypernetwork


def parse_arch_filter(text: str) -> Dict[str, set]:
    """``"family=cnn;norm=bn|gn"`` -> ``{"family": {"cnn"}, "norm": {"bn", "gn"}}`` (spec fields, any-of values)."""
    out: Dict[str, set] = {}
    for part in filter(None, (p.strip() for p in text.split(";"))):
        if "=" not in part:
            raise ValueError(f"--arch-filter {text!r}: expected key=value[|value...] separated by ';'")
        k, v = part.split("=", 1)
        out[k.strip()] = {x.strip() for x in v.split("|")}
    return out


def select_archs(archs, cfg: "TrainConfig", num_classes: int, in_channels: int, image_size: int
                 ) -> Optional[List[int]]:
    """Dataset indices allowed by ``arch_filter``, ``max_arch_params`` and ``pool_size`` (None: all of them)."""
    if not (cfg.arch_filter or cfg.max_arch_params > 0 or cfg.pool_size > 0):
        return None
    indices: List[int] = list(range(len(archs)))
    if cfg.arch_filter:
        want = parse_arch_filter(cfg.arch_filter)
        indices = [i for i in indices if all(str(archs[i].get(k)) in v for k, v in want.items())]
        if not indices:
            raise ValueError(f"no architecture of {cfg.archs!r} matches --arch-filter {cfg.arch_filter!r}")
    if cfg.max_arch_params > 0:
        from ghn.space import count_params

        indices = [i for i in indices
                   if count_params(archs[i], num_classes, in_channels, image_size) <= cfg.max_arch_params]
        if not indices:
            raise ValueError(f"no architecture of {cfg.archs!r} has <= {cfg.max_arch_params} parameters")
    return indices[:cfg.pool_size] if cfg.pool_size > 0 else indices


def step_rng(seed: int, step: int, rank: int, what: str) -> torch.Generator:
    """A generator seeded from ``(seed, step, rank, what)`` only."""
    h = hashlib.sha256(f"{seed}/{step}/{rank}/{what}".encode()).digest()
    return torch.Generator().manual_seed(int.from_bytes(h[:8], "little") & ((1 << 63) - 1))


class ArchPool:
    """Builds (and caches, LRU) the models and graphs of an architecture dataset for one image task."""

    def __init__(self, archs, num_classes: int, in_channels: int, image_size: int, cache_size: int = 512,
                 indices: Optional[List[int]] = None):
        self.archs = archs
        self.indices = list(range(len(archs))) if indices is None else list(indices)
        self.num_classes, self.in_channels, self.image_size = num_classes, in_channels, image_size
        self.cache: "OrderedDict[int, Tuple[nn.Module, ArchGraph]]" = OrderedDict()
        self.cache_size = cache_size

    def __len__(self) -> int:
        return len(self.indices)

    def get(self, i: int, device: torch.device) -> Tuple[nn.Module, ArchGraph]:
        """Model and graph of the ``i``-th architecture of the pool (``indices[i]`` of the dataset)."""
        if i in self.cache:
            self.cache.move_to_end(i)
            return self.cache[i]
        model = self.archs.build(self.indices[i], num_classes=self.num_classes, in_channels=self.in_channels,
                                 image_size=self.image_size)
        x = torch.zeros(2, self.in_channels, self.image_size, self.image_size)
        graph = ArchGraph.from_module(model, x)
        model = model.to(device)
        self.cache[i] = (model, graph)
        if len(self.cache) > self.cache_size:
            self.cache.popitem(last=False)
        return model, graph


class StepArchs(torch.utils.data.Dataset):
    """Step ``s`` -> the architectures of that step for one rank: ``(models, graphs)``, on CPU.

    Which architectures a step uses is a pure function of ``(seed, step, rank)``; a ``DataLoader`` over this
    dataset with worker processes builds them ahead of the training loop (building dominates a GPU step).
    """

    def __init__(self, pool: "ArchPool", seed: int, rank: int, meta_batch: int, budget: int,
                 max_virtual_dist: int = 0):
        self.pool, self.seed, self.rank, self.meta_batch, self.budget = pool, seed, rank, meta_batch, budget
        self.max_virtual_dist = max_virtual_dist

    def __len__(self) -> int:
        return 1 << 62

    def __getitem__(self, step: int):
        g = step_rng(self.seed, step, self.rank, "archs")
        idx = torch.randint(len(self.pool), (self.meta_batch,), generator=g).tolist()
        models, graphs = zip(*[self.pool.get(i, torch.device("cpu")) for i in idx])
        sizes = [sum(math.prod(r.shape) for _, r in gr.param_refs()) for gr in graphs]
        n = pack_meta_batch(sizes, self.budget)
        for gr in graphs[:n]:
            gr.to_pyg(self.max_virtual_dist)  # cached on the graph: the PyG export is built here, off the step
        return list(models[:n]), list(graphs[:n])


def _one_thread(_: int) -> None:
    torch.set_num_threads(1)  # many builder processes: one intra-op thread each


class _Pickled(torch.utils.data.Dataset):
    def __init__(self, ds):
        self.ds = ds

    def __len__(self) -> int:
        return len(self.ds)

    def __getitem__(self, i):
        return pickle.dumps(self.ds[i], protocol=pickle.HIGHEST_PROTOCOL)


def pack_meta_batch(sizes: List[int], budget: int) -> int:
    """How many of the sampled architectures fit the budget (at least one, so no architecture is ever dropped)."""
    total, n = 0, 0
    for s in sizes:
        if n and total + s > budget:
            break
        total, n = total + s, n + 1
    return n


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


def meta_batch_loss(ghn: nn.Module, models: List[nn.Module], graphs: List[ArchGraph], x: torch.Tensor,
                    y: torch.Tensor, batch=None, logit_norm: float = 0.0) -> Tuple[torch.Tensor, torch.Tensor]:
    """Per-architecture cross-entropy of the predicted networks ``[n]`` and their accuracies ``[n]``.

    With ``logit_norm > 0`` the loss sees standardised logits (:func:`standardize_logits`): shrinking every
    classifier towards constant outputs no longer lowers it, the shortcut that stalls training at chance level.
    """
    preds = ghn(graphs, batch)
    losses, accs = [], []
    for model, params in zip(models, preds):
        logits = torch.func.functional_call(model, params, (x,), strict=False).float()
        if logit_norm > 0:
            logits = standardize_logits(logits, logit_norm)
        losses.append(F.cross_entropy(logits, y))
        accs.append((logits.argmax(-1) == y).float().mean())
    return torch.stack(losses), torch.stack(accs).detach()


@torch.no_grad()
def calibrate_norm_stats(model: nn.Module, batches: Iterable[torch.Tensor], params: Optional[Dict] = None) -> None:
    """Re-estimate BatchNorm running statistics (cumulative average over ``batches``), no gradient steps."""
    bns = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    if not bns:
        return
    momenta = [m.momentum for m in bns]
    was_training = model.training
    for m in bns:
        m.reset_running_stats()
        m.momentum = None
    model.train()
    for x in batches:
        if params is None:
            model(x)
        else:
            torch.func.functional_call(model, params, (x,), strict=False)
    for m, mom in zip(bns, momenta):
        m.momentum = mom
    model.train(was_training)


def _load_data(cfg: TrainConfig):
    from ghn.datasets import get_dataset

    return get_dataset(cfg.dataset, cfg.data_root, train=True)


def _load_archs(cfg: TrainConfig):
    from ghn.data import ArchDataset

    return ArchDataset(cfg.archs)


def train(cfg: TrainConfig, data=None, archs=None, on_step: Optional[Callable[[Dict[str, Any]], None]] = None
          ) -> Dict[str, Any]:
    """Train (or resume / fine-tune) a hypernetwork; returns the final log record.

    ``data`` (an image dataset with ``.images/.labels/.num_classes``) and ``archs`` (an ``ArchDataset``) may be
    passed directly, e.g. by tests; otherwise they come from ``cfg.dataset`` / ``cfg.archs``.
    """
    from accelerate import Accelerator
    from accelerate.utils import DistributedDataParallelKwargs

    acc = Accelerator(mixed_precision=cfg.mixed_precision, gradient_accumulation_steps=cfg.grad_accum,
                      cpu=cfg.cpu, kwargs_handlers=[DistributedDataParallelKwargs(find_unused_parameters=False)])
    data = data if data is not None else _load_data(cfg)
    archs = archs if archs is not None else _load_archs(cfg)
    images, labels = data.images, data.labels
    image_size = int(images.shape[-1])
    indices = select_archs(archs, cfg, data.num_classes, int(images.shape[1]), image_size)
    # with worker processes the builds happen there and cache hits are rare (many architectures): keep few
    pool = ArchPool(archs, data.num_classes, int(images.shape[1]), image_size,
                    cache_size=4 if cfg.workers > 0 else 256, indices=indices)
    acc.ghn_task = {"num_classes": data.num_classes, "in_channels": int(images.shape[1]), "image_size": image_size}
    out_dir = Path(cfg.out_dir)

    torch.manual_seed(cfg.seed)  # hypernetwork init only; the run's other randomness is in step_rng
    if cfg.init_from:
        ghn = GraphHyperNetwork.load(cfg.init_from)
    else:
        ghn = GraphHyperNetwork(GHNConfig.from_dict({**asdict(GHNConfig()), **cfg.ghn}))
    opt = torch.optim.AdamW(ghn.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    total = max(1, cfg.steps)

    def lr_lambda(s: int) -> float:
        if s < cfg.warmup_steps:
            return (s + 1) / cfg.warmup_steps
        return 0.5 * (1 + math.cos(math.pi * min(1.0, (s - cfg.warmup_steps) / max(1, total - cfg.warmup_steps))))

    sched = torch.optim.lr_scheduler.LambdaLR(opt, lr_lambda)
    ghn, opt, sched = acc.prepare(ghn, opt, sched)
    inner: GraphHyperNetwork = acc.unwrap_model(ghn)

    state = {"step": 0, "skipped_nan": 0, "capped_archs": 0, "nonfinite_archs": 0, "archs_seen": 0,
             "image_passes": 0}
    if cfg.resume:
        rdir = Path(cfg.resume)
        if not (rdir / "trainer_state.json").is_file():
            raise FileNotFoundError(f"--resume {rdir}: no trainer_state.json (not a checkpoint of train.py)")
        acc.load_state(str(rdir))
        state.update(json.loads((rdir / "trainer_state.json").read_text()))

    rank, world = acc.process_index, acc.num_processes
    log_path = out_dir / "log.jsonl"
    if acc.is_main_process:
        out_dir.mkdir(parents=True, exist_ok=True)
    bar = None
    if cfg.progress and acc.is_main_process:
        from tqdm.auto import tqdm

        bar = tqdm(total=cfg.steps, initial=state["step"], desc="train", dynamic_ncols=True)
    stream = StepArchs(pool, cfg.seed, rank, cfg.meta_batch, cfg.max_params_per_step,
                       inner.config.max_virtual_dist)
    if cfg.workers > 0:
        # workers hand back pickled bytes: sharing each of the models' tensors through shared memory would cost
        # one file descriptor per tensor and exhaust the process limit
        loader = torch.utils.data.DataLoader(_Pickled(stream), batch_size=None, num_workers=cfg.workers,
                                             sampler=range(state["step"], cfg.steps), prefetch_factor=4,
                                             worker_init_fn=_one_thread)
        arch_iter = (pickle.loads(b) for b in loader)
    else:
        arch_iter = (stream[s] for s in range(state["step"], cfg.steps))
    record: Dict[str, Any] = {}
    rates = {"archs_s": "-", "img_s": "-"}
    t_last, archs_last, imgs_last = time.perf_counter(), state["archs_seen"], state["image_passes"]
    ghn.train()
    t_start = time.perf_counter()
    while state["step"] < cfg.steps:
        if cfg.max_minutes > 0:
            over = torch.tensor([float(time.perf_counter() - t_start > 60 * cfg.max_minutes)], device=acc.device)
            if acc.gather(over).sum() > 0:  # all ranks stop at the same step
                save_checkpoint(acc, inner, state, out_dir, cfg)
                break
        step = state["step"]
        models, graphs = next(arch_iter)
        models = [m.to(acc.device) for m in models]
        n = len(models)
        g_img = step_rng(cfg.seed, step, rank, "images")
        bi = torch.randint(len(labels), (cfg.batch_size,), generator=g_img)
        x, y = images[bi].to(acc.device), labels[bi].to(acc.device)

        with acc.accumulate(ghn):
            with acc.autocast():
                per_arch, accs = meta_batch_loss(ghn, models, graphs, x, y, inner.to_pyg_batch(graphs),
                                                 cfg.logit_norm)
            loss, n_capped, n_bad = robust_mean(per_arch, cfg.loss_cap)
            state["capped_archs"] += n_capped
            state["nonfinite_archs"] += n_bad
            bad = torch.tensor([0.0 if torch.isfinite(loss) else 1.0], device=acc.device)
            if acc.gather(bad).sum() > 0:  # every rank skips together, so DDP never waits on a missing backward
                state["skipped_nan"] += 1
                opt.zero_grad(set_to_none=True)
            else:
                acc.backward(loss)
                if acc.sync_gradients:
                    # gradients are all-reduced by now, so every rank takes the same decision
                    gnorm = acc.clip_grad_norm_(ghn.parameters(), cfg.grad_clip if cfg.grad_clip > 0 else math.inf)
                    if gnorm is not None and not torch.isfinite(torch.as_tensor(gnorm)):
                        state["skipped_nan"] += 1
                        opt.zero_grad(set_to_none=True)
                opt.step()
                sched.step()
                opt.zero_grad(set_to_none=True)
        acc1 = accs.mean()
        state["step"] += 1
        state["archs_seen"] += n * world
        state["image_passes"] += cfg.batch_size * n * world  # one image through one network = one pass
        losses = acc.gather(torch.stack([loss.detach().float(), acc1]).unsqueeze(0)).mean(0)
        record = {"step": state["step"], "loss": float(losses[0]), "acc": float(losses[1]),
                  "lr": float(sched.get_last_lr()[0]), "archs_per_step": n, "skipped_nan": state["skipped_nan"],
                  "capped_archs": state["capped_archs"], "nonfinite_archs": state["nonfinite_archs"]}
        if state["step"] % cfg.log_every == 0 or state["step"] == cfg.steps:
            now = time.perf_counter()
            dt = max(now - t_last, 1e-9)
            record["archs_per_s"] = (state["archs_seen"] - archs_last) / dt
            record["images_per_s"] = (state["image_passes"] - imgs_last) / dt
            t_last, archs_last, imgs_last = now, state["archs_seen"], state["image_passes"]
            if acc.is_main_process:
                with open(log_path, "a") as f:
                    f.write(json.dumps(record) + "\n")
        if bar is not None:
            bar.update(1)
            if "archs_per_s" in record:
                rates = {"archs_s": f"{record['archs_per_s']:.2f}", "img_s": f"{record['images_per_s']:.0f}"}
            bar.set_postfix(loss=f"{record['loss']:.3f}", acc=f"{record['acc']:.3f}", **rates)
        if on_step is not None:
            on_step(record)
        if state["step"] % cfg.ckpt_every == 0 or state["step"] == cfg.steps:
            save_checkpoint(acc, inner, state, out_dir, cfg)
    if bar is not None:
        bar.close()
    acc.wait_for_everyone()
    acc.end_training()
    return record


def save_checkpoint(acc, ghn: GraphHyperNetwork, state: Dict[str, Any], out_dir: Path, cfg: TrainConfig) -> Path:
    """Write ``out_dir/ckpt-<step>/`` (full training state for ``--resume``) and ``out_dir/ghn.safetensors``."""
    ckpt = out_dir / f"ckpt-{state['step']:07d}"
    acc.wait_for_everyone()
    acc.save_state(str(ckpt))
    if acc.is_main_process:
        (ckpt / "trainer_state.json").write_text(json.dumps(state))
        extra = {"step": state["step"], "dataset": cfg.dataset, "archs": cfg.archs, **getattr(acc, "ghn_task", {}),
                 "train_config": {k: v for k, v in asdict(cfg).items() if k not in ("resume", "progress")}}
        ghn.save(out_dir / "ghn.safetensors", extra=extra)
        ghn.save(ckpt / "ghn.safetensors", extra=extra)
    acc.wait_for_everyone()
    return ckpt
