#!/usr/bin/env python
"""Which kinds of convolution the target networks' time goes to (the training issue's config by default).

The target networks' convolutions are three quarters of a training step (benchmarks/profile_step.py). This records
every ``conv2d`` call of one forward of the first ``--n`` val CNNs (<= ``--max-arch-params``) on ``--batch-size``
Fashion-MNIST-sized images, then times forward + backward of each distinct call in channels_last (the training
layout) in isolation and adds them up by kind: dense or depthwise, kernel size, dilation, stride. Writes
benchmarks/results/conv_mix.json.

    OMP_NUM_THREADS=1 python benchmarks/conv_mix.py --threads 1 --n 20
"""
from __future__ import annotations

import argparse
import time
from collections import Counter

import torch
import torch.nn.functional as F
from _results import small_archs, write_results  # noqa: E402  (benchmarks/ is on sys.path when run as a script)
from torch.overrides import TorchFunctionMode

CONV_ARGS = ("input", "weight", "bias", "stride", "padding", "dilation", "groups")


class _Record(TorchFunctionMode):
    """Counts the distinct ``conv2d`` calls (shapes and settings) of the forwards run under it."""

    def __init__(self):
        super().__init__()
        self.calls = Counter()

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func in (F.conv2d, torch.conv2d):
            a = {**dict(zip(CONV_ARGS, args)), **kwargs}
            pair = lambda v: tuple(v) if isinstance(v, (tuple, list)) else (v, v)  # noqa: E731
            pad = a.get("padding", 0)
            self.calls[(tuple(a["input"].shape), tuple(a["weight"].shape), pair(a.get("stride", 1)),
                        pad if isinstance(pad, str) else pair(pad), pair(a.get("dilation", 1)),
                        a.get("groups", 1))] += 1
        return func(*args, **kwargs)


def kind(weight_shape, stride, dilation, groups) -> str:
    k = "x".join(map(str, weight_shape[2:]))
    return (("depthwise" if groups > 1 else "dense") + k + (f" dil{dilation[0]}" if dilation[0] > 1 else "")
            + (f" stride{stride[0]}" if stride[0] > 1 else ""))


def time_call(xs, ws, stride, padding, dilation, groups, repeat: int) -> float:
    x = torch.randn(*xs).contiguous(memory_format=torch.channels_last).requires_grad_()
    w = (torch.randn(*ws) * 0.1).requires_grad_()
    run = lambda: F.conv2d(x, w, None, stride, padding, dilation, groups).sum().backward()  # noqa: E731
    run()  # warm-up
    t = time.perf_counter()
    for _ in range(repeat):
        run()
    return (time.perf_counter() - t) / repeat


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--n", type=int, default=20)
    p.add_argument("--max-arch-params", type=int, default=500_000)
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--repeat", type=int, default=3)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--out", default="benchmarks/results/conv_mix.json")
    a = p.parse_args(argv)
    torch.set_num_threads(a.threads)
    from ghn.archs.storage import ArchDataset

    val = ArchDataset("val")
    todo = small_archs(val, a.n, a.max_arch_params, family="cnn")
    rec = _Record()
    with torch.no_grad(), rec:
        for i in todo:
            val.build(i, num_classes=10, in_channels=1, image_size=28)(torch.randn(a.batch_size, 1, 28, 28))
    secs = Counter()
    for (xs, ws, stride, padding, dilation, groups), count in rec.calls.items():
        secs[kind(ws, stride, dilation, groups)] += count * time_call(xs, ws, stride, padding, dilation, groups,
                                                                      a.repeat)
    total = sum(secs.values())
    rows = [{"kind": k, "seconds": s, "share": s / total} for k, s in secs.most_common()]
    for r in rows:
        print(f"{r['kind']:24s} {r['seconds']:7.3f} s  {100 * r['share']:5.1f}%")
    write_results(a.out, {"args": vars(a), "archs": todo, "total_seconds": total, "kinds": rows})
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
