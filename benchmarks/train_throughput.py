#!/usr/bin/env python
"""Training throughput of the hypernetwork: architectures/s and images/s, against training the networks directly.

For each setting (meta-batch size x architecture-building worker processes) it runs ``ghn.training.train`` for
``--steps`` steps and averages the logged rates after ``--warmup`` steps. The baseline, in the same run, is a
plain SGD step of the same sampled architectures on the same image batch size (no hypernetwork): "images/s" counts
one image through one network as one pass in both, so the ratio says what the hypernetwork costs per network step.
Writes benchmarks/results/train_throughput_<cpu|gpu>.json.

    python benchmarks/train_throughput.py --device cuda --meta-batch 4 8 --workers 0 8
"""
from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from _results import write_results  # noqa: E402  (benchmarks/ is on sys.path when run as a script)


def direct_sgd_rate(pool, data, steps: int, meta_batch: int, batch_size: int, device: str, seed: int) -> dict:
    """Images/s and archs/s of ordinary SGD steps on the same kind of architectures (models prebuilt)."""
    from ghn.archstream import step_rng

    sync = torch.cuda.synchronize if device.startswith("cuda") else (lambda: None)
    passes, archs, elapsed = 0, 0, 0.0
    for s in range(steps):
        idx = torch.randint(len(pool), (meta_batch,), generator=step_rng(seed, s, 0, "archs")).tolist()
        models = [pool.get(i, torch.device(device))[0] for i in idx]
        bi = torch.randint(len(data.labels), (batch_size,), generator=step_rng(seed, s, 0, "images"))
        x, y = data.images[bi].to(device), data.labels[bi].to(device)
        sync()
        t = time.perf_counter()
        for m in models:
            m.train()
            opt = torch.optim.SGD(m.parameters(), lr=0.01, momentum=0.9)
            loss = F.cross_entropy(m(x), y)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
        sync()
        if s >= 2:  # first steps warm up kernels/allocator
            elapsed += time.perf_counter() - t
            passes += batch_size * len(models)
            archs += len(models)
    return {"images_per_s": passes / elapsed, "archs_per_s": archs / elapsed}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--dataset", default="fashion-mnist")
    p.add_argument("--archs", default="train", help="architecture split or specs file")
    p.add_argument("--meta-batch", type=int, nargs="+", default=[4, 8])
    p.add_argument("--workers", type=int, nargs="+", default=[0, 8])
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--steps", type=int, default=40)
    p.add_argument("--warmup", type=int, default=10)
    p.add_argument("--hidden", type=int, default=None)
    p.add_argument("--out", default=None)
    p.add_argument("--compare", metavar="REV", help="run the same config on git revision REV and on the working "
                   "tree, interleaved, and print the archs/s ratio (see benchmarks/_compare.py)")
    p.add_argument("--layout", default="1x2", help="--compare: PROCSxTHREADS of the working tree (e.g. 2x1)")
    p.add_argument("--base-layout", default="1x2", help="--compare: PROCSxTHREADS of REV")
    p.add_argument("--rounds", type=int, default=2, help="--compare: interleaved rounds")
    p.add_argument("--max-arch-params", type=int, default=500_000)
    p.add_argument("--base-ghn", default="{}", help="--compare: hypernetwork config overrides for REV (JSON)")
    p.add_argument("--new-ghn", default="", help="--compare: ... for the working tree (default: --base-ghn)")
    p.add_argument("--new-extra", default="{}", help="--compare: extra TrainConfig fields for the working tree")
    a = p.parse_args(argv)
    if a.compare:
        from _compare import compare

        res = compare(a.compare, a)
        print(f"archs/s: {a.compare} ({a.base_layout}) {res['archs_per_s']['base']:.2f}, working tree "
              f"({a.layout}) {res['archs_per_s']['new']:.2f}: ratio {res['ratio']:.2f}x; max |loss diff| over "
              f"the steps {res['max_loss_diff']:.2e}")
        write_results(a.out or "benchmarks/results/train_throughput_compare.json", {"args": vars(a), **res})
        return 0

    from ghn.archstream import ArchPool
    from ghn.data import ArchDataset
    from ghn.datasets import get_dataset
    from ghn.task import Task
    from ghn.training import TrainConfig, train

    data = get_dataset(a.dataset, train=True)
    archs = ArchDataset(a.archs)
    cpu = not a.device.startswith("cuda")
    ghn_over = {"hidden": a.hidden} if a.hidden else {}
    rows = []
    for mb in a.meta_batch:
        for w in a.workers:
            with tempfile.TemporaryDirectory() as tmp:
                cfg = TrainConfig(out_dir=tmp, steps=a.steps, meta_batch=mb, batch_size=a.batch_size, workers=w,
                                  log_every=1, ckpt_every=10**9, progress=False, cpu=cpu, warmup_steps=5,
                                  ghn=ghn_over)
                t = time.perf_counter()
                train(cfg, data=data, archs=archs)
                wall = time.perf_counter() - t
                recs = [json.loads(line) for line in open(Path(tmp) / "log.jsonl")][a.warmup:]
            row = {"meta_batch": mb, "workers": w, "batch_size": a.batch_size, "steps": a.steps,
                   "archs_per_s": statistics.mean(r["archs_per_s"] for r in recs),
                   "images_per_s": statistics.mean(r["images_per_s"] for r in recs),
                   "steps_per_s": 1.0 / statistics.mean(r["archs_per_step"] / r["archs_per_s"] for r in recs),
                   "wall_s": wall}
            rows.append(row)
            print(json.dumps(row), flush=True)
    pool = ArchPool(archs, Task.of(data))
    base = direct_sgd_rate(pool, data, 12, max(a.meta_batch), a.batch_size, a.device, seed=0)
    print(json.dumps({"direct_sgd": base}), flush=True)
    for r in rows:
        r["images_per_s_over_direct_sgd"] = r["images_per_s"] / base["images_per_s"]
    doc = {"device": a.device, "device_name": torch.cuda.get_device_name() if not cpu else None,
           "args": vars(a), "direct_sgd": base, "rows": rows}
    out = Path(a.out or f"benchmarks/results/train_throughput_{'cpu' if cpu else 'gpu'}.json")
    write_results(out, doc)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
