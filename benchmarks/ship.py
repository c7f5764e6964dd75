#!/usr/bin/env python
"""Make a trained hypernetwork the shipped default, with the metadata users and the issues ask for.

Copies ``--ckpt`` to ``ghn/pretrained/ghn-fmnist.safetensors`` and adds to its metadata: how it was chosen, the
training steps, CPU- and wall-hours (from the run's ``log.jsonl`` next to the checkpoint or in the run dir above a
``ckpt-STEP/``, up to the checkpoint's step: the logged archs/s of every interval times its cores; a run started
``--init-from RUN/ckpt-STEP/`` adds RUN's steps and hours up to STEP), the machine, the
command that trained it, the validation figures of ``--result`` (a ``benchmarks/proxy.py`` results file) and the
summaries of ``--eval`` (``benchmarks/eval.py`` results files of the same checkpoint: test split, built-in models).
Decoding settings that keep the tensors (e.g. ``--default-scale-under-norm``) are applied as they were in that
evaluation (``proxy.py --eval-only`` with the same flags). A checkpoint written before train.py recorded the op
types it trained on (``trained_ops``) gets them from a scan of ``--scan`` architectures spread over its training
pool.

    python benchmarks/ship.py --ckpt runs/proxy/NAME/ghn.safetensors --result benchmarks/results/proxy/NAME.json
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def scan_trained_ops(extra: dict, n: int) -> list:
    """Op types owning parameters in ``n`` architectures spread evenly over the pool a checkpoint trained on."""
    from tqdm.auto import tqdm

    from ghn.archs.storage import ArchDataset
    from ghn.archstream import ArchPool, select_archs
    from ghn.task import Task

    tc, task = extra["train_config"], Task.from_dict(extra)
    archs = ArchDataset(tc["archs"])
    idx = select_archs(archs, tc["archs"], tc.get("arch_filter", ""), tc.get("max_arch_params", 0),
                       tc.get("pool_size", 0), task) or list(range(len(archs)))
    pool = ArchPool(archs, task, cache_size=0, indices=idx[::max(1, len(idx) // n)][:n])
    ops = set()
    for i in tqdm(range(len(pool)), desc="scan trained ops", leave=False):
        ops |= {ref.op for _, ref in pool.get(i, "cpu")[1].param_refs()}
    return sorted(ops)


def run_hours(ckpt: str, step, cores: int) -> dict:
    """:func:`ghn.rundir.run_record`, an error message instead of a traceback when the log is missing or wrong."""
    from ghn.rundir import RunDirError, run_record

    try:
        return run_record(ckpt, step, cores)
    except RunDirError as e:
        sys.exit(f"error: {e}")


def training_lineage(ckpt: str, extra: dict, cores: int) -> list:
    """The runs behind a checkpoint, oldest first: a run started with ``--init-from RUN/ckpt-STEP/...`` also counts
    that run's steps and hours up to STEP (its own checkpoint may have been rotated out; its log is enough), and a run
    started ``--init-from`` a shipped hypernetwork or another run's output counts the runs train.py recorded behind
    it (``init_lineage``, :func:`ghn.rundir.lineage_of`). A shipped hypernetwork shipped again (other decoding
    settings, the same tensors) keeps the lineage its metadata records."""
    from ghn.rundir import run_log

    if run_log(ckpt) is None and extra.get("lineage"):
        return list(extra["lineage"])
    out = [run_hours(ckpt, extra.get("step"), cores)]
    parent = (extra.get("train_config") or {}).get("init_from")  # one level: the campaign's own start is documented
    if parent:
        name = Path(parent).parent.name
        if name.startswith("ckpt-") and (Path(parent).parent.parent / "log.jsonl").is_file():
            # that run recounted here (--cores for log records without theirs), after the runs behind it
            rec, before = run_hours(parent, int(name[5:]), cores), list(extra.get("init_lineage") or [])
            out[:0] = (before[:-1] if before and before[-1].get("run") == rec["run"] else before) + [rec]
        elif extra.get("init_lineage"):  # train.py recorded the runs behind the file it started from
            out[:0] = list(extra["init_lineage"])
        elif shipped := _shipped_lineage(parent):  # older runs: the metadata of the file now at that path
            out[:0] = shipped
        else:
            print(f"note: the hours before --init-from {parent} are not counted (no run log found for it)")
    return out


def _shipped_lineage(path: str) -> list:
    """The ``lineage`` a hypernetwork shipped by this script records in its metadata ([] if none or unreadable)."""
    from ghn.hypernet import GraphHyperNetwork

    try:
        return list(GraphHyperNetwork.load(path).extra.get("lineage") or [])
    except Exception:  # not a loadable hypernetwork file: nothing to count
        return []


def eval_figures(path: str, step) -> tuple:
    """``(key, figures)`` of a ``benchmarks/eval.py`` results file of the same checkpoint: its summary's numbers,
    with means by size band and family (and by model for the built-in ones), keyed by split(s) and budget."""
    res = json.loads(Path(path).read_text())
    got = (res.get("ckpt_extra") or {}).get("step")
    if got != step:
        sys.exit(f"error: {path} evaluated the checkpoint of step {got}, not this one (step {step})")
    r4 = lambda v: round(v, 4) if isinstance(v, float) else v  # noqa: E731
    s, args = res["summary"], res["args"]
    budget = [f"{e}ep" for e in args.get("epochs") or []] + [f"{n}steps" for n in args.get("steps") or []]
    key = "+".join(args["split"]) + ("_" + "_".join(budget) if budget else "_no_training")
    figs = {k: r4(v) for k, v in s.items() if not isinstance(v, dict)}
    figs.update({g: {k: {m: r4(x) for m, x in v.items()} for k, v in s[g].items()}
                 for g in ("by_size", "by_family", "by_kind") if g in s and len(s[g]) > 1})
    figs.update(test_images=args.get("test_n"), command=res.get("command"), date=res.get("date"))
    return key, figs


def main(argv=None) -> int:
    from _results import machine  # benchmarks/ is on sys.path when run as a script

    from ghn.hypernet import GraphHyperNetwork, add_config_arguments, pop_config_overrides
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--ckpt", required=True)
    p.add_argument("--result", required=True, help="the proxy.py results file of that checkpoint")
    p.add_argument("--cores", type=int, default=2, help="CPU cores the training used (processes x threads), for log "
                   "records that do not say (train.py logs `cores` since session 6)")
    p.add_argument("--chosen-by", default="benchmarks/proxy.py, criterion declared in docs/BENCHMARKS.md")
    p.add_argument("--scan", type=int, default=2000,
                   help="architectures scanned for the trained op types when the checkpoint lacks them")
    p.add_argument("--eval", nargs="*", default=[], metavar="FILE",
                   help="benchmarks/eval.py results files of this checkpoint (test split, built-in models): their "
                   "summaries go in the metadata under `eval`")
    p.add_argument("--out", default=str(ROOT / "ghn" / "pretrained" / "ghn-fmnist.safetensors"))
    add_config_arguments(p)
    a = p.parse_args(argv)
    over = pop_config_overrides(vars(a))
    ghn = GraphHyperNetwork.load(a.ckpt)
    if over:
        ghn = ghn.with_config(**over)
    res = json.loads(Path(a.result).read_text())
    lineage = training_lineage(a.ckpt, ghn.extra, a.cores)
    cpu, wall = sum(r["cpu_hours"] for r in lineage), sum(r["wall_hours"] for r in lineage)
    r3 = lambda v: None if v is None else round(v, 4)  # noqa: E731
    val = {"archs": res["n"], "no_training_top1_pred": r3(res["acc_pred"]),
           "no_training_top1_default": r3(res["acc_default"]), "ft_steps": res["args"]["ft_steps"],
           "ft_n": res["ft_n"], "ft_top1_pred": r3(res["ft_pred"]), "ft_top1_default": r3(res["ft_default"]),
           "ft_no_harm": r3(res["ft_no_harm"]), "rank_ratio": r3(res["rank_ratio"]),
           "top_energy": r3(res["top_energy"]), "role_cos": r3(res["role_cos"])}
    extra = {**ghn.extra, "chosen_by": a.chosen_by, "cpu_hours": round(cpu, 2), "wall_hours": round(wall, 2),
             "total_steps": sum(r["steps"] for r in lineage), "lineage": lineage,
             "machine": machine(), "val": val,
             "command": res.get("command")}
    if a.eval:
        extra["eval"] = dict(eval_figures(f, ghn.extra.get("step")) for f in a.eval)
    if extra.get("trained_ops") is None:
        extra["trained_ops"] = scan_trained_ops(extra, a.scan)
        print(f"trained op types (scan of {a.scan} architectures of the pool): {', '.join(extra['trained_ops'])}")
    extra.pop("archs", None)  # a path on the training machine
    ghn.save(a.out, extra=extra)
    runs = " + ".join(f"{r['steps']} steps of {r['run']}" for r in lineage)
    print(f"shipped {a.ckpt} -> {a.out} ({runs}; "
          f"{extra['cpu_hours']} CPU-hours; val "
          f"{val['no_training_top1_pred']} vs {val['no_training_top1_default']} no training, no-harm "
          f"{val['ft_no_harm']} of {val['ft_n']})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
