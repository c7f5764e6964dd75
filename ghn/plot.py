"""Pictures of training runs and evaluations (matplotlib, an optional extra: ``pip install -e .[plot]``).

    python -m ghn.plot curve runs/campaign/log.jsonl --out docs/img/curve.png        # loss / acc vs step and hours
    python -m ghn.plot curve runs/a/log.jsonl runs/b/log.jsonl --out ab.png          # two runs, paired loss printed
    python -m ghn.plot scatter benchmarks/results/eval_fashion-mnist_test.json --out docs/img/scatter.png
    python -m ghn.plot families benchmarks/results/eval_fashion-mnist_test.json --out docs/img/families.png

``curve`` reads a ``log.jsonl`` of ``train.py`` (CPU-hours from the logged archs/s); ``scatter`` and ``families``
read the per-architecture rows that ``benchmarks/eval.py`` and ``benchmarks/proxy.py`` write (``acc_pred``,
``acc_default``, optional fine-tuned ``*_pred`` / ``*_default`` pairs, the spec's family and norm).
"""
from __future__ import annotations

import argparse
import json
import re
import statistics
import sys
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple, Union


def _plt():
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        raise ImportError("matplotlib is not installed: pip install -e .[plot]") from None
    return plt


NO_HARM_MARGIN = 0.005  # do no harm (the issues' criterion): predicted init at least default init - 0.5 points


def no_harm(pred: float, default: float) -> bool:
    """Whether a predicted-init top-1 does no harm against the default-init one (both as fractions)."""
    return pred >= default - NO_HARM_MARGIN


def read_log(path: str) -> List[Dict[str, Any]]:
    """Records of a ``log.jsonl`` (a torn last line is skipped), in step order, one per step."""
    recs: Dict[int, Dict[str, Any]] = {}
    for line in Path(path).read_text().splitlines():
        try:
            r = json.loads(line)
        except ValueError:
            continue
        recs[int(r["step"])] = r
    if not recs:
        raise ValueError(f"{path}: no log records")
    return [recs[k] for k in sorted(recs)]


def cpu_hours(recs: Sequence[Dict[str, Any]], procs: int = 1) -> List[float]:
    """Cumulative CPU-hours at each record, from the logged ``archs_per_s`` (wall time of each logged interval
    times the cores that ran it: the record's ``cores`` when logged, else ``procs``)."""
    out, t, prev = [], 0.0, 0
    for r in recs:
        rate = r.get("archs_per_s") or 0.0
        if rate > 0:
            t += (r["step"] - prev) * r.get("archs_per_step", 1) * r.get("cores", procs) / rate / 3600
        prev = r["step"]
        out.append(t)
    return out


def _smooth(v: Sequence[float], k: int) -> List[float]:
    return [statistics.mean(v[max(0, i - k + 1):i + 1]) for i in range(len(v))]


def paired_loss(logs: Sequence[str]) -> List[Dict[str, Any]]:
    """Each later log's training loss against the first's at the steps both logged: with the same ``--seed`` the
    runs draw the same architectures and images at every step, so the per-step difference is paired."""
    first = {r["step"]: r["loss"] for r in read_log(logs[0])}
    out = []
    for log in logs[1:]:
        d = [r["loss"] - first[r["step"]] for r in read_log(log) if r["step"] in first]
        if len(d) < 2:
            raise ValueError(f"{log}: fewer than 2 logged steps in common with {logs[0]}")
        out.append({"log": log, "against": logs[0], "steps": len(d), "diff": statistics.mean(d),
                    "se": statistics.stdev(d) / len(d) ** 0.5, "lower": sum(v < 0 for v in d)})
    return out


