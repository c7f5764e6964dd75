#!/usr/bin/env python
"""Honest evaluation of predicted parameters on held-out architectures.

For each architecture of a split: top-1 on the real test set of
  (a) predicted parameters, no training;  (b) default PyTorch init, no training;
  (c) predicted init + E epochs of SGD;    (d) default init + E epochs of SGD (same data order, same recipe).
BatchNorm statistics are re-estimated on --calib-batches training batches (no gradient step) before every
evaluation, also after fine-tuning: running averages lag behind fast-changing weights (a BN CNN read 13% in eval
mode with stale statistics and 77% after re-estimation).
Default-init results (b, d) do not depend on the hypernetwork: they are reused from --default-cache when the model's
tensors, the evaluation code, the thread count and every setting match (a second evaluation costs half).
With --speedup (needs --epochs 1), the predicted-init 1-epoch run is also evaluated after the SGD steps of
--speedup-at (on a copy; the run itself is unchanged): the first of those steps at which it reaches default init's
1-epoch accuracy gives the speed-up ``1-epoch steps / that step``. The learning rate has not annealed at an
intermediate step, and the grid rounds up, so the figure is a lower bound; not reached within the epoch counts as 0.
Writes benchmarks/results/eval_<dataset>_<split>.json with per-architecture numbers and a summary (also by family
and by size band). Every finished architecture is also appended to ``<out>.partial.jsonl`` at once: an evaluation
stopped midway (a session's end) resumes from it when run again with the same settings, and the file is removed
once the results are written.

    python benchmarks/eval.py --ckpt ghn/pretrained/ghn-fmnist.safetensors --split test --n 50 --epochs 1
"""
from __future__ import annotations

import argparse
import copy
import json
import statistics
import time
from pathlib import Path

import torch
from _results import DefaultInitCache, PartialRows, ghn_fingerprint, write_results  # noqa: E402  (benchmarks/ is on sys.path when run as a script)

from ghn.plot import no_harm

_CTX: dict = {}
SIZE_BANDS = ((500_000, "<=500k"), (1_000_000, "<=1M"), (float("inf"), ">1M"))


class StepProbe(torch.nn.Module):
    """Wraps a model being fine-tuned: before the forward of each step ``k + 1`` with ``k`` in ``at`` (after ``k``
    SGD steps) ``evaluate`` gets a copy of the model. The copy and the restored global RNG state (BN calibration runs
    dropout) leave the fine-tuning trajectory exactly that of the unwrapped model."""

    def __init__(self, model: torch.nn.Module, at, evaluate):
        super().__init__()
        self.model, self.at, self.evaluate, self.calls, self.curve = model, set(at), evaluate, 0, {}

    def forward(self, x):
        if self.calls in self.at:
            rng = torch.get_rng_state()
            self.curve[self.calls] = self.evaluate(copy.deepcopy(self.model))
            torch.set_rng_state(rng)
        self.calls += 1
        return self.model(x)


def speedup(curve: dict, total: int, target: float) -> float:
    """``total / k`` for the first step ``k`` of ``curve`` (step -> accuracy) reaching ``target``; 0 if none does."""
    k = next((k for k in sorted(curve) if curve[k] >= target), None)
    return total / k if k else 0.0


def size_band(params: int) -> str:
    return next(name for top, name in SIZE_BANDS if params <= top)


