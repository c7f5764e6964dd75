"""A teacher network for distillation: soft targets that tell the hypernetwork more than a label does.

A small CNN is trained on the hypernetwork's training images for a few epochs (minutes on a CPU core), and its
logits on every training image are saved in order (``[N, num_classes]`` float32 in a ``.safetensors`` file, with
the dataset, its size and a checksum of the labels in the metadata). ``train.py --distill FILE`` reads them
(:func:`load_logits` checks they belong to the training set) and adds a temperature-scaled KL term to each
architecture's loss (``TrainConfig.distill_*``, docs/DESIGN.md).

    python -m ghn.teacher --dataset fashion-mnist --epochs 10 --out runs/teacher/fmnist-e10.safetensors
"""
from __future__ import annotations

import argparse
import hashlib
import json
import sys
from pathlib import Path
from typing import Dict, Optional

import torch
import torch.nn as nn
import torch.nn.functional as F

__all__ = ["TeacherCNN", "train_teacher", "predict_logits", "save_logits", "load_logits", "tensor_digest",
           "distill_loss"]


class TeacherCNN(nn.Module):
    """Three conv-BN-ReLU stages (32, 64, 128 channels) and a linear head: 89.8% on Fashion-MNIST test after 10
    epochs of :func:`train_teacher` (87.6% after 4)."""

    def __init__(self, in_channels: int = 1, num_classes: int = 10, width: int = 32):
        super().__init__()
        layers, c = [], in_channels
        for i, w in enumerate((width, 2 * width, 4 * width)):
            layers += [nn.Conv2d(c, w, 3, padding=1, bias=False), nn.BatchNorm2d(w), nn.ReLU(inplace=True)]
            layers += [nn.MaxPool2d(2)] if i < 2 else [nn.AdaptiveAvgPool2d(1), nn.Flatten()]
            c = w
        self.features = nn.Sequential(*layers)
        self.head = nn.Linear(c, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x))


def train_teacher(train_data, epochs: int = 10, batch_size: int = 128, lr: float = 0.05, seed: int = 0,
                  progress: bool = True) -> TeacherCNN:
    """SGD (Nesterov momentum 0.9, one-cycle schedule, weight decay 5e-4) with crop-and-flip augmentation;
    deterministic given ``seed``. The global RNG is left as it was."""
    from tqdm.auto import tqdm

    from ghn.datasets import make_loader

    if epochs < 1:
        raise ValueError(f"epochs must be >= 1, got {epochs}")
    with torch.random.fork_rng(devices=[]):  # the teacher's own init, seeded; the caller's RNG state is restored
        torch.manual_seed(seed)
        model = TeacherCNN(train_data.in_channels, train_data.num_classes).to(memory_format=torch.channels_last)
    opt = torch.optim.SGD(model.parameters(), lr=lr, momentum=0.9, weight_decay=5e-4, nesterov=True)
    loaders = [make_loader(train_data, batch_size, shuffle=True, seed=seed + e, drop_last=True, augment=True)
               for e in range(epochs)]
    total = sum(len(d) for d in loaders)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=lr, total_steps=total, pct_start=0.15)
    model.train()
    with tqdm(total=total, desc="teacher", disable=not progress, dynamic_ncols=True) as bar:
        for loader in loaders:
            for x, y in loader:
                loss = F.cross_entropy(model(x.contiguous(memory_format=torch.channels_last)), y)
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
                sched.step()
                bar.update()
                bar.set_postfix(loss=f"{loss.item():.3f}", refresh=False)
    return model.eval()


@torch.no_grad()
def predict_logits(model: nn.Module, images: torch.Tensor, batch_size: int = 1000) -> torch.Tensor:
    """Eval-mode logits of ``images`` in order, float32 ``[N, classes]``."""
    model.eval()
    return torch.cat([model(images[i:i + batch_size].contiguous(memory_format=torch.channels_last)).float()
                      for i in range(0, len(images), batch_size)])


