"""A candidate hypernetwork against the shipped one under the campaign's declared rule, in one command.

The rule of phases 4-7 (docs/BENCHMARKS.md, "Phase 4"): the candidate replaces the shipped file when
  1. its do-no-harm count on the first 16 val fine-tuning architectures up to 500k parameters is not lower;
  2. its do-no-harm count on the 6 post-norm val ViTs is not lower;
  3. its no-training top-1 on the 48 val architectures up to 500k is not lower by more than one paired SE;
  4. its no-training top-1 on the 32 val architectures above 500k is higher, paired (mean difference > 0).
From phase 7r64b on (``--rule phase7r64b``; docs/BENCHMARKS.md, "Phase 7r64b, a rule for criterion 1"), criterion
1 holds when the count is at most one lower and the paired mean top-1 after fine-tuning is not lower by more than
one paired SE.

The measurements, cheapest first (2, 4, then 1 and 3 from one proxy run), each skipped when its results file
exists and resumed from its own ``.partial.jsonl`` when stopped; it stops at the first criterion that fails unless
``--all``. The verdict, with every number, goes to ``results/decision_NAME.json``. Decoding settings the candidate
is to be shipped with go in ``--decode`` (ft_probe.py's syntax, ``key=value+key=value``).

    OMP_NUM_THREADS=1 python benchmarks/decide.py --ckpt runs/phase7/ghn.safetensors --name phase7
    OMP_NUM_THREADS=1 python benchmarks/decide.py --ckpt runs/campaign/phase6/ghn.safetensors --name phase6b \\
        --decode max_dir_ratio_attn=0.5
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _results import write_results  # noqa: E402
from ft_probe import parse_overrides  # noqa: E402
from paired import _rows, no_harm_counts, no_harm_flips, paired  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "benchmarks" / "results"
RULES = ("phase4", "phase7r64b")
# the shipped file, as decided: its --name and --decode (its results files are named as plan() names a candidate's)
SHIPPED, SHIPPED_DECODE = "phase7r64b", "max_dir_ratio_attn=0.25"
POSTNORM_VITS = [148, 159, 84, 8, 121, 103]
VAL32BIG = [0, 2, 4, 5, 6, 7, 8, 9, 14, 16, 17, 18, 19, 21, 22, 24, 25, 26, 27, 28, 29, 30, 31, 35, 40, 41, 42, 43,
            44, 47, 48, 49]


def decode_flags(decode: str | None) -> list:
    """``max_dir_ratio_attn=0.5`` -> ``["--max-dir-ratio-attn", "0.5"]`` for eval.py and proxy.py."""
    out: list = []
    for k, v in (parse_overrides(decode) if decode else {}).items():
        flag = "--" + k.replace("_", "-")
        out += [flag if v else "--no-" + flag[2:]] if isinstance(v, bool) else [flag, str(v)]
    return out


def results_files(name: str) -> tuple:
    """``(probe, val32big, proxy)`` results files of the decision named ``name``."""
    return (RESULTS / f"ft_probe_{name}_postnorm.json", RESULTS / f"eval_val32big_{name}_notrain.json",
            RESULTS / "proxy" / f"{name}.json")


def plan(a) -> list:
    """``[(criteria, results file, command)]`` in the order they run."""
    py, flags, ckpt = sys.executable, decode_flags(a.decode), ["--ckpt", a.ckpt]
    variant = a.decode or "pred"
    probe, big, proxy = results_files(a.name)
    bench = str(ROOT / "benchmarks")
    return [
        ((2,), probe, [py, f"{bench}/ft_probe.py", *ckpt, "--indices", *map(str, POSTNORM_VITS), "--variants",
                       "default", variant, "--seeds", "2", "--test-n", "2000", "--threads", "1", "--out", str(probe)]),
        ((4,), big, [py, f"{bench}/eval.py", "--split", "val", "--indices", *map(str, VAL32BIG), "--epochs",
                     "--test-n", "1000", "--calib-batches", "5", "--procs", "1", *ckpt, *flags, "--out", str(big)]),
        ((1, 3), proxy, [py, f"{bench}/proxy.py", "--eval-only", *ckpt, *flags, "--n", "48", "--ft-n", "16",
                         "--ft-seeds", "2", "--threads", "1", "--procs", str(a.procs), "--name", a.name]),
    ]


def run(cmd: list, env: dict) -> None:
    """One measurement (a benchmarks/ script); a failure stops the decision with a one-line error."""
    try:
        subprocess.run(cmd, check=True, env=env, cwd=ROOT)
    except subprocess.CalledProcessError as e:
        raise SystemExit(f"error: {Path(cmd[1]).name} failed (exit {e.returncode}); rerun to resume it") from None


def _argv(command: str) -> list:
    """A recorded or planned command without the interpreter, the script's folder and ``--procs N`` (which do not
    change the numbers)."""
    parts = command.split()[1:]
    if parts:
        parts[0] = Path(parts[0]).name
    while "--procs" in parts:
        i = parts.index("--procs")
        del parts[i:i + 2]
    return parts


def check_made_by(path: Path, cmd: list) -> None:
    """An existing results file is reused only when the same command made it: another candidate or decoding
    under the same ``--name`` is a one-line error, not a silent reuse of another file's numbers."""
    made = json.loads(path.read_text()).get("command", "")
    if _argv(made) != _argv(" ".join(cmd)):
        raise SystemExit(f"error: {path} was made by another command ({made}); pick another --name or remove it")


