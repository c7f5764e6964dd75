#!/usr/bin/env python
"""Gated message passing vs. graph transformer as the hypernetwork's encoder: speed and early training loss.

For each encoder (same hidden size, layers, decoder, seed and data order): the time of an encoder forward+backward
on a batch of 8 test-split graphs, the hypernetwork's parameter count, and the mean training loss / accuracy over
the last ``--tail`` steps of a short Fashion-MNIST training run on small architectures. Writes
benchmarks/results/encoder_compare.json.

    python benchmarks/encoder_compare.py --steps 150 --max-arch-params 200000
"""
from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from pathlib import Path

import torch
from _results import write_results  # noqa: E402  (benchmarks/ is on sys.path when run as a script)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--steps", type=int, default=150)
    p.add_argument("--tail", type=int, default=50)
    p.add_argument("--max-arch-params", type=int, default=200_000)
    p.add_argument("--archs", default="train")
    p.add_argument("--seeds", type=int, nargs="+", default=[0])
    p.add_argument("--out", default="benchmarks/results/encoder_compare.json")
    a = p.parse_args(argv)

    from ghn.archstream import ArchPool
    from ghn.data import ArchDataset
    from ghn.datasets import get_dataset
    from ghn.hypernet import GraphHyperNetwork
    from ghn.task import Task
    from ghn.training import TrainConfig, train

    data = get_dataset("fashion-mnist", train=True)
    archs = ArchDataset(a.archs)
    test = ArchDataset("test")
    pool = ArchPool(test, Task(10, 1, 28))
    graphs = [pool.get(i, torch.device("cpu"))[1] for i in range(8)]
    rows = []
    for conv in ("gated", "transformer"):
        torch.manual_seed(0)
        ghn = GraphHyperNetwork(conv=conv)
        batch = ghn.to_pyg_batch(graphs)
        ts = []
        for _ in range(6):
            t = time.perf_counter()
            ghn.encoder(batch).square().mean().backward()
            ts.append(time.perf_counter() - t)
        row = {"conv": conv, "ghn_params": ghn.num_params(), "encoder_fwd_bwd_ms": 1e3 * statistics.median(ts[1:]),
               "runs": []}
        for seed in a.seeds:
            with tempfile.TemporaryDirectory() as tmp:
                cfg = TrainConfig(out_dir=tmp, steps=a.steps, meta_batch=4, batch_size=32, lr=1e-3, warmup_steps=20,
                                  log_every=1, ckpt_every=10**9, progress=False, cpu=True, seed=seed,
                                  max_arch_params=a.max_arch_params, ghn={"conv": conv})
                train(cfg, data=data, archs=archs)
                recs = [json.loads(line) for line in open(Path(tmp) / "log.jsonl")][-a.tail:]
            row["runs"].append({"seed": seed, "loss_tail": statistics.mean(r["loss"] for r in recs),
                                "acc_tail": statistics.mean(r["acc"] for r in recs)})
        row["loss_tail_mean"] = statistics.mean(r["loss_tail"] for r in row["runs"])
        row["acc_tail_mean"] = statistics.mean(r["acc_tail"] for r in row["runs"])
        rows.append(row)
        print(json.dumps(row), flush=True)
    write_results(a.out, {"args": vars(a), "rows": rows})
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
