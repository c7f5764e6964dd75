#!/usr/bin/env python
"""The fixed CPU proxy protocol: accept or reject a hypernetwork design by training it from scratch, side by side.

One run = one design (hypernetwork config flags + training flags), always on the same budget and data:

1. **train** from scratch for ``--steps`` steps (a step budget, not minutes: a busy machine does not change the
   result) on a fixed pool: the first ``--pool-size`` architectures of the generated train split with at most
   ``--max-arch-params`` parameters (CNNs with every norm, and ViTs), Fashion-MNIST, meta-batch 4 x 32 images;
2. **evaluate** on a fixed val subset (the first ``--n`` val architectures of the same size range): top-1 with
   no training (predicted vs default init, BN statistics re-estimated), the spectrum of the predicted weights
   (``ghn.inspect``: effective-rank ratio, top-sigma energy, same-role cosine), and ``--ft-steps`` SGD steps from
   both inits on the first ``--ft-n`` of them (same data orders; the mean over ``--ft-seeds`` orders).

Writes ``benchmarks/results/proxy/<name>.json`` and prints the docs/BENCHMARKS.md table row.

    python -m ghn.data generate --split train --n 1000000 --seed 0 --out data/train.jsonl.gz   # once
    python benchmarks/proxy.py --name legacy --no-base --no-orth --no-pos-features --max-pred-share 1
    python benchmarks/proxy.py --name base50 --max-pred-share 0.5
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from pathlib import Path

import torch
from _results import DefaultInitCache, PartialRows, small_archs, write_results  # noqa: E402  (benchmarks/ is on sys.path when run as a script)

from ghn.plot import no_harm

ROOT = Path(__file__).resolve().parent.parent


def train_design(a, ghn_over: dict) -> Path:
    """Train (or reuse a finished run of) the design; returns the hypernetwork checkpoint."""
    from ghn.training import TrainConfig, train

    out = Path(a.runs) / a.name
    ckpt = out / "ghn.safetensors"
    if ckpt.is_file():
        from ghn.hypernet import GraphHyperNetwork

        if GraphHyperNetwork.load(ckpt).extra.get("step") == a.steps:
            print(f"reusing the finished run {out}", flush=True)
            return ckpt
    from ghn import rundir

    resume = rundir.latest_checkpoint(out)
    if resume is None and rundir.holds_a_run(out):  # killed before its first checkpoint: nothing to resume
        import shutil

        shutil.rmtree(out)
    cfg = TrainConfig(dataset="fashion-mnist", archs=a.archs, out_dir=str(out), steps=a.steps, meta_batch=4,
                      batch_size=32, lr=a.lr, warmup_steps=50, max_arch_params=a.max_arch_params,
                      pool_size=a.pool_size, logit_norm=a.logit_norm,
                      arch_grad_norm=a.arch_grad_norm, ckpt_every=max(1, a.steps // 4),
                      distill=a.distill, distill_alpha=a.distill_alpha, distill_temp=a.distill_temp,
                      log_every=25, seed=a.seed, cpu=True, resume=str(resume) if resume else None, ghn=ghn_over,
                      progress=not os.environ.get("CI"))
    train(cfg)
    return ckpt


_CTX: dict = {}  # what every architecture's row needs, loaded once per process (_setup_eval)


def _setup_eval(a, ckpt: Path) -> None:
    from ghn.data import ArchDataset
    from ghn.datasets import get_dataset
    from ghn.hypernet import GraphHyperNetwork
    from ghn.task import Task

    torch.set_num_threads(a.threads)  # also in worker processes: the default-init cache keys carry it
    hyper = GraphHyperNetwork.load(ckpt)
    if a.eval_only and a.ghn_over:  # a decoding setting that keeps the tensors (e.g. --norm-scale)
        hyper = hyper.with_config(**a.ghn_over)
    train = get_dataset("fashion-mnist", None, train=True)
    test = get_dataset("fashion-mnist", None, train=False)
    test.images, test.labels = test.images[:a.test_n], test.labels[:a.test_n]
    # Default init does not depend on the design: its results are cached per architecture and setting.
    cache = DefaultInitCache(ROOT / "benchmarks" / "results" / "proxy" / "_default_init.json",
                             enabled=not a.no_default_cache)
    _CTX.update(a=a, hyper=hyper, train=train, test=test, task=Task.of(train), val=ArchDataset("val"), cache=cache,
                reused=_reused_ft(a, ckpt))


def _arch_row(job) -> dict:
    """The row of the ``k``-th val architecture ``i``: spectrum, no-training top-1, and fine-tuning if k < ft_n."""
    from ghn.evaluation import evaluate_init, finetune
    from ghn.inspect import inspect_model

    k, i = job
    a, hyper, train, test, task, val, cache = (_CTX[n] for n in ("a", "hyper", "train", "test", "task", "val",
                                                                 "cache"))
    x = task.example_input()

    def fresh():
        torch.manual_seed(i)
        return val.build(i, **task.model_kwargs())

    model = fresh()
    ins = inspect_model(model, hyper, x).summary()
    pred = fresh()
    hyper.initialize(pred, x)
    settings, untrained = dict(dataset="fashion-mnist", test_n=a.test_n, calib=a.calib_batches), fresh()
    row = {"index": i, "family": val[i]["family"], "norm": val[i].get("norm"), **ins,
           "acc_pred": evaluate_init(pred, train, test, calib_batches=a.calib_batches),
           "acc_default": cache.get(cache.key(untrained, **settings), lambda: evaluate_init(
               fresh(), train, test, calib_batches=a.calib_batches))}
    if k < a.ft_n and i in _CTX["reused"]:
        row.update(_CTX["reused"][i])
    elif k < a.ft_n:
        state = {n: t.clone() for n, t in pred.state_dict().items()}
        fp, fd = [], []
        for seed in range(a.ft_seeds):  # data orders (seed 0: the protocol's original single run)
            m = fresh()
            m.load_state_dict(state)
            finetune(m, train, epochs=1, lr=0.05, max_steps=a.ft_steps, seed=seed)
            fp.append(evaluate_init(m, train, test, calib_batches=a.calib_batches))

            def ft_default(seed=seed):
                m = fresh()
                finetune(m, train, epochs=1, lr=0.05, max_steps=a.ft_steps, seed=seed)
                return evaluate_init(m, train, test, calib_batches=a.calib_batches)

            seed_key = {"ft_seed": seed} if seed else {}  # seed 0 keeps the keys cached before seeds existed
            fd.append(cache.get(cache.key(untrained, **settings, ft_steps=a.ft_steps, lr=0.05, **seed_key),
                                ft_default))
        row["ft_pred"], row["ft_default"] = statistics.mean(fp), statistics.mean(fd)
        if a.ft_seeds > 1:
            row["ft_pred_seeds"], row["ft_default_seeds"] = fp, fd
    return row


def row_settings(a, ckpt: Path) -> dict:
    """Everything a row's numbers depend on: rows of a stopped evaluation are reused only when all of it matches."""
    from ghn.hypernet import checkpoint_fingerprint

    return {"ghn_fingerprint": checkpoint_fingerprint(ckpt), "ghn_over": a.ghn_over, "test_n": a.test_n,
            "calib_batches": a.calib_batches, "ft_n": a.ft_n, "ft_steps": a.ft_steps, "ft_seeds": a.ft_seeds,
            "ft_from": a.ft_from, "max_arch_params": a.max_arch_params, "threads": a.threads,
            "torch": torch.__version__}