def judge(criterion: int, cand: dict, ship: dict, rule: str = "phase4") -> dict:
    """One criterion of the rule on paired rows (``paired._rows``): its numbers and whether it holds. Under
    ``rule="phase7r64b"`` criterion 1 allows one architecture fewer within the do-no-harm line, provided the paired
    mean of top-1 after fine-tuning is not lower by more than one paired standard error."""
    acc = paired(cand, ship, "acc_pred")
    if criterion in (1, 2):
        (hc, nc), (hs, ns) = no_harm_counts(cand, ship)
        if nc == 0 or ns == 0:
            raise SystemExit(f"criterion {criterion}: no fine-tuning rows to count do-no-harm on")
        ft = paired(cand, ship, "ft_pred")
        if criterion == 1 and rule == "phase7r64b":  # counts over the same architectures: nc == ns
            holds = hc >= hs - 1 and ft is not None and ft["diff"] >= -ft["se"]
        else:
            holds = hc / nc >= hs / ns
        return {"no_harm": [hc, nc], "shipped_no_harm": [hs, ns], "ft_pred": ft,
                "flips": no_harm_flips(cand, ship), "holds": bool(holds)}
    if acc is None:
        raise SystemExit(f"criterion {criterion}: no architecture has a no-training result in both files")
    holds = acc["diff"] >= -acc["se"] if criterion == 3 else acc["diff"] > 0
    return {"acc_pred": acc, "holds": bool(holds)}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--ckpt", required=True, help="the candidate hypernetwork")
    p.add_argument("--name", required=True, help="names its results files")
    p.add_argument("--decode", default=None, help="decoding settings of the candidate, e.g. max_dir_ratio_attn=0.5")
    probe, big, proxy = results_files(SHIPPED)  # the shipped file's own decision
    p.add_argument("--shipped-proxy", default=str(proxy))
    p.add_argument("--shipped-probe", default=str(probe))
    p.add_argument("--shipped-probe-variant", default=SHIPPED_DECODE or "pred")
    p.add_argument("--shipped-val32big", default=str(big))
    p.add_argument("--procs", type=int, default=2, help="proxy.py worker processes (1 thread each)")
    p.add_argument("--all", action="store_true", help="run every criterion even after one fails")
    p.add_argument("--rule", choices=RULES, default="phase4",
                   help="phase4: the rule of phases 4-7r64; phase7r64b: criterion 1 allows one no-harm flip when "
                        "the paired fine-tuning mean is not lower by more than one SE (declared in session 33)")
    a = p.parse_args(argv)
    if not Path(a.ckpt).is_file():
        raise SystemExit(f"error: --ckpt {a.ckpt}: no such file")
    if a.decode:
        try:
            parse_overrides(a.decode)
        except (KeyError, ValueError) as e:
            raise SystemExit(f"error: --decode {a.decode!r}: not key=value[+key=value] of hypernetwork config fields "
                             f"({type(e).__name__}: {e})") from None
    shipped = {2: (a.shipped_probe, a.shipped_probe_variant), 4: (a.shipped_val32big, None),
               1: (a.shipped_proxy, None), 3: (a.shipped_proxy, None)}
    for path, _ in shipped.values():
        _rows(path, _)  # a missing shipped file fails now, not after an hour of evaluation
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    out: dict = {"candidate": a.ckpt, "decode": a.decode, "rule": a.rule, "criteria": {}}
    for criteria, path, cmd in plan(a):
        if path.exists():
            check_made_by(path, cmd)
        else:
            print("running: " + " ".join(cmd[1:]), flush=True)
            run(cmd, env)
        cand = _rows(str(path), (a.decode or "pred") if 2 in criteria else None)
        for c in criteria:
            ship_path, variant = shipped[c]
            r = judge(c, cand, _rows(ship_path, variant), a.rule)
            out["criteria"][str(c)] = {"results": str(path), "shipped": ship_path, **r}
            print(f"criterion {c}: {'holds' if r['holds'] else 'FAILS'}  " + (
                f"no-harm {r['no_harm'][0]}/{r['no_harm'][1]} vs {r['shipped_no_harm'][0]}/{r['shipped_no_harm'][1]}"
                if "no_harm" in r else
                f"no training {100 * r['acc_pred']['candidate']:.1f}% vs {100 * r['acc_pred']['shipped']:.1f}%, "
                f"paired {100 * r['acc_pred']['diff']:+.1f} +- {100 * r['acc_pred']['se']:.1f}"), flush=True)
        if not a.all and not all(out["criteria"][str(c)]["holds"] for c in criteria):
            break
    done = [v["holds"] for v in out["criteria"].values()]
    out["ships"] = len(done) == 4 and all(done)
    print(f"{a.name}: {'SHIPS' if out['ships'] else 'does not ship'} under the declared rule "
          f"({sum(done)} of {len(done)} criteria read hold)")
    write_results(str(RESULTS / f"decision_{a.name}.json"), out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
