"""``train_throughput.py --compare REV``: the same training config on a git revision and on the working tree, in
one run, interleaved (A B A B ...), so machine load hits both alike; prints the archs/s ratio and how far the loss
trajectories are apart."""
from __future__ import annotations

import json
import os
import socket
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
RUNNER = Path(__file__).resolve().parent / "_compare_runner.py"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def run_side(tree: Path, layout: str, cfg: dict) -> dict:
    procs, threads = (int(v) for v in layout.split("x"))
    env = {**os.environ, "PYTHONPATH": str(tree), "OMP_NUM_THREADS": str(threads), "CI": "1"}
    cmd = [sys.executable, str(RUNNER), json.dumps(cfg)]
    if procs > 1:
        cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", str(procs), "--master_port",
               str(_free_port()), *cmd[1:]]
    r = subprocess.run(cmd, cwd=tree, env=env, capture_output=True, text=True)
    line = next((ln for ln in r.stdout.splitlines() if ln.startswith("RESULT ")), None)
    if r.returncode != 0 or line is None:
        raise RuntimeError(f"{tree} ({layout}) failed:\n{r.stderr[-3000:]}")
    return json.loads(line[len("RESULT "):])


def compare(rev: str, a) -> dict:
    """Interleaved runs of ``rev`` (layout ``a.base_layout``) and the working tree (``a.layout``)."""
    base_ghn = json.loads(a.base_ghn)
    new_ghn = json.loads(a.new_ghn) if a.new_ghn else base_ghn
    common = {"archs": str(Path(a.archs).resolve()), "steps": a.steps, "warmup": a.warmup,
              "meta_batch": a.meta_batch[0], "batch_size": a.batch_size, "max_arch_params": a.max_arch_params}
    with tempfile.TemporaryDirectory() as tmp:
        wt = Path(tmp) / "rev"
        subprocess.run(["git", "-C", str(ROOT), "worktree", "add", "--detach", str(wt), rev], check=True,
                       capture_output=True)
        try:
            sides = {"base": (wt, a.base_layout, {**common, "ghn": base_ghn}),
                     "new": (ROOT, a.layout, {**common, "ghn": new_ghn, "extra": json.loads(a.new_extra)})}
            res = {k: [] for k in sides}
            for r in range(a.rounds):
                for k, (tree, layout, cfg) in sides.items():
                    out = run_side(tree, layout, cfg)
                    res[k].append(out)
                    print(json.dumps({"round": r, "side": k, "layout": layout,
                                      "archs_per_s": round(out["archs_per_s"], 3)}), flush=True)
        finally:
            subprocess.run(["git", "-C", str(ROOT), "worktree", "remove", "--force", str(wt)], capture_output=True)
    speed = {k: statistics.mean(o["archs_per_s"] for o in v) for k, v in res.items()}
    la, lb = res["base"][0]["losses"], res["new"][0]["losses"]
    n = min(len(la), len(lb))
    diff = max(abs(x - y) for x, y in zip(la[:n], lb[:n])) if n else None
    return {"rev": rev, "base_layout": a.base_layout, "new_layout": a.layout, "archs_per_s": speed,
            "ratio": speed["new"] / speed["base"], "max_loss_diff": diff, "losses": {"base": la, "new": lb},
            "runs": res}
