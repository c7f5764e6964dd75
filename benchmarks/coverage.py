#!/usr/bin/env python
"""Coverage of real models: Hugging Face transformers configs (extra ``nlp``) and timm models (extra ``vision``).

Every model is built from a small random config (no download; ``_hf_inputs.small_config``): two attention heads of
the original head size, 2 layers (one of each kind where layers differ), 4 experts, a vocabulary of 1,000; and runs on
inputs for every tower its forward takes (``_hf_inputs.example_inputs``: text, images, audio, decoder ids, image
placeholder tokens). Per model it records: the inputs, the fraction of parameter tensors the graph of that one
forward covers (``strict=False``), the fraction ``initialize`` predicts (``init_coverage``: also the leaf modules the
forward never used, each predicted alone), the reasons for what is left untouched, whether ``strict=True`` works,
seconds, the resident-memory growth, and whether the predicted model's outputs are finite and sensibly scaled (std
against default init, both in eval mode with BatchNorm statistics re-estimated on the example input, as
``initialize`` does). Types that need a library not installed here (timm, detectron2) or that are no model (no forward)
are skipped with the reason, counted apart. Writes benchmarks/results/coverage.json.

    python benchmarks/coverage.py --transformers 80 [--timm 150]
"""
from __future__ import annotations

import argparse
import math
import time
from pathlib import Path

import torch
from _results import write_results  # noqa: E402

MAX_PARAMS = 50_000_000
MISSING_LIBRARIES = ("timm", "detectron2")  # optional backends of a few model types, not installed here


class Skipped(Exception):
    """A model type left out on purpose (recorded with its reason, counted apart from the failures)."""


def _rss_gb() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * 4096 / 2**30


def _out_std(model, x) -> float:
    from ghn.graph import _flatten

    with torch.no_grad():
        out = model(**x)
    t = next((t for t in _flatten(out) if t.is_floating_point() and t.numel() > 1), None)
    return float(t.float().std()) if t is not None else math.nan


def check(name: str, build, hyper) -> dict:
    from ghn.evaluation import reestimate_norm_stats
    from ghn.graph import ArchGraph, UnsupportedOpError

    row = {"model": name}
    t0, m0 = time.perf_counter(), _rss_gb()
    try:
        torch.manual_seed(0)
        try:
            model, x = build()
        except ImportError as e:
            lib = next((lib for lib in MISSING_LIBRARIES if lib in str(e)), None)
            if lib is None:
                raise
            raise Skipped(f"needs {lib}, which is not installed") from None
        model.eval()
        row["inputs"] = {k: list(v.shape) for k, v in x.items() if isinstance(v, torch.Tensor)}
        on_meta = next(model.parameters()).is_meta
        if not on_meta:  # default init measured like the prediction: BatchNorm statistics of this input
            row["default_norm_stats"] = reestimate_norm_stats(model, x)
        default_std = math.nan if on_meta else _out_std(model, x)
        g = ArchGraph.from_module(model, x, strict=False)
        cov = g.coverage()
        row.update(tensors=cov.total, coverage=cov.fraction, unsupported=cov.unsupported, unused=cov.unused[:5],
                   frozen=len(cov.frozen))
        try:
            ArchGraph.from_module(model, x, strict=True)
            row["strict_ok"] = True
        except UnsupportedOpError as e:
            row["strict_ok"], row["strict_error"] = False, str(e)[:300]
        if on_meta:  # above MAX_PARAMS: the graph's coverage only (no values to initialise or run)
            row.update(init_coverage=cov.fraction, on_meta=True)
        else:
            report = hyper.initialize(model, x, graph=g)  # BatchNorm statistics re-estimated on x
            row.update(init_coverage=report.fraction, alone=len(report.alone), untouched=dict(list(
                report.untouched.items())[:5]), norm_stats=report.norm_stats)
            pred_std = _out_std(model, x)
            row.update(default_std=default_std, pred_std=pred_std, finite=math.isfinite(pred_std),
                       std_ratio=pred_std / default_std if default_std > 0 else math.nan)
    except Skipped as e:
        row["skipped"] = str(e)
    except Exception as e:  # recorded per model: the point is to see where it breaks
        row["error"] = f"{type(e).__name__}: {' '.join(str(e).split())[:300]}"
    row["seconds"] = time.perf_counter() - t0
    row["rss_growth_gb"] = _rss_gb() - m0
    return row


