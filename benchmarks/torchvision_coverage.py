"""Parameter coverage of ``ArchGraph`` on every torchvision classification model.

For each model in ``torchvision.models.list_models(module=torchvision.models)`` this builds the model with
``weights=None`` (on the ``meta`` device when that works: no memory, no compute; else built on CPU and moved to
``meta``; else traced on CPU), builds its
graph with ``strict=False`` and records nodes, edges, coverage, the parameters left out (unused in the traced
forward pass, or consumed by a torch function outside ``ghn/ops.py``) and the build time. Nothing is skipped:
a model whose construction or tracing fails is recorded with its error.

torchvision needs its own torch, so run it from a separate environment:

    python -m venv /tmp/tvenv && /tmp/tvenv/bin/pip install torch torchvision torch-geometric networkx
    PYTHONPATH=. /tmp/tvenv/bin/python benchmarks/torchvision_coverage.py [--models resnet18,vit_b_16]

GoogLeNet and Inception-v3 carry auxiliary classifiers that only run in training mode; the graph is traced in
eval mode, so those parameters would be reported ``unused``. They are built with ``aux_logits=False`` (the
inference architecture) and the aux-head variant is traced as well and recorded under ``aux_variants``.
"""
from __future__ import annotations

import argparse
import os
import sys
import time
import traceback
import warnings
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from _results import write_results  # noqa: E402  (benchmarks/ is on sys.path when run as a script)

from ghn.graph import ArchGraph  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results" / "torchvision_coverage.json"
IMAGE_SIZE = {"inception_v3": 299}  # everything else is traced at 224 x 224 (ViT/Swin/MaxViT need exactly 224)
AUX_MODELS = ("googlenet", "inception_v3")


def build(name: str, device: str, **kw):
    import torchvision

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        with torch.device(device):
            return torchvision.models.get_model(name, weights=None, **kw)


def trace(name: str, **kw) -> dict:
    """Build ``name`` (meta first, CPU as fallback) and its graph; return a JSON-able record."""
    rec: dict = {"model": name, "kwargs": kw}
    size = IMAGE_SIZE.get(name, 224)
    rec["image_size"] = size
    errors = {}
    # meta: built and traced without memory or compute. cpu->meta: some constructors compute their config with
    # tensor ops (RegNet: ``.tolist()``), which meta cannot do; build on CPU and move the parameters to meta.
    for device in ("meta", "cpu->meta", "cpu"):
        try:
            model = build(name, "cpu" if device == "cpu->meta" else device, **kw)
            if device == "cpu->meta":
                model = model.to("meta")
            x = torch.randn(2, 3, size, size, device=device.split("->")[-1])
            t0 = time.perf_counter()
            g = ArchGraph.from_module(model, x, strict=False)
            rec["build_time_s"] = round(time.perf_counter() - t0, 4)
        except Exception as e:  # noqa: BLE001 - recorded, then retried on CPU
            errors[device] = (f"{type(e).__name__}: {e}".splitlines() or [""])[0][:300]
            if os.environ.get("TV_COVERAGE_DEBUG"):
                traceback.print_exc()
            continue
        cov = g.coverage()
        rec.update(
            device=device,
            nodes=len(g.nodes),
            edges=len(g.edges),
            param_tensors=cov.total,
            param_count=sum(p.numel() for p in model.parameters()),
            coverage=round(cov.fraction, 6),
            covered=len(cov.covered),
            tied={k: v for k, v in cov.tied.items()},
            unused=cov.unused,
            unsupported=cov.unsupported,
            op_counts=g.op_counts(),
        )
        if errors:
            rec["errors"] = errors
        return rec
    rec["errors"] = errors
    rec["coverage"] = None
    return rec


def main() -> None:
    import torchvision

    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--models", default="", help="comma-separated subset (default: all classification models)")
    ap.add_argument("--out", default=str(RESULTS))
    args = ap.parse_args()
    names = torchvision.models.list_models(module=torchvision.models)
    if args.models:
        names = [n for n in args.models.split(",") if n]

    records, aux = [], []
    print(f"{'model':24s} {'dev':9s} {'nodes':>6s} {'edges':>6s} {'params':>7s} {'cover':>7s} {'time(s)':>8s}  missing")
    for name in names:
        kw = {"aux_logits": False} if name in AUX_MODELS else {}
        rec = trace(name, **kw)
        records.append(rec)
        if name in AUX_MODELS:
            aux.append(trace(name))
        if rec["coverage"] is None:
            print(f"{name:24s} FAILED {rec['errors']}")
            continue
        missing = rec["unused"] + [f"{k} ({v})" for k, v in rec["unsupported"].items()]
        print(f"{name:24s} {rec['device']:9s} {rec['nodes']:6d} {rec['edges']:6d} {rec['param_tensors']:7d} "
              f"{100 * rec['coverage']:6.1f}% {rec['build_time_s']:8.3f}  {', '.join(missing[:4])}"
              f"{' ...' if len(missing) > 4 else ''}")
        sys.stdout.flush()

    full = [r["model"] for r in records if r["coverage"] == 1.0]
    failed = [r["model"] for r in records if r["coverage"] is None]
    partial = {r["model"]: {"coverage": r["coverage"], "unused": r["unused"], "unsupported": r["unsupported"]}
               for r in records if r["coverage"] is not None and r["coverage"] < 1.0}
    summary = f"{len(full)}/{len(records)} models at 100% coverage"
    out = {
        "torchvision": torchvision.__version__,
        "summary": summary,
        "not_full": partial,
        "failed": failed,
        "devices": {d: [r["model"] for r in records if r.get("device") == d] for d in ("meta", "cpu->meta", "cpu")},
        "models": records,
        "aux_variants": aux,
        "notes": "googlenet/inception_v3 are built with aux_logits=False: their auxiliary classifiers only run in "
                 "training mode and the graph is traced in eval mode. aux_variants holds the default construction, "
                 "whose aux-head parameters are reported as unused.",
    }
    write_results(args.out, out)
    for r in aux:
        if r["coverage"] is not None:
            print(f"note: {r['model']} with aux heads: {100 * r['coverage']:.1f}% "
                  f"({len(r['unused'])} aux parameter tensors unused in eval-mode forward)")
    if failed:
        print("failed:", ", ".join(failed))
    for k, v in partial.items():
        print(f"not full: {k}: {v}")
    print(summary)


if __name__ == "__main__":
    main()
