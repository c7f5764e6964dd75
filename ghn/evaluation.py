"""Evaluating predicted parameters: accuracy with no training, and after short fine-tuning (vs. default init).

BatchNorm running statistics are buffers the hypernetwork does not predict; before evaluating in eval mode they are
re-estimated on a few training batches with no gradient step (``calibrate_norm_stats``). Every function takes an
explicit seed: no global RNG state is read or changed. Models run under :func:`ghn.fastconv.fast_convs` (exact).
"""
from __future__ import annotations

from typing import Any, Dict, Iterable, Iterator, Optional

import torch
import torch.nn as nn
import torch.nn.functional as F

from ghn.fastconv import fast_convs
from ghn.tracing import call_model, default_example_input


@torch.no_grad()
def calibrate_norm_stats(model: nn.Module, batches: Iterable[Any], params: Optional[Dict] = None) -> None:
    """Re-estimate BatchNorm running statistics (cumulative average over ``batches``: tensors, argument tuples or
    keyword dicts), no gradient steps."""
    bns = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    if not bns:
        return
    momenta = [m.momentum for m in bns]
    was_training = model.training
    for m in bns:
        m.reset_running_stats()
        m.momentum = None
    model.train()
    fast = fast_convs(model)
    try:
        for x in batches:
            with fast:
                if params is None:
                    call_model(model, x)
                else:
                    torch.func.functional_call(model, params, (x,), strict=False)
    finally:
        for m, mom in zip(bns, momenta):
            m.momentum = mom
        model.train(was_training)


def reestimate_norm_stats(model: nn.Module, example_input: Any) -> str:
    """BatchNorm statistics of ``model`` re-estimated on one example input (guessed when None); returns what was
    done ("" for a model without BatchNorm). On failure (a batch of one cannot give batch statistics) the
    statistics are restored as they were."""
    bns = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    if not bns:
        return ""
    if example_input is None:
        try:
            example_input = default_example_input(model)
        except ValueError:
            return "left as they were (no example input to re-estimate them on)"
    saved = [{k: v.clone() for k, v in m.state_dict().items()} for m in bns]
    try:
        calibrate_norm_stats(model, [example_input])
    except Exception as e:  # noqa: BLE001  (e.g. a batch of one: "Expected more than 1 value per channel")
        for m, st in zip(bns, saved):
            m.load_state_dict(st)
        first = (str(e).strip().splitlines() or [type(e).__name__])[0][:120]
        return f"left as they were (re-estimating them on the example input failed: {first})"
    return "re-estimated on the example input"


def batches(data, batch_size: int, seed: int, shuffle: bool = True, limit: Optional[int] = None
            ) -> Iterator[tuple]:
    """Yield ``(images, labels)`` batches of an in-memory dataset in a seeded order."""
    n = len(data.labels)
    order = torch.randperm(n, generator=torch.Generator().manual_seed(seed)) if shuffle else torch.arange(n)
    for k, i in enumerate(range(0, n, batch_size)):
        if limit is not None and k >= limit:
            return
        idx = order[i:i + batch_size]
        yield data.images[idx], data.labels[idx]


@torch.no_grad()
def accuracy(model: nn.Module, data, batch_size: int = 500, device: str = "cpu") -> float:
    """Top-1 accuracy of ``model`` in eval mode on a whole dataset."""
    model.eval()
    correct, fast = 0, fast_convs(model)
    for x, y in batches(data, batch_size, 0, shuffle=False):
        with fast:
            correct += (model(x.to(device)).argmax(-1).cpu() == y).sum().item()
    return correct / len(data.labels)


def evaluate_init(model: nn.Module, train_data, test_data, calib_batches: int = 20, batch_size: int = 128,
                  seed: int = 0, device: str = "cpu") -> float:
    """Accuracy of ``model`` as it is (e.g. predicted parameters), after BN-statistics calibration only."""
    model.to(device)
    calibrate_norm_stats(model, (x.to(device) for x, _ in batches(train_data, batch_size, seed, limit=calib_batches)))
    return accuracy(model, test_data, device=device)


def finetune(model: nn.Module, train_data, epochs: float = 1.0, lr: float = 0.05, batch_size: int = 128,
             seed: int = 0, device: str = "cpu", max_steps: Optional[int] = None) -> int:
    """Plain SGD (momentum 0.9, nesterov, cosine LR, wd 5e-4) for ``epochs`` passes; returns the number of steps."""
    model.to(device).train()
    steps_per_epoch = (len(train_data.labels) + batch_size - 1) // batch_size
    total = int(round(epochs * steps_per_epoch))
    if max_steps is not None:
        total = min(total, max_steps)
    opt = torch.optim.SGD(model.parameters(), lr=lr, momentum=0.9, nesterov=True, weight_decay=5e-4)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=lr, total_steps=max(total, 1), pct_start=0.1)
    step, epoch, fast = 0, 0, fast_convs(model)
    while step < total:
        for x, y in batches(train_data, batch_size, seed + epoch):
            if step >= total:
                break
            with fast:
                loss = F.cross_entropy(model(x.to(device)), y.to(device))
            opt.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 5.0)
            opt.step()
            sched.step()
            step += 1
        epoch += 1
    return step
