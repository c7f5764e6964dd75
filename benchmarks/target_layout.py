#!/usr/bin/env python
"""Target-network cost of one training step under different memory layouts and precisions, side by side.

The target networks' convolutions are three quarters of a training step on this CPU (benchmarks/profile_step.py).
For each of the first ``--n`` val architectures (<= ``--max-arch-params``) this times the forward + backward of
``torch.func.functional_call`` with hypernetwork-predicted parameters on ``--batch-size`` Fashion-MNIST-sized images
(what ``ghn.training`` runs per architecture), in every variant, interleaved over ``--rounds`` rounds so machine
load hits all variants alike:

- ``nchw``: the default, fp32 contiguous;
- ``cl``: channels_last input and 4-D weights;
- ``bf16``: CPU autocast to bfloat16 (NCHW);
- ``cl_bf16``: both;
- ``cl_fast``: channels_last with stride == dilation convs on the subsampled input (:mod:`ghn.fastconv`, exact).

Reports per-variant total seconds, the speed-up over the first of ``--variants`` and the loss difference to it
(bf16 changes the math).
Writes benchmarks/results/target_layout.json.

    OMP_NUM_THREADS=1 python benchmarks/target_layout.py --threads 1 --n 16
"""
from __future__ import annotations

import argparse
import contextlib
import time

import torch
import torch.nn.functional as F
from _results import small_archs, write_results  # noqa: E402  (benchmarks/ is on sys.path when run as a script)

from ghn.fastconv import fast_convs

VARIANTS = ("nchw", "cl", "bf16", "cl_bf16", "cl_fast")


def step(model, params, x, y, variant: str) -> float:
    """One forward + backward into the predicted tensors; returns the loss."""
    if variant.startswith("cl"):
        x = x.contiguous(memory_format=torch.channels_last)
        params = {k: t.contiguous(memory_format=torch.channels_last) if t.dim() == 4 else t for k, t in params.items()}
    fast = fast_convs(model) if variant.endswith("fast") else contextlib.nullcontext()
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=variant.endswith("bf16")), fast:
        logits = torch.func.functional_call(model, params, (x,), strict=False)
    loss = F.cross_entropy(logits.float(), y)
    loss.backward()
    return float(loss.detach())


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--n", type=int, default=16)
    p.add_argument("--max-arch-params", type=int, default=500_000)
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=VARIANTS)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--out", default="benchmarks/results/target_layout.json")
    a = p.parse_args(argv)
    torch.set_num_threads(a.threads)
    from ghn.archs.storage import ArchDataset
    from ghn.graph import ArchGraph
    from ghn.hypernet import GraphHyperNetwork

    val = ArchDataset("val")
    todo = small_archs(val, a.n, a.max_arch_params)
    torch.manual_seed(0)
    hyper = GraphHyperNetwork()
    x, y = torch.randn(a.batch_size, 1, 28, 28), torch.randint(0, 10, (a.batch_size,))
    cases = []
    for i in todo:
        m = val.build(i, num_classes=10, in_channels=1, image_size=28).train()
        with torch.no_grad():
            preds = hyper([ArchGraph.from_module(m, x[:2])])[0]
        cases.append((i, m, {k: t.detach().requires_grad_() for k, t in preds.items()}))
    variants = list(dict.fromkeys(a.variants))  # the first is the baseline
    secs = {v: 0.0 for v in variants}
    loss = {v: [] for v in variants}
    for r in range(a.rounds + 1):  # round 0 warms up kernels and the allocator
        for _, m, params in cases:
            for v in variants:
                t = time.perf_counter()
                ls = step(m, params, x, y, v)
                if r:
                    secs[v] += time.perf_counter() - t
                    loss[v].append(ls)
    base = variants[0]
    res = {v: {"seconds": secs[v], "speedup": secs[base] / secs[v],
               "max_abs_loss_diff": max(abs(a_ - b) for a_, b in zip(loss[v], loss[base]))} for v in variants}
    for v, d in res.items():
        print(f"{v:8s} {d['seconds']:7.2f} s  x{d['speedup']:.2f} over {base}  "
              f"max |loss diff| {d['max_abs_loss_diff']:.1e}")
    write_results(a.out, {"args": vars(a), "archs": todo, "baseline": base, "variants": res})
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