def _setup(a) -> None:
    """Per-process state (each worker process of --procs loads its own copy)."""
    from ghn.data import ArchDataset
    from ghn.datasets import get_dataset
    from ghn.hypernet import load_pretrained

    torch.set_num_threads(max(1, torch.get_num_threads() // max(1, a.procs)))
    test = get_dataset(a.dataset, a.data_root, train=False)
    test.images, test.labels = test.images[:a.test_n], test.labels[:a.test_n]
    hyper = load_pretrained(a.ckpt, a.device)
    _CTX.update(a=a, ghn=hyper.with_config(**a.ghn_over) if a.ghn_over else hyper,
                train=get_dataset(a.dataset, a.data_root, train=True),
                test=test, archs={sp: ArchDataset(sp) for sp in a.split},
                cache=DefaultInitCache(a.default_cache, enabled=a.default_cache != "none"))


def _eval_arch(item) -> dict:
    from ghn.evaluation import evaluate_init, finetune
    from ghn.task import Task

    split, i = item
    a, ghn, train, test = (_CTX[k] for k in ("a", "ghn", "train", "test"))
    archs = _CTX["archs"][split]
    task, dev = Task.of(train), a.device
    row = {"split": split, "index": i, "spec": archs[i]}

    def fresh():
        torch.manual_seed(a.seed + i)  # the default init of this architecture, identical for every variant
        m = archs.build(i, **task.model_kwargs())
        return m.to(memory_format=torch.channels_last) if a.channels_last else m

    t = time.perf_counter()
    pred = fresh().to(dev)
    rep = ghn.initialize(pred, task.example_input().to(dev))
    row["predict_s"] = time.perf_counter() - t
    row["params"] = sum(q.numel() for q in pred.parameters())
    row["untouched"] = list(rep.untouched)
    state_pred = {k: v.clone() for k, v in pred.state_dict().items()}
    row["acc_pred"] = evaluate_init(pred, train, test, calib_batches=a.calib_batches, seed=a.seed, device=dev)
    cache, base = _CTX["cache"], dict(dataset=a.dataset, test_n=a.test_n, calib=a.calib_batches, seed=a.seed,
                                      channels_last=a.channels_last)
    untrained = fresh()  # default init, only fingerprinted for the cache keys
    row["acc_default"] = cache.get(cache.key(untrained, **base), lambda: evaluate_init(
        fresh(), train, test, calib_batches=a.calib_batches, seed=a.seed, device=dev))
    budgets = [(f"ft{e:g}", dict(epochs=e)) for e in a.epochs] + \
        [(f"ft{n}s", dict(epochs=1e9, max_steps=n)) for n in a.steps]  # --steps: a fixed SGD step budget
    for key, kw in budgets:
        m = fresh().to(dev)
        m.load_state_dict(state_pred)
        probe = StepProbe(m, a.speedup_at if a.speedup and key == "ft1" else (), lambda c: evaluate_init(
            c, train, test, calib_batches=a.calib_batches, seed=a.seed, device=dev))
        total = finetune(probe, train, lr=a.lr, seed=a.seed, device=dev, **kw)
        row[f"{key}_pred"] = evaluate_init(m, train, test, calib_batches=a.calib_batches, seed=a.seed, device=dev)
        if probe.curve:
            row["ft1_pred_curve"] = {**probe.curve, total: row["ft1_pred"]}

        def ft_default(kw=kw):
            m = fresh()
            finetune(m, train, lr=a.lr, seed=a.seed, device=dev, **kw)
            return evaluate_init(m, train, test, calib_batches=a.calib_batches, seed=a.seed, device=dev)

        row[f"{key}_default"] = cache.get(cache.key(untrained, **base, lr=a.lr, **kw), ft_default)
        if probe.curve:
            row["ft1_steps"], row["speedup"] = total, speedup(row["ft1_pred_curve"], total, row["ft1_default"])
    print(json.dumps({k: (round(v, 4) if isinstance(v, float) else v) for k, v in row.items() if k != "spec"}),
          flush=True)
    return row


def _row_settings(a) -> dict:
    """Everything a row's numbers depend on: rows of a stopped run are reused only when all of it matches."""
    return {"ghn_fingerprint": ghn_fingerprint(a.ckpt), "ghn_over": a.ghn_over,
            "dataset": a.dataset, "data_root": a.data_root, "test_n": a.test_n, "calib_batches": a.calib_batches,
            "epochs": a.epochs, "steps": a.steps, "lr": a.lr, "seed": a.seed, "channels_last": a.channels_last,
            "speedup_at": a.speedup_at if a.speedup else None, "device": str(a.device),
            "threads": max(1, torch.get_num_threads() // max(1, a.procs)), "torch": torch.__version__}


def _parser() -> argparse.ArgumentParser:
    from ghn.hypernet import add_config_arguments

    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--ckpt", default=None, help="hypernetwork checkpoint; default: the shipped one")
    p.add_argument("--dataset", default="fashion-mnist")
    p.add_argument("--data-root", default=None)
    p.add_argument("--split", nargs="+", default=["test"], help="architecture splits (data/<split>.jsonl.gz); "
                   "'predefined' holds the built-in resnet18, resnet50, mobilenet_v2 and vit_small")
    p.add_argument("--n", type=int, default=20, help="first N architectures of each split")
    p.add_argument("--max-params", type=float, default=0,
                   help="> 0: only architectures up to this many parameters (a CPU budget; reported)")
    p.add_argument("--calib-batches", type=int, default=20,
                   help="BatchNorm calibration batches (128 images), before every evaluation incl. after fine-tuning")
    p.add_argument("--indices", type=int, nargs="*", default=None, help="evaluate exactly these architectures")
    p.add_argument("--epochs", type=float, nargs="*", default=[1.0], help="fine-tuning budgets (epochs)")
    p.add_argument("--steps", type=int, nargs="*", default=[], help="fine-tuning budgets in SGD steps (e.g. 100)")
    p.add_argument("--lr", type=float, default=0.05)
    p.add_argument("--speedup", action="store_true", help="also the SGD-step speed-up to default init's 1-epoch "
                   "accuracy (needs --epochs 1; see above)")
    p.add_argument("--speedup-at", type=int, nargs="+", default=[25, 50, 75, 100, 150, 200, 250, 300, 350, 400],
                   help="--speedup: SGD steps at which the predicted-init epoch is evaluated")
    p.add_argument("--test-n", type=int, default=10000, help="test images used (first N)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--procs", type=int, default=1, help="architectures evaluated in parallel (processes)")
    p.add_argument("--out", default=None)
    p.add_argument("--rows-from", nargs="+", default=[], metavar="PARTIAL",
                   help="also take the finished rows of these .partial.jsonl files of the same settings (another "
                        "process that took the list from the other end): they are copied into this run's rows")
    p.add_argument("--fresh", action="store_true", help="ignore (and overwrite) the rows of a stopped evaluation "
                   "in <out>.partial.jsonl instead of resuming from them")
    p.add_argument("--channels-last", action=argparse.BooleanOptionalAction, default=True,
                   help="4-D weights in channels_last (conv nets about 1.2x faster on CPU; float-level differences)")
    p.add_argument("--default-cache", default=str(Path(__file__).parent / "results" / "default_init_cache.json"),
                   help="default-init results are reused from here (keyed by the model's tensors, the evaluation "
                   "code and every setting); 'none' recomputes them")
    add_config_arguments(p)
    return p


def _todo(a) -> list:
    """``(split, index)`` of every architecture the settings ask for, in order."""
    from ghn.data import ArchDataset

    todo = []
    for sp in a.split:
        archs = ArchDataset(sp)
        idx = list(range(len(archs)))
        if a.max_params > 0 and sp != "predefined":  # the built-in models are evaluated whatever their size
            from ghn.datasets import get_dataset
            from ghn.space import count_params

            d = get_dataset(a.dataset, a.data_root, train=False)
            idx = [i for i in idx if count_params(archs[i], d.num_classes, d.in_channels, d.image_size) <= a.max_params]
        idx = idx[:a.n] if a.indices is None else list(a.indices)
        todo += [(sp, i) for i in idx]
    return todo


def _evaluate(a, left: list, done: dict, partial: PartialRows) -> None:
    """Evaluate the architectures ``left`` (in ``a.procs`` processes), each row saved as soon as it is done."""
    if a.procs > 1 and left:
        import multiprocessing as mp

        with mp.get_context("spawn").Pool(a.procs, initializer=_setup, initargs=(a,)) as pool:
            for row in pool.imap(_eval_arch, left, chunksize=1):
                done[(row["split"], row["index"])] = partial.add(row)
    elif left:
        _setup(a)
        for t in left:
            done[t] = partial.add(_eval_arch(t))


def summarize(rows: list, epochs, steps, speedup: bool = False) -> dict:
    """Means over the rows, by kind, family and size band, and each fine-tuning budget's wins and no-harm share."""
    def mean(k):
        return statistics.mean(r[k] for r in rows)

    summary = {"n_archs": len(rows), "acc_pred_mean": mean("acc_pred"), "acc_default_mean": mean("acc_default"),
               "acc_pred_median": statistics.median(r["acc_pred"] for r in rows),
               "acc_pred_max": max(r["acc_pred"] for r in rows)}
    groups: dict = {"by_kind": {}, "by_family": {}, "by_size": {}}
    for r in rows:  # e.g. "cnn/bn", "vit/layer": where predictions work and where they do not
        groups["by_kind"].setdefault(f"{r['spec'].get('family')}/{r['spec'].get('norm', r['spec'].get('name'))}",
                                     []).append(r)
        groups["by_family"].setdefault(str(r["spec"].get("family")), []).append(r)
        groups["by_size"].setdefault(size_band(r["params"]), []).append(r)
    for g, members in groups.items():
        summary[g] = {k: {"n": len(v), "acc_pred_mean": statistics.mean(r["acc_pred"] for r in v),
                          "acc_default_mean": statistics.mean(r["acc_default"] for r in v)}
                      for k, v in sorted(members.items())}
    if speedup:
        summary["speedup_median"] = statistics.median(r["speedup"] for r in rows)
    for key in [f"ft{e:g}" for e in epochs] + [f"ft{n}s" for n in steps]:
        summary[f"{key}_pred_mean"] = mean(f"{key}_pred")
        summary[f"{key}_default_mean"] = mean(f"{key}_default")
        summary[f"{key}_pred_wins"] = sum(r[f"{key}_pred"] > r[f"{key}_default"] for r in rows) / len(rows)
        summary[f"{key}_no_harm"] = sum(no_harm(r[f"{key}_pred"], r[f"{key}_default"]) for r in rows) / len(rows)
    return summary


def main(argv=None) -> int:
    from ghn.hypernet import load_pretrained, pop_config_overrides

    p = _parser()
    a = p.parse_args(argv)
    a.ghn_over = pop_config_overrides(vars(a))  # decoding settings that keep the tensors (--default-scale-under-norm)
    if a.speedup and 1.0 not in a.epochs:
        p.error("--speedup measures against the 1-epoch budget: add --epochs 1")
    if min(a.speedup_at) < 1:
        p.error(f"--speedup-at takes SGD step counts >= 1, got {min(a.speedup_at)}")
    todo = _todo(a)
    out = Path(a.out or f"benchmarks/results/eval_{a.dataset}_{'+'.join(a.split)}.json")
    partial = PartialRows(out.with_name(out.name + ".partial.jsonl"), _row_settings(a), ("split", "index"),
                          fresh=a.fresh)
    for other in a.rows_from:
        print(f"adopted {partial.adopt(other)} rows from {other}", flush=True)
    done = partial.rows()
    left = [t for t in todo if t not in done]
    if done:
        print(f"resuming: {len(todo) - len(left)} of {len(todo)} architectures from {partial.path}", flush=True)
    t0 = time.perf_counter()
    _evaluate(a, left, done, partial)
    rows = [done[t] for t in todo]
    summary = summarize(rows, a.epochs, a.steps, a.speedup)
    doc = {"procs": a.procs, "cuda": torch.cuda.get_device_name() if torch.cuda.is_available() else None,
           "args": vars(a), "ckpt_extra": getattr(load_pretrained(a.ckpt), "extra", {}),
           "seconds": time.perf_counter() - t0, "summary": summary, "rows": rows}
    write_results(out, doc)
    partial.path.unlink(missing_ok=True)  # every row is in the results now
    print(json.dumps(summary, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