def eval_design(a, ckpt: Path, partial: PartialRows) -> dict:
    """Every row of the evaluation; each is appended to ``partial`` as it finishes, and a stopped evaluation
    resumes from the rows there."""
    if a.procs > 1:  # the workers load the hypernetwork and data; here only the list of architectures is needed
        from ghn.data import ArchDataset
        from ghn.datasets import get_dataset
        from ghn.task import Task

        val, task = ArchDataset("val"), Task.of(get_dataset("fashion-mnist", None, train=False))
    else:
        _setup_eval(a, ckpt)
        val, task = _CTX["val"], _CTX["task"]
    todo = small_archs(val, a.n, a.max_arch_params, task.in_channels, task.image_size)
    done = {i: r for (i,), r in partial.rows().items()}
    jobs = [(k, i) for k, i in enumerate(todo) if i not in done]
    if done:
        print(f"resuming: {len(todo) - len(jobs)} of {len(todo)} architectures from {partial.path}", flush=True)
    if a.procs > 1 and jobs:  # architectures side by side, each process on --threads threads (same rows)
        import multiprocessing as mp

        pool = mp.get_context("spawn").Pool(a.procs, initializer=_setup_eval, initargs=(a, ckpt))
        computed = pool.imap(_arch_row, jobs, chunksize=1)
    else:
        pool, computed = None, map(_arch_row, jobs)
    try:
        for row in computed:
            done[row["index"]] = partial.add(row)
            print(json.dumps({k2: round(v, 3) if isinstance(v, float) else v for k2, v in row.items()}), flush=True)
    finally:
        if pool is not None:
            pool.terminate()
    rows = [done[i] for i in todo]
    med = lambda key: statistics.median(r[key] for r in rows if r[key] is not None)  # noqa: E731
    ft = [r for r in rows if "ft_pred" in r]
    return {"n": len(rows), "acc_pred": statistics.mean(r["acc_pred"] for r in rows),
            "acc_default": statistics.mean(r["acc_default"] for r in rows),
            "rank_ratio": med("median_rank_ratio"), "top_energy": med("median_top_energy"),
            "role_cos": med("median_role_cos"),
            "ft_n": len(ft), "ft_pred": statistics.mean(r["ft_pred"] for r in ft) if ft else None,
            "ft_default": statistics.mean(r["ft_default"] for r in ft) if ft else None,
            "ft_no_harm": sum(no_harm(r["ft_pred"], r["ft_default"]) for r in ft) / len(ft) if ft else None,
            "ft_gap_by_family": {f: statistics.mean(r["ft_pred"] - r["ft_default"] for r in ft if _fam(r) == f)
                                 for f in sorted({_fam(r) for r in ft})},
            "rows": rows}


