#!/usr/bin/env python
"""Speed of ``benchmarks/eval.py`` per architecture: its old path against its current one, in one run.

Three passes over the same architectures and settings, one after the other in this process:

- ``baseline``: NCHW weights, every default-init result recomputed (what eval.py did before; ``--no-channels-last
  --default-cache none``);
- ``cold``: channels_last weights, an empty default-init cache (a first evaluation);
- ``warm``: the same with the cache the cold pass filled (every later evaluation of the same architectures, e.g.
  the next candidate checkpoint).

Prints and writes seconds per architecture and the ratios baseline / cold and baseline / warm, plus the largest
accuracy difference between the passes (channels_last changes float rounding only).

    python benchmarks/eval_speed.py --indices 0 1 2 --steps 100
"""
from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import eval as eval_script  # noqa: E402  (benchmarks/eval.py)
from _results import write_results  # noqa: E402  (benchmarks/ is on sys.path when run as a script)

ROOT = Path(__file__).resolve().parent.parent


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--split", default="val")
    p.add_argument("--indices", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--steps", type=int, default=100, help="fine-tuning budget (SGD steps) of every pass")
    p.add_argument("--test-n", type=int, default=1000)
    p.add_argument("--calib-batches", type=int, default=5)
    p.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "eval_speed.json"))
    a = p.parse_args(argv)
    tmp = Path(tempfile.mkdtemp())
    common = ["--split", a.split, "--indices", *map(str, a.indices), "--epochs", "--steps", str(a.steps),
              "--test-n", str(a.test_n), "--calib-batches", str(a.calib_batches)]
    passes = {"baseline": ["--no-channels-last", "--default-cache", "none"],
              "cold": ["--default-cache", str(tmp / "cache.json")],
              "warm": ["--default-cache", str(tmp / "cache.json")]}
    secs, accs = {}, {}
    for name, extra in passes.items():
        out = tmp / f"{name}.json"
        t = time.perf_counter()
        eval_script.main([*common, *extra, "--out", str(out)])
        secs[name] = (time.perf_counter() - t) / len(a.indices)
        rows = json.loads(out.read_text())["rows"]
        accs[name] = [r[k] for r in rows for k in sorted(r) if k.startswith(("acc_", "ft"))
                      and isinstance(r[k], float)]
    diff = max(abs(x - y) for n in ("cold", "warm") for x, y in zip(accs["baseline"], accs[n]))
    doc = {"seconds_per_arch": secs, "speedup_cold": secs["baseline"] / secs["cold"],
           "speedup_warm": secs["baseline"] / secs["warm"], "max_accuracy_diff": diff, "args": vars(a)}
    write_results(a.out, doc)
    print(f"s/arch baseline {secs['baseline']:.1f}, cold {secs['cold']:.1f} ({doc['speedup_cold']:.2f}x), "
          f"warm {secs['warm']:.1f} ({doc['speedup_warm']:.2f}x); largest accuracy difference {diff:.4f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
