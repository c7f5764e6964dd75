#!/usr/bin/env python
"""Can the hypernetwork fit a small fixed pool of architectures? Training accuracy against pool size and design.

A diagnostic of optimisation rather than generalisation: train from scratch on the first ``--pool`` train-split
architectures (<= ``--max-arch-params``), meta-batch 4 x 32 Fashion-MNIST images, and report the mean training
accuracy over the last ``--window`` steps, for each ``--runs`` entry (a JSON dict of TrainConfig fields, with
hypernetwork config under ``"ghn"``). One architecture is a plain reparameterised network; if a pool of 4 cannot be
fitted in the same budget, architectures interfere through the shared hypernetwork.
Writes benchmarks/results/pool_learning.json.

    python benchmarks/pool_learning.py --steps 150 --runs '{"pool_size": 1}' '{"pool_size": 4}' \\
        '{"pool_size": 4, "arch_grad_norm": true}'
"""
from __future__ import annotations

import argparse
import json
import statistics
import tempfile
from pathlib import Path

import torch
from _results import write_results  # noqa: E402  (benchmarks/ is on sys.path when run as a script)

ROOT = Path(__file__).resolve().parent.parent


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--runs", nargs="+", required=True, help="JSON dicts of TrainConfig overrides, one per run")
    p.add_argument("--steps", type=int, default=150)
    p.add_argument("--window", type=int, default=25)
    p.add_argument("--archs", default=str(ROOT / "data" / "train.jsonl.gz"))
    p.add_argument("--max-arch-params", type=int, default=500_000)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "pool_learning.json"))
    a = p.parse_args(argv)
    torch.set_num_threads(a.threads)
    from ghn.datasets import get_dataset
    from ghn.training import TrainConfig, Trainer

    data = get_dataset("fashion-mnist", None, train=True)
    rows = []
    for spec in a.runs:
        over = json.loads(spec)
        with tempfile.TemporaryDirectory() as tmp:
            base = dict(archs=a.archs, out_dir=tmp, steps=a.steps, meta_batch=4, batch_size=32, lr=1e-3,
                        warmup_steps=20, max_arch_params=a.max_arch_params, ckpt_every=10**9, log_every=10**9,
                        seed=0, cpu=True, progress=False)
            trainer = Trainer(TrainConfig(**{**base, **over}), data)
            accs = []
            try:
                trainer.run(lambda r: accs.append(r["acc"]))
            finally:
                trainer.close()
        curve = [statistics.mean(accs[i:i + a.window]) for i in range(0, len(accs), a.window)]
        row = {"run": over, "final_acc": curve[-1], "acc_per_window": curve}
        rows.append(row)
        print(json.dumps(row), flush=True)
    write_results(a.out, {"args": vars(a), "rows": rows})
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