def _reused_ft(a, ckpt: Path) -> dict:
    """``{val index: fine-tuning fields}`` of ``--ft-from``, an earlier results file of the same checkpoint, decoding
    and fine-tuning settings (e.g. a run with a small ``--n``); anything else is refused."""
    if not a.ft_from:
        return {}
    old = json.loads(Path(a.ft_from).read_text())
    same = ("ft_steps", "ft_seeds", "test_n", "calib_batches", "max_arch_params")
    diff = [k for k in same if old["args"].get(k, 1 if k == "ft_seeds" else None) != getattr(a, k)]
    if "ghn_fingerprint" in old:  # the same weights and config, wherever the file is now
        from ghn.hypernet import checkpoint_fingerprint

        same_ckpt = old["ghn_fingerprint"] == checkpoint_fingerprint(ckpt)
    else:  # results written before the fingerprint: the same path
        same_ckpt = Path(old["args"].get("ckpt") or "").resolve() == Path(ckpt).resolve()
    if not same_ckpt or old.get("ghn") != a.ghn_over:
        diff.append("ckpt/decoding")
    if diff:
        sys.exit(f"error: --ft-from {a.ft_from}: {', '.join(diff)} differ from this evaluation's")
    keys = ("ft_pred", "ft_default", "ft_pred_seeds", "ft_default_seeds")
    return {r["index"]: {k: r[k] for k in keys if k in r} for r in old["rows"] if "ft_pred" in r}


def _fam(row: dict) -> str:
    return f"{row['family']}-{row['norm']}"