def plot_curve(logs: Union[str, Sequence[str]], out: str, smooth: int = 20, cores: int = 1) -> str:
    """Training loss and accuracy against step and against CPU-hours (wall time x ``cores`` the run used); several
    logs are drawn together, labelled by their run directory."""
    plt = _plt()
    logs = [logs] if isinstance(logs, str) else list(logs)
    fig, ax = plt.subplots(2, 2, figsize=(10, 6), sharey="row")
    titles = []
    for log in logs:
        recs = read_log(log)
        steps = [r["step"] for r in recs]
        hours = cpu_hours(recs, cores)
        name = Path(log).parent.name
        for col, (x, label) in enumerate(((steps, "step"), (hours, "CPU-hours"))):
            ax[0, col].plot(x, _smooth([r["loss"] for r in recs], smooth), lw=1, label=name)
            ax[1, col].plot(x, _smooth([100 * r["acc"] for r in recs], smooth), lw=1, label=name,
                            color="tab:green" if len(logs) == 1 else None)
            ax[1, col].set_xlabel(label)
        for i in range(1, len(recs)):  # where a resume switched a decoding dial (train.py RESUME_SWITCHABLE)
            was, now = recs[i - 1].get("max_dir_ratio", 0.0), recs[i].get("max_dir_ratio", 0.0)
            if was != now:
                for col, x in enumerate((steps, hours)):
                    for row in range(2):
                        ax[row, col].axvline(x[i - 1], color="grey", ls=":", lw=1)
                    ax[0, col].annotate(f"max_dir_ratio {was:g} -> {now:g}", (x[i - 1], 1), fontsize=7, ha="right",
                                        va="top", rotation=90, color="grey", xycoords=("data", "axes fraction"))
        titles.append(f"{name}: {steps[-1]} steps, {hours[-1]:.2f} CPU-hours")
    ax[0, 0].set_ylabel("training loss")
    ax[1, 0].set_ylabel("training top-1 (%)")
    if len(logs) > 1:
        ax[0, 0].legend(fontsize=8)
    fig.suptitle("; ".join(titles) + f" (moving mean of {smooth})", fontsize=9 if len(logs) > 1 else None)
    return _save(fig, out)


def _rows(paths: Union[str, Sequence[str]]) -> List[Dict[str, Any]]:
    """The per-architecture rows of one or more results files (e.g. two halves of one evaluation run by two
    processes); an architecture in two of them is an error, not a silent duplicate."""
    rows: List[Dict[str, Any]] = []
    seen: Dict[Tuple[Any, Any], str] = {}
    for path in [paths] if isinstance(paths, str) else paths:
        doc = json.loads(Path(path).read_text())
        part = doc["rows"] if isinstance(doc, dict) else doc
        if not part:
            raise ValueError(f"{path}: no per-architecture rows")
        for r in part:
            key = (r.get("split"), r.get("index"))
            if key[1] is not None and key in seen:
                raise ValueError(f"architecture {key[0]}/{key[1]} is in both {seen[key]} and {path}")
            seen[key] = path
        rows += part
    return rows


def _family(r: Dict[str, Any]) -> str:
    spec = r.get("spec") or {}
    fam = r.get("family") or spec.get("family", "?")
    norm = r.get("norm") or spec.get("norm")
    return f"{fam}/{norm}" if norm else str(fam)


def _pairs(rows: Sequence[Dict[str, Any]]) -> List[Tuple[str, str, str]]:
    """(label, predicted key, default key) for no training and each fine-tuning budget present."""
    out = [("no training", "acc_pred", "acc_default")]
    keys = {k[:-len("_pred")] for r in rows for k in r if k.endswith("_pred") and k != "acc_pred"}
    for k in sorted(keys):
        if all(f"{k}_default" in r for r in rows if f"{k}_pred" in r):
            out.append((_budget_label(k), f"{k}_pred", f"{k}_default"))
    return out


def _budget_label(key: str) -> str:
    """``ft1`` -> "after 1 epoch", ``ft100s`` -> "after 100 SGD steps" (eval.py's result keys); others as they are."""
    m = re.fullmatch(r"ft([0-9.]+)(s?)", key)
    if not m:
        return key
    n, steps = m.groups()
    unit = "SGD step" if steps else "epoch"
    return f"after {n} {unit}{'' if n == '1' else 's'}"


