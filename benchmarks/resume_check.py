#!/usr/bin/env python
"""Is ``--resume`` exact for a real run? Resume one of its checkpoints elsewhere and compare the logged steps.

Takes a checkpoint of ``--run`` (default: its oldest complete one, so the run's own log goes on past it), resumes it
into a temporary directory with the run's stored settings for ``--minutes`` of wall clock, and compares every
logged step the two share: loss and accuracy must be bit-identical. On a fresh clone this shows that the committed
state of the campaign (``runs/campaign/``) continues the run exactly.

    python benchmarks/resume_check.py --run runs/campaign --minutes 2
"""
from __future__ import annotations

import argparse
import os
import sys
import tempfile
from pathlib import Path

import torch
from _results import write_results  # noqa: E402  (benchmarks/ is on sys.path when run as a script)

ROOT = Path(__file__).resolve().parent.parent


def main(argv=None) -> int:
    from ghn import rundir
    from ghn.plot import read_log
    from ghn.training import resume_config, train

    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--run", default=str(ROOT / "runs" / "campaign"))
    p.add_argument("--ckpt", default=None, help="checkpoint to resume; default: the run's oldest complete one")
    p.add_argument("--minutes", type=float, default=2.0, help="wall-clock budget of the resumed run")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "resume_check.json"))
    a = p.parse_args(argv)
    torch.set_num_threads(a.threads)
    run = Path(a.run)
    cks = sorted(c for c in run.glob("ckpt-*") if rundir.is_checkpoint(c))
    ck = Path(a.ckpt) if a.ckpt else (cks[0] if cks else None)
    if ck is None or not rundir.is_checkpoint(ck):
        sys.exit(f"error: no complete checkpoint {'in ' + str(run) if ck is None else ck}")
    tmp = Path(tempfile.mkdtemp()) / "resumed"
    cfg = resume_config(str(ck), out_dir=str(tmp), max_minutes=a.minutes, progress=False,
                        ckpt_every=10**9, keep_checkpoints=0)
    os.chdir(ROOT)  # the stored --archs path is relative to the repository
    train(cfg)
    orig, new = ({r["step"]: r for r in read_log(str(p))} for p in (run / "log.jsonl", tmp / "log.jsonl"))
    common = sorted(set(orig) & set(new))
    same = [orig[s]["loss"] == new[s]["loss"] and orig[s]["acc"] == new[s]["acc"] for s in common]
    doc = {"checkpoint": str(ck), "resumed_to": max(new) if new else None, "steps_compared": common,
           "exact": bool(common) and all(same),
           "max_loss_diff": max((abs(orig[s]["loss"] - new[s]["loss"]) for s in common), default=None),
           "args": vars(a)}
    write_results(a.out, doc)
    print(f"resumed {ck.name} to step {doc['resumed_to']}; {len(common)} logged steps compared "
          f"({common[:1]}..{common[-1:]}): {'bit-identical' if doc['exact'] else 'DIFFERENT'} "
          f"(max loss diff {doc['max_loss_diff']})")
    return 0 if doc["exact"] else 1


if __name__ == "__main__":
    sys.exit(main())
