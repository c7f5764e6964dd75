#!/usr/bin/env python
"""Cost of the hypernetwork's own pass in a training step: forward + backward on meta-batches of val architectures.

Times the shipped hypernetwork (its design and weights) predicting every tensor of the first ``--n`` val
architectures (<= ``--max-arch-params``) in meta-batches of ``--meta-batch``, then backpropagating a sum of the
predictions, the best of ``--repeat`` passes. With ``--compare REV`` the same measurement runs on git revision REV
(a temporary worktree) and on the working tree, alternating for ``--rounds`` rounds, and reports the speed ratio
and the largest difference between the two sides' predictions (0: the same math). Writes
benchmarks/results/ghn_pass.json.

    OMP_NUM_THREADS=1 python benchmarks/ghn_pass.py --compare HEAD~1 --rounds 2
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent.parent


def measure(n: int, max_arch_params: int, meta_batch: int, repeat: int, save_preds: str = "") -> float:
    """Seconds for the best of ``repeat`` forward + backward passes over the architectures (this process's ghn)."""
    from _results import small_archs

    from ghn.archs.storage import ArchDataset
    from ghn.graph import ArchGraph
    from ghn.hypernet import load_pretrained
    from ghn.task import Task

    val = ArchDataset(str(ROOT / "data" / "val.jsonl.gz"))
    todo = small_archs(val, n, max_arch_params)
    task = Task(10, 1, 28)  # Fashion-MNIST
    x = task.example_input()
    graphs = [ArchGraph.from_module(val.build(i, **task.model_kwargs()), x) for i in todo]
    hyper = load_pretrained(str(ROOT / "ghn" / "pretrained" / "ghn-fmnist.safetensors"))
    chunks = [graphs[k:k + meta_batch] for k in range(0, len(graphs), meta_batch)]

    def one_pass():
        preds = []
        for gs in chunks:
            out = hyper(gs)
            sum(t.sum() for o in out for t in o.values()).backward()
            preds += [{k: t.detach() for k, t in o.items()} for o in out]
        return preds

    preds = one_pass()  # warm-up
    if save_preds:
        torch.save(preds, save_preds)
    best = float("inf")
    for _ in range(repeat):
        t = time.perf_counter()
        one_pass()
        best = min(best, time.perf_counter() - t)
    return best


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--n", type=int, default=16)
    p.add_argument("--max-arch-params", type=int, default=500_000)
    p.add_argument("--meta-batch", type=int, default=4)
    p.add_argument("--repeat", type=int, default=3)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--compare", default=None, metavar="REV")
    p.add_argument("--rounds", type=int, default=2)
    p.add_argument("--save-preds", default="", help=argparse.SUPPRESS)  # used by --compare's child processes
    p.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "ghn_pass.json"))
    a = p.parse_args(argv)
    torch.set_num_threads(a.threads)
    args = ["--n", str(a.n), "--max-arch-params", str(a.max_arch_params), "--meta-batch", str(a.meta_batch),
            "--repeat", str(a.repeat), "--threads", str(a.threads)]
    if a.compare is None:
        secs = measure(a.n, a.max_arch_params, a.meta_batch, a.repeat, a.save_preds)
        print(json.dumps({"seconds": secs}))
        if a.save_preds:
            return 0
        from _results import write_results

        write_results(a.out, {"args": vars(a), "seconds": secs})
        return 0
    with tempfile.TemporaryDirectory() as tmp:
        tree = Path(tmp) / "rev"
        subprocess.run(["git", "-C", str(ROOT), "worktree", "add", "-q", "--detach", str(tree), a.compare], check=True)
        try:
            secs = {"rev": [], "new": []}
            for r in range(a.rounds):
                for side, root in (("rev", tree), ("new", ROOT)):
                    env = {**os.environ, "PYTHONPATH": str(root), "OMP_NUM_THREADS": str(a.threads)}
                    cmd = [sys.executable, str(Path(__file__).resolve()), *args,
                           "--save-preds", str(Path(tmp) / f"{side}.pt")]
                    out = subprocess.run(cmd, cwd=root, env=env, capture_output=True, text=True)
                    if out.returncode != 0:
                        raise SystemExit(f"{side} failed:\n{out.stderr[-2000:]}")
                    secs[side].append(json.loads(out.stdout.strip().splitlines()[-1])["seconds"])
                    print(f"round {r} {side}: {secs[side][-1]:.3f} s", flush=True)
            old, new = torch.load(Path(tmp) / "rev.pt"), torch.load(Path(tmp) / "new.pt")
            diff = max(float((o[k] - n_[k]).abs().max()) for o, n_ in zip(old, new) for k in o)
        finally:
            subprocess.run(["git", "-C", str(ROOT), "worktree", "remove", "--force", str(tree)], check=False)
    best = {k: min(v) for k, v in secs.items()}
    ratio = best["rev"] / best["new"]
    print(f"hypernetwork forward + backward, {a.n} val archs: {a.compare} {best['rev']:.3f} s, working tree "
          f"{best['new']:.3f} s: {ratio:.2f}x; max |prediction diff| {diff:.1e}")
    from _results import write_results

    write_results(a.out, {"args": vars(a), "seconds": secs, "best": best, "ratio": ratio, "max_pred_diff": diff})
    return 0


if __name__ == "__main__":
    sys.exit(main())
