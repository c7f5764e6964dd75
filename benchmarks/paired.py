#!/usr/bin/env python
"""A candidate against the shipped hypernetwork, paired per architecture, under the declared shipping rule.

Both files are results of ``proxy.py`` (or ``eval.py``) on the same architectures, or one ``ft_probe.py`` file
twice with ``--variants CANDIDATE SHIPPED`` (its ``acc0`` / ``ft`` rows of those variants, default init from its
``default`` rows). For each of no-training top-1
(``acc_pred``) and top-1 after fine-tuning (``ft_pred``, or an ``eval.py`` row's one step budget such as
``ft100s_pred``, where both have it) it gives the paired mean difference
candidate - shipped with its standard error, and on how many architectures the candidate is better / worse.
Then the rule declared in docs/BENCHMARKS.md (session 8): the candidate ships if its do-no-harm count (``ft_pred
>= ft_default - 0.5`` points) is not lower than the shipped one's AND its no-training mean is not lower by more
than one paired standard error. The architectures whose do-no-harm verdict differs are named with both gaps.

    python benchmarks/paired.py benchmarks/results/proxy/campaign-8719_dsun_n65_s2.json \\
        benchmarks/results/proxy/campaign-5587_dsun_n65_s2.json --out benchmarks/results/paired_8719.json
    python benchmarks/paired.py probe.json probe.json --variants post_norm_branch_scale=0.25 pred
"""
from __future__ import annotations

import argparse
import json
import math
import re
import sys
from pathlib import Path

from _results import write_results  # noqa: E402  (benchmarks/ is on sys.path when run as a script)

from ghn.plot import no_harm


def _ft_as_proxy(row: dict) -> dict:
    """An eval.py row fine-tuned at one step budget (``ft100s_pred`` / ``ft100s_default``) with proxy.py's
    ``ft_pred`` / ``ft_default`` keys, so the same pairing and do-no-harm count apply to it."""
    if "ft_pred" in row:
        return row
    budgets = [k[:-5] for k in row if re.fullmatch(r"ft\d+s_pred", k) and f"{k[:-5]}_default" in row]
    if len(budgets) != 1:
        return row
    return {**row, "ft_pred": row[f"{budgets[0]}_pred"], "ft_default": row[f"{budgets[0]}_default"]}


def _rows(path: str, variant: str | None = None) -> dict:
    try:
        text = Path(path).read_text()
        if path.endswith(".partial.jsonl"):  # a stopped run's rows so far (its first line holds the settings)
            doc = {"rows": [r for r in map(json.loads, text.splitlines()[1:]) if "index" in r]}
        else:
            doc = json.loads(text)
    except (OSError, ValueError) as e:  # missing, unreadable or not JSON
        raise SystemExit(f"{path}: cannot read a results file ({type(e).__name__}: {e})") from None
    if "rows" not in doc:
        raise SystemExit(f"{path}: no per-architecture 'rows' (not a proxy.py, eval.py or ft_probe.py result)")
    if variant is None:
        if any("variant" in r for r in doc["rows"]):
            raise SystemExit(f"{path}: an ft_probe.py result; say which variants to compare (--variants CAND SHIPPED)")
        return {(r.get("split", ""), r["index"]): _ft_as_proxy(r) for r in doc["rows"]}
    default = {r["index"]: r.get("ft") for r in doc["rows"] if r.get("variant") == "default"}
    rows = {("", r["index"]): {"acc_pred": r["acc0"], "ft_pred": r.get("ft"), "ft_default": default.get(r["index"])}
            for r in doc["rows"] if r.get("variant") == variant}
    if not rows:
        raise SystemExit(f"{path}: no rows of variant {variant!r}")
    return rows


def paired(cand: dict, ship: dict, key: str) -> dict | None:
    """Paired difference of ``key`` over the architectures both have it for."""
    keys = sorted(k for k in cand if k in ship and cand[k].get(key) is not None and ship[k].get(key) is not None)
    if not keys:
        return None
    d = [cand[k][key] - ship[k][key] for k in keys]
    n, mean = len(d), sum(d) / len(d)
    se = math.sqrt(sum((x - mean) ** 2 for x in d) / (n - 1) / n) if n > 1 else float("nan")
    return {"n": n, "candidate": sum(cand[k][key] for k in keys) / n, "shipped": sum(ship[k][key] for k in keys) / n,
            "diff": mean, "se": se, "better": sum(x > 0 for x in d), "worse": sum(x < 0 for x in d)}