def plot_scatter(results: Union[str, Sequence[str]], out: str) -> str:
    """Predicted vs default-init top-1 per architecture: no training, and after each fine-tuning budget."""
    plt = _plt()
    rows = _rows(results)
    pairs = _pairs(rows)
    fig, axes = plt.subplots(1, len(pairs), figsize=(4.5 * len(pairs), 4.2), squeeze=False)
    fams = sorted({_family(r) for r in rows})
    for ax, (label, kp, kd) in zip(axes[0], pairs):
        for k, f in enumerate(fams):  # one colour per family in every panel, whichever families a panel has
            pts = [(100 * r[kd], 100 * r[kp]) for r in rows if _family(r) == f and kp in r and r[kp] is not None]
            if pts:
                ax.scatter(*zip(*pts), s=14, label=f, alpha=0.8, color=f"C{k % 10}")
        ax.plot([0, 100], [0, 100], color="gray", lw=0.8, ls="--")
        wins = sum(no_harm(r[kp], r[kd]) for r in rows if kp in r and r[kp] is not None)
        n = sum(1 for r in rows if kp in r and r[kp] is not None)
        ax.set_title(f"{label}: predicted >= default - 0.5 pt on {wins}/{n}", fontsize=10)
        ax.set_xlabel("default init top-1 (%)")
        ax.set_ylabel("predicted init top-1 (%)")
    axes[0][0].legend(fontsize=7)
    return _save(fig, out)


def plot_families(results: Union[str, Sequence[str]], out: str) -> str:
    """Mean top-1 per family (and norm), predicted vs default, with no training."""
    plt = _plt()
    rows = _rows(results)
    fams = sorted({_family(r) for r in rows})
    mean = lambda f, k: 100 * statistics.mean(r[k] for r in rows if _family(r) == f)  # noqa: E731
    xs = range(len(fams))
    fig, ax = plt.subplots(figsize=(max(5, 1.2 * len(fams)), 4))
    ax.bar([x - 0.2 for x in xs], [mean(f, "acc_pred") for f in fams], 0.4, label="predicted")
    ax.bar([x + 0.2 for x in xs], [mean(f, "acc_default") for f in fams], 0.4, label="default init")
    ax.set_xticks(list(xs), [f"{f}\n(n={sum(_family(r) == f for r in rows)})" for f in fams], fontsize=8)
    ax.set_ylabel("top-1 with no training (%)")
    ax.legend()
    return _save(fig, out)


def _save(fig, out: str) -> str:
    Path(out).parent.mkdir(parents=True, exist_ok=True)
    fig.tight_layout()
    fig.savefig(out, dpi=110)
    import matplotlib.pyplot as plt

    plt.close(fig)
    return out


def main(argv: Optional[Sequence[str]] = None) -> int:
    p = argparse.ArgumentParser(prog="python -m ghn.plot", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("kind", choices=("curve", "scatter", "families"))
    p.add_argument("input", nargs="+", help="log.jsonl files (curve) or results .json files with per-architecture "
                                            "rows (scatter, families); several are plotted together")
    p.add_argument("--out", required=True, help="PNG to write")
    p.add_argument("--smooth", type=int, default=20, help="curve: moving-mean window in logged records")
    p.add_argument("--cores", type=int, default=1,
                   help="curve: CPU cores the run used (processes x threads) where its log does not say: CPU-hours "
                        "= wall hours x cores")
    a = p.parse_args(argv)
    try:
        if a.kind == "curve":
            path = plot_curve(a.input, a.out, a.smooth, a.cores)
            for d in paired_loss(a.input) if len(a.input) > 1 else []:
                print(f"{d['log']}: training loss {d['diff']:+.4f} +- {d['se']:.4f} against {d['against']} over "
                      f"{d['steps']} logged steps (lower on {d['lower']}; paired when both ran with one --seed)")
        else:
            path = (plot_scatter if a.kind == "scatter" else plot_families)(a.input, a.out)
    except (FileNotFoundError, ValueError, KeyError, ImportError) as e:
        print(f"error: {type(e).__name__}: {e}", file=sys.stderr)
        return 2
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
