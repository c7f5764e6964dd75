"""Benchmark: architecture generation throughput and storage size.

Generates ``--n`` train specs (default 20k) with ``--workers`` processes (default 2), then extrapolates to 1M specs.
Also times the pieces of one draw (sample + validate + analytic parameter count) and random access through
``ArchDataset``. Prints a summary and writes ``benchmarks/results/generate.json``.

    python benchmarks/generate.py [--n 20000] [--workers 2]
"""
from __future__ import annotations

import argparse
import os
import platform
import random
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Dict, Optional, Sequence

from _results import write_results  # noqa: E402  (benchmarks/ is on sys.path when run as a script)


def run(n: int = 20_000, workers: int = 2, seed: int = 0) -> Dict[str, Any]:
    """Generate ``n`` train specs into a temporary file and measure speed and size."""
    from ghn import data as D
    from ghn import space as S

    exclude = set()
    for f in D.default_excludes("train"):  # the shipped eval splits, as the real train run does
        if f.is_file():
            exclude |= D.load_hashes(f)
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "train.jsonl.gz"
        t0 = time.perf_counter()
        _, man = D.generate("train", n, seed, out, workers=workers, exclude=sorted(exclude), keep_lines=False)
        gen_s = time.perf_counter() - t0

        t0 = time.perf_counter()
        ds = D.ArchDataset(out)
        load_s = time.perf_counter() - t0
        rng = random.Random(0)
        idx = [rng.randrange(len(ds)) for _ in range(2000)]
        t0 = time.perf_counter()
        for i in idx:
            ds[i]
        access_us = (time.perf_counter() - t0) / len(idx) * 1e6

    rng = random.Random(1)
    t0 = time.perf_counter()
    k = 5000
    for _ in range(k):
        S.rejection_reason(S.draw_spec(rng, "train"), S.SPACES["train"].max_params)
    draw_us = (time.perf_counter() - t0) / k * 1e6

    per_s = n / gen_s
    bytes_per = man["bytes"] / n
    return {
        "n": n, "workers": workers, "cpus": os.cpu_count(), "python": platform.python_version(),
        "seconds": round(gen_s, 2), "archs_per_s": round(per_s, 1),
        "bytes_per_arch": round(bytes_per, 2), "file_bytes": man["bytes"],
        "extrapolated_1M_seconds": round(1e6 / per_s, 1), "extrapolated_1M_MB": round(bytes_per * 1e6 / 1e6, 1),
        "draws_per_accepted": round(man["draws"] / n, 3), "rejected": man["rejected"], "families": man["families"],
        "draw_validate_us_single_core": round(draw_us, 1),
        "dataset_index_seconds": round(load_s, 3), "dataset_random_access_us": round(access_us, 1),
    }


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Run the benchmark and write ``benchmarks/results/generate.json``."""
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--n", type=int, default=20_000)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--out", default=str(Path(__file__).resolve().parent / "results" / "generate.json"))
    args = ap.parse_args(argv)
    res = run(args.n, args.workers)
    print(f"{res['n']} specs with {res['workers']} workers in {res['seconds']} s: {res['archs_per_s']:.0f} archs/s, "
          f"{res['bytes_per_arch']} B/arch")
    print(f"extrapolated to 1M: {res['extrapolated_1M_seconds'] / 60:.1f} min, {res['extrapolated_1M_MB']} MB")
    print(f"one draw+validate: {res['draw_validate_us_single_core']} us; {res['draws_per_accepted']} draws/accepted; "
          f"ArchDataset random access {res['dataset_random_access_us']} us")
    out = Path(args.out)
    write_results(out, res)
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