def main(argv=None) -> int:
    from ghn.hypernet import add_config_arguments, pop_config_overrides

    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--name", required=True, help="design name (run dir and result file)")
    p.add_argument("--steps", type=int, default=800, help="training steps (the fixed budget)")
    p.add_argument("--archs", default=str(ROOT / "data" / "train.jsonl.gz"))
    p.add_argument("--pool-size", type=int, default=5000)
    p.add_argument("--max-arch-params", type=int, default=500_000)
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--logit-norm", type=float, default=0.0)
    p.add_argument("--arch-grad-norm", action="store_true", help="unit-norm gradient per architecture (training)")
    p.add_argument("--seed", type=int, default=0, help="training seed (architecture and image order, init)")
    p.add_argument("--distill", default="", help="teacher logits (python -m ghn.teacher) to distil from")
    p.add_argument("--distill-alpha", type=float, default=0.5)
    p.add_argument("--distill-temp", type=float, default=2.0)
    p.add_argument("--n", type=int, default=48, help="val architectures evaluated with no training")
    p.add_argument("--ft-n", type=int, default=4, help="of which fine-tuned (100 steps of a 300k DARTS CNN at batch "
                   "128 take about 4 min on 2 cores)")
    p.add_argument("--ft-steps", type=int, default=100)
    p.add_argument("--ft-seeds", type=int, default=1, help="fine-tuning data orders per architecture and init; "
                   "ft_pred / ft_default are their means (one 100-step run of a LayerNorm CNN moves by 10+ points "
                   "with the data order)")
    p.add_argument("--ft-from", default=None, help="take the fine-tuning results of these architectures from an "
                   "earlier results file of the same checkpoint and settings (e.g. one run with a small --n)")
    p.add_argument("--test-n", type=int, default=1000, help="test images per evaluation (first N)")
    p.add_argument("--calib-batches", type=int, default=5, help="BN re-estimation batches of 128 images")
    p.add_argument("--threads", type=int, default=2, help="intra-op threads (of each process with --procs)")
    p.add_argument("--procs", type=int, default=1, help="val architectures evaluated side by side in processes "
                   "(e.g. 2 x --threads 1 on 2 cores; the same rows as one process of --threads threads)")
    p.add_argument("--runs", default=str(ROOT / "runs" / "proxy"))
    p.add_argument("--out", default=None)
    p.add_argument("--no-default-cache", action="store_true",
                   help="recompute default-init results instead of reading benchmarks/results/proxy/_default_init.json")
    p.add_argument("--fresh", action="store_true", help="ignore (and overwrite) the rows of a stopped evaluation in "
                   "<out>.partial.jsonl instead of resuming from them")
    p.add_argument("--eval-only", action="store_true", help="evaluate --ckpt (or the run's checkpoint) only")
    p.add_argument("--ckpt", default=None)
    add_config_arguments(p)
    a = p.parse_args(argv)
    torch.set_num_threads(a.threads)
    ghn_over = pop_config_overrides(vars(a))
    a.ghn_over = ghn_over
    if not a.eval_only and not Path(a.archs).is_file():
        sys.exit(f"error: {a.archs} not found; generate it: python -m ghn.data generate --split train "
                 "--n 1000000 --seed 0 --out data/train.jsonl.gz")
    t0 = time.perf_counter()
    ckpt = Path(a.ckpt) if a.ckpt else (Path(a.runs) / a.name / "ghn.safetensors" if a.eval_only
                                        else train_design(a, ghn_over))
    t_train = time.perf_counter() - t0
    out = Path(a.out or ROOT / "benchmarks" / "results" / "proxy" / f"{a.name}.json")
    partial = PartialRows(out.with_name(out.name + ".partial.jsonl"), row_settings(a, ckpt), ("index",),
                          fresh=a.fresh)
    res = eval_design(a, ckpt, partial)
    from ghn.hypernet import checkpoint_fingerprint

    doc = {"name": a.name, "args": vars(a), "ghn": ghn_over, "ghn_fingerprint": checkpoint_fingerprint(ckpt),
           "train_seconds": t_train,
           "eval_seconds": time.perf_counter() - t0 - t_train, **res}
    write_results(out, doc)
    partial.path.unlink(missing_ok=True)  # every row is in the results now
    f = lambda v: "-" if v is None else f"{v:.2f}"  # noqa: E731
    pc = lambda v: "-" if v is None else f"{100 * v:.1f}"  # noqa: E731
    print(f"| {a.name} | {a.steps} | {pc(res['acc_pred'])} / {pc(res['acc_default'])} | "
          f"{pc(res['ft_pred'])} / {pc(res['ft_default'])} ({res['ft_n']}) | {f(res['ft_no_harm'])} | "
          f"{f(res['rank_ratio'])} | {f(res['top_energy'])} | {f(res['role_cos'])} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
