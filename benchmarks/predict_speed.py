#!/usr/bin/env python
"""Time to predict all parameters of ResNet-50-, ViT-B- (and on GPU GPT-2-large-) size models.

On CPU, ``--large`` adds GPT-2-large and the process's peak resident memory. Reports graph-build and prediction
seconds (median of --repeat runs after a warm-up), the ratio against default
PyTorch initialisation of the same model (``reset_parameters`` of every module, same run), peak GPU memory, and the
hypernetwork's parameter count. Writes benchmarks/results/predict_speed_<device>.json.

    python benchmarks/predict_speed.py [--ckpt PATH] [--device cuda] [--repeat 3]
"""
from __future__ import annotations

import argparse
import json
import resource
import statistics
import time
from pathlib import Path

import torch
from _results import write_results  # noqa: E402  (benchmarks/ is on sys.path when run as a script)


def timed(fn, repeat, sync):
    fn()
    ts = []
    for _ in range(repeat):
        sync()
        t = time.perf_counter()
        fn()
        sync()
        ts.append(time.perf_counter() - t)
    return statistics.median(ts)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--ckpt", default=None)
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--repeat", type=int, default=3)
    p.add_argument("--large", action="store_true", help="also GPT-2-large (774M) on CPU (always on GPU)")
    a = p.parse_args(argv)

    from ghn.graph import ArchGraph
    from ghn.hypernet import count_values, load_pretrained
    from ghn.predefined import build_predefined

    ghn = load_pretrained(a.ckpt, a.device)
    ghn.eval()
    print(f"hypernetwork: {ghn.num_params():,} parameters, config {ghn.config}")
    cuda = a.device.startswith("cuda")
    sync = torch.cuda.synchronize if cuda else (lambda: None)
    cases = [("resnet50", dict(num_classes=1000, image_size=224), torch.zeros(2, 3, 64, 64)),
             ("vit_base", dict(num_classes=1000, image_size=224), torch.zeros(2, 3, 224, 224))]
    if cuda or a.large:
        cases.append(("gpt2_large", {}, torch.zeros(1, 8, dtype=torch.long)))
    rows = []
    for name, kw, x in cases:
        with torch.device("meta"):
            meta_model = build_predefined(name, **kw)
        t = time.perf_counter()
        graph = ArchGraph.from_module(meta_model, x.to("meta"))
        build_s = time.perf_counter() - t
        if cuda:
            torch.cuda.reset_peak_memory_stats()
        with torch.no_grad():
            pred_s = timed(lambda: ghn([graph]), a.repeat, sync)
            values = count_values(ghn([graph])[0])
        peak = torch.cuda.max_memory_allocated() / 2**30 if cuda else None
        # CPU: the process's peak resident memory so far (monotonic, so an upper bound for this model's prediction)
        rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20
        model = build_predefined(name, **kw).to(a.device)

        def default_init(model=model):
            for m in model.modules():
                if hasattr(m, "reset_parameters"):
                    m.reset_parameters()

        with torch.no_grad():
            init_s = timed(default_init, a.repeat, sync)
        row = {"model": name, "params": sum(q.numel() for q in model.parameters()), "predicted_values": values,
               "nodes": len(graph), "graph_build_s": build_s, "predict_s": pred_s, "default_init_s": init_s,
               "predict_over_default_init": pred_s / init_s, "peak_gpu_gib": peak,
               "peak_rss_gib": rss}
        rows.append(row)
        print(json.dumps(row))
        del model
    doc = {"device": a.device, "device_name": torch.cuda.get_device_name() if cuda else None,
           "ghn_params": ghn.num_params(),
           "ghn_config": ghn.config.__dict__, "rows": rows}
    out = Path(f"benchmarks/results/predict_speed_{'gpu' if cuda else 'cpu'}.json")
    write_results(out, doc)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
