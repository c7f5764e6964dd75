"""How long ``ArchGraph.from_module`` and ``to_pyg`` take on real-size models (CPU, single process).

For each case: median wall time of ``ArchGraph.from_module`` over ``--repeat`` runs after one warm-up, the time
of a plain ``model(x)`` forward under ``torch.no_grad()`` (what the trace cannot avoid: the builder runs the model
once), the graph size, and the median time of ``to_pyg(max_virtual_dist=5)``. ``meta`` rows build the model
under ``torch.device("meta")``: no memory and (almost) no compute, so they show the tracing cost itself.

    python benchmarks/graph_build.py [--repeat 5] [--quick] [--profile] [--threads N]

The machine's load average is recorded: on a shared 2-core machine, other processes make torch's intra-op
threads wait on each other and CPU timings can grow 10x; ``--threads 1`` is more robust there.

Writes benchmarks/results/graph_build.json. Target: ResNet-50 graph < 50 ms on CPU.
"""
from __future__ import annotations

import argparse
import cProfile
import io
import os
import pstats
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from _results import write_results  # noqa: E402  (benchmarks/ is on sys.path when run as a script)

from ghn.graph import ArchGraph, default_example_input  # noqa: E402
from ghn.predefined import build_predefined  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results" / "graph_build.json"
TARGET_MS = 50.0

# name, registry name, build kwargs, device, example input shape (None: default_example_input), token input
CASES = [
    ("resnet50 @224", "resnet50", dict(image_size=224), "cpu", (1, 3, 224, 224)),
    ("resnet50 @224 default input", "resnet50", dict(image_size=224), "cpu", None),
    ("resnet50 @224", "resnet50", dict(image_size=224), "meta", (1, 3, 224, 224)),
    ("resnet50 @32 (cifar stem)", "resnet50", dict(image_size=32), "cpu", (1, 3, 32, 32)),
    ("resnet50 @224 model, 32px input", "resnet50", dict(image_size=224), "cpu", (1, 3, 32, 32)),
    ("vit_base p16 @224", "vit_base", dict(image_size=224, patch_size=16), "cpu", (1, 3, 224, 224)),
    ("vit_base p16 @224", "vit_base", dict(image_size=224, patch_size=16), "meta", (1, 3, 224, 224)),
    ("gpt2_medium (8 tokens)", "gpt2_medium", {}, "meta", "tokens"),
]


def make(case):
    _, name, kw, device, shape = case
    with torch.device(device):
        model = build_predefined(name, **kw)
    if shape is None:
        x = None
    elif shape == "tokens":
        x = torch.randint(0, model.vocab_size, (1, 8), device=device)
    else:
        x = torch.randn(*shape, device=device)
    return model.eval(), x


def timed(fn, repeat):
    fn()  # warm-up
    ts = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        out = fn()
        ts.append(1000 * (time.perf_counter() - t0))
    return statistics.median(ts), ts, out


def profile(fn, top=15) -> str:
    pr = cProfile.Profile()
    pr.enable()
    fn()
    pr.disable()
    s = io.StringIO()
    pstats.Stats(pr, stream=s).sort_stats("tottime").print_stats(top)
    return s.getvalue()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--repeat", type=int, default=5)
    ap.add_argument("--quick", action="store_true", help="skip the CPU ViT-B row (about 2 s per forward)")
    ap.add_argument("--profile", action="store_true", help="cProfile the ResNet-50 rows and print the top entries")
    ap.add_argument("--threads", type=int, default=0, help="torch.set_num_threads (0: torch's default)")
    ap.add_argument("--out", default=str(RESULTS))
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    load_before = os.getloadavg()

    rows = []
    hdr = f"{'model':34s} {'device':6s} {'input':18s} {'nodes':>6s} {'edges':>6s} {'graph ms':>9s} " \
          f"{'fwd ms':>8s} {'pyg(5) ms':>9s} {'ve pairs':>9s}"
    print(hdr)
    print("-" * len(hdr))
    profiles = {}
    for case in CASES:
        label, name, kw, device, shape = case
        if args.quick and name == "vit_base" and device == "cpu":
            continue
        model, x = make(case)
        build = (lambda: ArchGraph.from_module(model)) if x is None else (lambda: ArchGraph.from_module(model, x))
        g_ms, g_all, g = timed(build, args.repeat)
        with torch.no_grad():
            xin = x if x is not None else default_example_input(model)
            f_ms, _, _ = timed(lambda: model(xin), args.repeat)
        p_ms, _, data = timed(lambda: g.to_pyg(max_virtual_dist=5), args.repeat)
        in_shape = tuple(xin.shape)
        row = dict(model=label, registry_name=name, kwargs=kw, device=device, input=list(in_shape),
                   default_input=x is None, nodes=len(g.nodes), edges=len(g.edges),
                   param_tensors=g.coverage().total, coverage=g.coverage().fraction,
                   graph_ms_median=round(g_ms, 2), graph_ms_runs=[round(t, 2) for t in g_all],
                   forward_ms_median=round(f_ms, 2), trace_overhead_ms=round(g_ms - f_ms, 2),
                   to_pyg5_ms_median=round(p_ms, 2), virtual_pairs=int(data.ve_index.shape[1]))
        rows.append(row)
        print(f"{label:34s} {device:6s} {str(in_shape):18s} {len(g.nodes):6d} {len(g.edges):6d} {g_ms:9.1f} "
              f"{f_ms:8.1f} {p_ms:9.1f} {row['virtual_pairs']:9d}")
        sys.stdout.flush()
        if args.profile and name == "resnet50":
            profiles[f"{label} [{device}]"] = profile(build)

    for k, v in profiles.items():
        print(f"\n=== cProfile: {k} (one build, sorted by own time) ===\n{v}")

    r50 = [r for r in rows if r["registry_name"] == "resnet50" and r["device"] == "cpu"]
    verdict = {r["model"]: {"graph_ms": r["graph_ms_median"], "under_target": r["graph_ms_median"] < TARGET_MS}
               for r in r50}
    out = {
        "loadavg_1_5_15_before": [round(v, 2) for v in load_before],
        "loadavg_1_5_15_after": [round(v, 2) for v in os.getloadavg()],
        "repeat": args.repeat,
        "target_ms": TARGET_MS,
        "resnet50_cpu_vs_target": verdict,
        "results": rows,
    }
    write_results(args.out, out)
    print(f"\nResNet-50 on CPU vs the {TARGET_MS:.0f} ms target: "
          + "; ".join(f"{k}: {v['graph_ms']:.1f} ms" for k, v in verdict.items()))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
