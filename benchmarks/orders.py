#!/usr/bin/env python
"""Do-no-harm over several fine-tuning data orders: the same architectures evaluated by ``eval.py`` with other seeds.

One 100-step fine-tuning run is one sample (a LayerNorm CNN moves by points with the data order alone), so the
declared reading (docs/BENCHMARKS.md, session 8) is on the mean over orders. Each input is an ``eval.py`` result
(``.json``) or a stopped run's ``.partial.jsonl``; rows are matched by (split, index). For ``--key ft100s`` it
reports, per order and on the mean of the orders, on how many of the architectures every order has the predicted
init holds (``ghn.plot.no_harm``: predicted >= default - 0.5 points), the misses, and the mean gap per family.

    python benchmarks/orders.py benchmarks/results/eval_test48_22000_ft100.json \\
        benchmarks/results/eval_test48_22000_ft100_seed1.json --out benchmarks/results/orders_test48_22000.json
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Dict, List, Tuple

from _results import write_results  # noqa: E402  (benchmarks/ is on sys.path when run as a script)

from ghn.plot import no_harm


def read_rows(path: str) -> Dict[Tuple[str, int], dict]:
    """``{(split, index): row}`` of an eval.py result or of its ``.partial.jsonl`` (the settings line skipped)."""
    p = Path(path)
    if not p.exists():
        raise SystemExit(f"{path}: no such file")
    if p.name.endswith(".jsonl"):
        rows = []
        for line in p.read_text().splitlines():
            try:
                d = json.loads(line)
            except json.JSONDecodeError:
                continue  # a row torn by a kill
            if "index" in d:
                rows.append(d)
    else:
        rows = json.loads(p.read_text()).get("rows")
        if rows is None:
            raise SystemExit(f"{path}: no per-architecture 'rows' (not an eval.py result)")
    return {(r.get("split", ""), int(r["index"])): r for r in rows}


def family(row: dict) -> str:
    spec = row.get("spec") or {}
    return f"{spec.get('family', '?')}-{spec.get('norm', '?')}"


def compare(orders: List[Dict[Tuple[str, int], dict]], key: str) -> dict:
    pk, dk = f"{key}_pred", f"{key}_default"
    common = [k for k in orders[0] if all(k in o and pk in o[k] and dk in o[k] for o in orders)]
    if not common:
        raise SystemExit(f"no architecture has {pk} and {dk} in every file")
    rows, fams = [], {}
    for k in common:
        gaps = [100 * (o[k][pk] - o[k][dk]) for o in orders]
        pred = sum(o[k][pk] for o in orders) / len(orders)
        default = sum(o[k][dk] for o in orders) / len(orders)
        r = {"split": k[0], "index": k[1], "family": family(orders[0][k]), "gaps": [round(g, 2) for g in gaps],
             "mean_gap": round(100 * (pred - default), 2), "holds_each": [no_harm(o[k][pk], o[k][dk]) for o in orders],
             "holds_mean": no_harm(pred, default)}
        rows.append(r)
        fams.setdefault(r["family"], []).append(r["mean_gap"])
    n = len(rows)
    return {"n": n, "holds_per_order": [sum(r["holds_each"][i] for r in rows) for i in range(len(orders))],
            "holds_on_mean": sum(r["holds_mean"] for r in rows),
            "misses_on_mean": [{k: r[k] for k in ("index", "family", "gaps", "mean_gap")}
                               for r in rows if not r["holds_mean"]],
            "family_mean_gap": {f: round(sum(g) / len(g), 2) for f, g in sorted(fams.items())},
            "family_n": {f: len(g) for f, g in sorted(fams.items())}, "rows": rows}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("files", nargs="+", help="eval.py results (.json or .partial.jsonl), one per data order")
    p.add_argument("--key", default="ft100s", help="the fine-tuning column prefix (ft100s: 100 SGD steps)")
    p.add_argument("--out", default=None)
    a = p.parse_args(argv)
    if len(a.files) < 2:
        raise SystemExit("give at least two files (one per data order)")
    res = compare([read_rows(f) for f in a.files], a.key)
    n = res["n"]
    print(f"{n} architectures in every file; holds per order {res['holds_per_order']}; on the mean of the orders "
          f"{res['holds_on_mean']} ({100 * res['holds_on_mean'] / n:.0f}%)")
    for m in res["misses_on_mean"]:
        print(f"  miss: index {m['index']:4d} {m['family']:14s} gaps {m['gaps']} mean {m['mean_gap']:+.1f}")
    for f, g in res["family_mean_gap"].items():
        print(f"  {f:14s} n {res['family_n'][f]:3d}  mean gap {g:+.2f} points")
    if a.out:
        write_results(a.out, {"args": vars(a), **res})
    return 0


if __name__ == "__main__":
    sys.exit(main())