def no_harm_count(rows: dict, keys=None) -> tuple[int, int]:
    """``(architectures within half a point of default init or ahead, architectures fine-tuned)``, over ``keys``
    (the architectures both files have) when given."""
    ft = [r for k, r in rows.items() if (keys is None or k in keys)
          and r.get("ft_pred") is not None and r.get("ft_default") is not None]
    return sum(no_harm(r["ft_pred"], r["ft_default"]) for r in ft), len(ft)


def no_harm_counts(cand: dict, ship: dict) -> tuple:
    """:func:`no_harm_count` of both sides over the architectures both have (a stopped run's rows so far are
    counted against the same architectures of the other file)."""
    both = set(cand) & set(ship)
    return no_harm_count(cand, both), no_harm_count(ship, both)


def no_harm_flips(cand: dict, ship: dict) -> dict:
    """The architectures whose do-no-harm verdict differs: ``{"lost": [...], "gained": [...]}``, each
    ``{"key", "candidate_gap", "shipped_gap"}`` (fine-tuned minus default init, points)."""
    out: dict = {"lost": [], "gained": []}
    for k in sorted(set(cand) & set(ship), key=str):
        c, s = cand[k], ship[k]
        if any(r.get(f) is None for r in (c, s) for f in ("ft_pred", "ft_default")):
            continue
        hc, hs = no_harm(c["ft_pred"], c["ft_default"]), no_harm(s["ft_pred"], s["ft_default"])
        if hc != hs:
            out["gained" if hc else "lost"].append(
                {"key": "/".join(str(x) for x in k if x != ""), "candidate_gap": 100 * (c["ft_pred"] - c["ft_default"]),
                 "shipped_gap": 100 * (s["ft_pred"] - s["ft_default"])})
    return out


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("candidate")
    p.add_argument("shipped")
    p.add_argument("--out", default=None, help="write the comparison as JSON here")
    p.add_argument("--variants", nargs=2, metavar=("CANDIDATE", "SHIPPED"), default=None,
                   help="ft_probe.py results: the variant of each file to compare (e.g. "
                        "post_norm_branch_scale=0.25 pred)")
    a = p.parse_args(argv)
    cv, sv = a.variants or (None, None)
    cand, ship = _rows(a.candidate, cv), _rows(a.shipped, sv)
    out = {"candidate": a.candidate, "shipped": a.shipped, "variants": a.variants}
    for key in ("acc_pred", "ft_pred"):
        r = paired(cand, ship, key)
        out[key] = r
        if r:
            print(f"{key:9s} n={r['n']:3d}  candidate {100 * r['candidate']:.1f}%  shipped {100 * r['shipped']:.1f}%  "
                  f"paired {100 * r['diff']:+.1f} +- {100 * r['se']:.1f}  better {r['better']} worse {r['worse']}")
    (hc, nc), (hs, ns) = no_harm_counts(cand, ship)
    out["no_harm"] = {"candidate": [hc, nc], "shipped": [hs, ns]}
    out["no_harm_flips"] = flips = no_harm_flips(cand, ship)
    for what, rows in flips.items():  # where the counts differ: a half-point line crossed by a little or a lot
        for r in rows:
            print(f"no-harm {what}: {r['key']} (candidate {r['candidate_gap']:+.1f}, shipped {r['shipped_gap']:+.1f} "
                  "points against default init)")
    acc = out["acc_pred"]
    if acc is None:
        raise SystemExit("error: no architecture has a no-training result in both files")
    if nc == 0 or ns == 0:  # a no-training comparison of two designs: the paired numbers, no verdict
        out["ships"] = None
        print("no fine-tuning rows on one side: the shipping rule is not applied")
    else:
        out["ships"] = bool(hc / nc >= hs / ns and acc["diff"] >= -acc["se"])
        print(f"do-no-harm candidate {hc}/{nc}, shipped {hs}/{ns}; "
              f"{'SHIPS' if out['ships'] else 'does not ship'} under the declared rule")
    if a.out:
        write_results(a.out, out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