def tensor_digest(t: torch.Tensor) -> str:
    """A short checksum of a tensor's values and dtype: the labels tie a logits file to the training set in its order,
    the logits tie a resumed distilled run to the teacher it was trained with."""
    return hashlib.sha256(t.detach().cpu().contiguous().numpy().tobytes()).hexdigest()[:16]


def save_logits(path, logits: torch.Tensor, labels: torch.Tensor, dataset: str, extra: Optional[Dict] = None) -> None:
    from safetensors.torch import save_file

    if logits.shape[0] != labels.shape[0]:
        raise ValueError(f"{logits.shape[0]} logits rows for {labels.shape[0]} labels")
    meta = {"dataset": dataset, "n": str(len(labels)), "labels_sha256_16": tensor_digest(labels.long()),
            "extra": json.dumps(extra or {})}
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    save_file({"logits": logits.float().contiguous()}, str(path), metadata=meta)


def load_logits(path, labels: torch.Tensor, dataset: str = "") -> torch.Tensor:
    """Teacher logits for the training set whose labels are ``labels``; ``ValueError`` (one line) when the file is
    not a logits file, or was made for another dataset, size or order."""
    from safetensors import safe_open

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"--distill {path}: no such file (make one: python -m ghn.teacher --out {path})")
    try:
        with safe_open(str(path), framework="pt") as f:
            meta = f.metadata() or {}
            logits = f.get_tensor("logits")
    except Exception as e:  # not safetensors, or no "logits" tensor
        raise ValueError(f"--distill {path}: not a teacher logits file ({type(e).__name__}: {e})") from None
    if dataset and meta.get("dataset") and meta["dataset"] != dataset:
        raise ValueError(f"--distill {path}: made for dataset {meta['dataset']!r}, training on {dataset!r}")
    if logits.dim() != 2 or logits.shape[0] != len(labels):
        raise ValueError(f"--distill {path}: logits of shape {tuple(logits.shape)}, the training set has "
                         f"{len(labels)} images")
    if meta.get("labels_sha256_16") not in (None, tensor_digest(labels.long())):
        raise ValueError(f"--distill {path}: made for other labels (another split or order of the training set)")
    if not bool(torch.isfinite(logits).all()):
        raise ValueError(f"--distill {path}: logits are not all finite")
    return logits.float()


def distill_loss(logits: torch.Tensor, teacher: torch.Tensor, temperature: float) -> torch.Tensor:
    """``T^2 KL(softmax(teacher / T) || softmax(logits / T))``, batch mean (Hinton et al.'s scaling keeps its
    gradient comparable with the cross-entropy's across temperatures)."""
    t = temperature
    return F.kl_div(F.log_softmax(logits / t, -1), F.log_softmax(teacher / t, -1), log_target=True,
                    reduction="batchmean") * t * t


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--dataset", default="fashion-mnist")
    p.add_argument("--data-root", default=None)
    p.add_argument("--epochs", type=int, default=10)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", required=True, help="the logits file (.safetensors) for train.py --distill")
    p.add_argument("--no-progress", action="store_true")
    a = p.parse_args(argv)
    from ghn.datasets import get_dataset

    try:
        train_data = get_dataset(a.dataset, a.data_root, train=True)
        test_data = get_dataset(a.dataset, a.data_root, train=False)
        model = train_teacher(train_data, a.epochs, seed=a.seed, progress=not a.no_progress)
    except (FileNotFoundError, KeyError, ValueError) as e:
        print(f"error: {type(e).__name__}: {e}", file=sys.stderr)
        return 2
    logits = predict_logits(model, train_data.images)
    train_acc = float((logits.argmax(-1) == train_data.labels).float().mean())
    test_acc = float((predict_logits(model, test_data.images).argmax(-1) == test_data.labels).float().mean())
    info = {"epochs": a.epochs, "seed": a.seed, "train_top1": round(train_acc, 4), "test_top1": round(test_acc, 4)}
    save_logits(a.out, logits, train_data.labels, train_data.name or a.dataset, info)
    print(json.dumps({"out": a.out, **info}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