def transformers_models(n: int):
    import transformers
    from _hf_inputs import example_inputs, small_config
    from transformers import AutoModel
    from transformers.models.auto.configuration_auto import CONFIG_MAPPING
    from transformers.models.auto.modeling_auto import MODEL_MAPPING_NAMES

    transformers.logging.set_verbosity_error()
    types = sorted(MODEL_MAPPING_NAMES)
    step = max(1, len(types) // n)
    for t in types[::step][:n]:
        def build(t=t):
            cfg = small_config(CONFIG_MAPPING[t]())
            with torch.device("meta"):  # size check first: a config the shrinking missed must not eat the RAM
                meta = AutoModel.from_config(cfg)
            if type(meta).forward is torch.nn.Module.forward:
                raise Skipped(f"not a model: {type(meta).__name__} has no forward (a pipeline of models)")
            n = sum(p.numel() for p in meta.parameters())
            if n > MAX_PARAMS:
                raise MemoryError(f"{n / 1e6:.0f}M parameters after shrinking (limit {MAX_PARAMS / 1e6:.0f}M)")
            model = AutoModel.from_config(cfg)
            return model, example_inputs(model, cfg)
        yield f"hf:{t}", build


def timm_models(n: int):
    import timm

    names = sorted(timm.list_models())
    step = max(1, len(names) // n)
    for name in names[::step][:n]:
        def build(name=name):
            with torch.device("meta"):  # a model above MAX_PARAMS is traced on meta: coverage only, no output std
                model = timm.create_model(name, pretrained=False, num_classes=10)
            if sum(p.numel() for p in model.parameters()) <= MAX_PARAMS:
                model = timm.create_model(name, pretrained=False, num_classes=10)
            size = model.pretrained_cfg.get("input_size", (3, 224, 224))
            return model, {"x": torch.randn(2, *size, device=next(model.parameters()).device)}
        yield f"timm:{name}", build


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--transformers", type=int, default=80, help="model types, evenly spaced over the sorted list")
    p.add_argument("--timm", type=int, default=0, help="timm models, evenly spaced (needs the vision extra)")
    p.add_argument("--ckpt", default=None)
    p.add_argument("--out", default=str(Path(__file__).parent / "results" / "coverage.json"))
    a = p.parse_args(argv)
    from ghn.hypernet import load_pretrained

    hyper = load_pretrained(a.ckpt)
    rows = []
    sources = []
    if a.transformers:
        sources.append(transformers_models(a.transformers))
    if a.timm:
        sources.append(timm_models(a.timm))
    for src in sources:
        for name, build in src:
            row = check(name, build, hyper)
            rows.append(row)
            print({k: (round(v, 3) if isinstance(v, float) else v) for k, v in row.items()
                   if k not in ("unsupported", "unused", "untouched", "strict_error", "inputs")}, flush=True)
    built = [r for r in rows if "error" not in r and "skipped" not in r]
    skipped = sum("skipped" in r for r in rows)
    summary = {"models": len(rows), "skipped": skipped, "attempted": len(rows) - skipped, "built": len(built),
               "graph_fully_covered": sum(r["coverage"] == 1.0 for r in built),
               "fully_covered": sum(r.get("init_coverage") == 1.0 for r in built),
               "strict_ok": sum(r.get("strict_ok", False) for r in built),
               "tensor_coverage": sum(r["coverage"] * r["tensors"] for r in built) / max(1, sum(r["tensors"]
                                                                                               for r in built)),
               "on_meta": sum(r.get("on_meta", False) for r in built),  # coverage only: no output checks
               "finite": sum(r.get("finite", False) for r in built),
               "std_within_4x": sum(0.25 <= r.get("std_ratio", math.nan) <= 4 for r in built)}
    print(summary)
    write_results(a.out, {"args": vars(a), "summary": summary, "rows": rows})
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
