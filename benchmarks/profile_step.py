#!/usr/bin/env python
"""Where the time of one training step goes, phase by phase (the training issue's config by default).

Runs the same computation as ``Trainer.train_step`` with a timer around each phase, on one process:
building models + graphs (no cache), the PyG export (features, virtual edges), batching, encoder forward, decoder
forward, target-network forwards (``functional_call``), the backward pass (hypernetwork and targets together),
the optimizer step, and the rest (Python overhead). Also a ``torch.profiler`` table of the top ops. Writes
benchmarks/results/profile_step.json.

    OMP_NUM_THREADS=2 python benchmarks/profile_step.py --threads 2 --steps 20
"""
from __future__ import annotations

import argparse
import statistics
import time
from collections import defaultdict
from pathlib import Path

import torch
import torch.nn.functional as F
from _results import write_results  # noqa: E402  (benchmarks/ is on sys.path when run as a script)

PHASES = ("build", "features", "batch", "encoder_fwd", "decoder_fwd", "target_fwd", "backward", "optimizer", "other")


def profile(a) -> dict:
    from ghn.archstream import ArchPool, select_archs, step_rng
    from ghn.data import ArchDataset
    from ghn.datasets import get_dataset
    from ghn.hypernet import GraphHyperNetwork
    from ghn.task import Task

    torch.set_num_threads(a.threads)
    data = get_dataset(a.dataset, train=True)
    task = Task.of(data)
    archs = ArchDataset(a.archs)
    idx = select_archs(archs, a.archs, "", a.max_arch_params, 0, task)
    pool = ArchPool(archs, task, cache_size=0, indices=idx)
    torch.manual_seed(0)
    ghn = GraphHyperNetwork()
    featurize = ghn.featurizer()
    opt = torch.optim.AdamW(ghn.parameters(), lr=1e-3)
    times = defaultdict(list)
    for s in range(a.steps + a.warmup):
        t = {}
        t0 = time.perf_counter()
        ids = torch.randint(len(pool), (a.meta_batch,), generator=step_rng(0, s, 0, "archs")).tolist()
        built = [pool.get(i, torch.device("cpu")) for i in ids]
        pool.cache.clear()
        models, graphs = [m for m, _ in built], [g for _, g in built]
        t["build"] = time.perf_counter()
        datas = [featurize(g) for g in graphs]
        t["features"] = time.perf_counter()
        batch = ghn.to_pyg_batch(graphs, datas)
        bi = torch.randint(len(data.labels), (a.batch_size,), generator=step_rng(0, s, 0, "images"))
        x, y = data.images[bi], data.labels[bi]
        t["batch"] = time.perf_counter()
        h = ghn.encoder(batch)
        t["encoder_fwd"] = time.perf_counter()
        preds = ghn.decode(graphs, batch, h)
        t["decoder_fwd"] = time.perf_counter()
        losses = [F.cross_entropy(torch.func.functional_call(m, p, (x,), strict=False), y)
                  for m, p in zip(models, preds)]
        loss = torch.stack(losses).mean()
        t["target_fwd"] = time.perf_counter()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        t["backward"] = time.perf_counter()
        torch.nn.utils.clip_grad_norm_(ghn.parameters(), 5.0)
        opt.step()
        t["optimizer"] = time.perf_counter()
        t_end = time.perf_counter()
        if s >= a.warmup:
            prev = t0
            for ph in PHASES[:-1]:
                times[ph].append(t[ph] - prev)
                prev = t[ph]
            times["other"].append(t_end - prev)
            times["total"].append(t_end - t0)
    med = {k: statistics.median(v) for k, v in times.items()}
    total = sum(statistics.mean(times[p]) for p in PHASES)
    share = {p: statistics.mean(times[p]) / total for p in PHASES}
    return {"median_s": med, "share": share, "archs_per_s": a.meta_batch / statistics.mean(times["total"])}


def top_ops(a, n: int = 15) -> list:
    """``torch.profiler`` self-CPU time of the top ops over a few steps (after warm-up)."""
    from torch.profiler import ProfilerActivity
    from torch.profiler import profile as tprofile

    b = argparse.Namespace(**{**vars(a), "steps": 3, "warmup": 1})
    with tprofile(activities=[ProfilerActivity.CPU]) as prof:
        profile(b)
    rows = sorted(prof.key_averages(), key=lambda e: e.self_cpu_time_total, reverse=True)[:n]
    tot = sum(e.self_cpu_time_total for e in prof.key_averages())
    return [{"op": e.key, "self_cpu_share": e.self_cpu_time_total / tot, "calls": e.count} for e in rows]


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--dataset", default="fashion-mnist")
    p.add_argument("--archs", default="val")
    p.add_argument("--max-arch-params", type=int, default=500_000)
    p.add_argument("--meta-batch", type=int, default=4)
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--steps", type=int, default=20)
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--out", default=str(Path(__file__).parent / "results" / "profile_step.json"))
    a = p.parse_args(argv)
    res = profile(a)
    res["top_ops"] = top_ops(a)
    for ph in PHASES:
        print(f"{ph:12s} {1e3 * res['median_s'][ph]:8.1f} ms  {100 * res['share'][ph]:5.1f}%")
    print(f"{'total':12s} {1e3 * res['median_s']['total']:8.1f} ms   {res['archs_per_s']:.2f} archs/s")
    for r in res["top_ops"]:
        print(f"  {r['op'][:50]:50s} {100 * r['self_cpu_share']:5.1f}%  x{r['calls']}")
    write_results(a.out, {"args": vars(a), **res})
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
