#!/usr/bin/env python
"""Coverage of real models: Hugging Face transformers configs (extra ``nlp``) and timm models (extra ``vision``).

Every model is built from a small random config (no download): sizes shrunk to a width of 64, 2 layers, a
vocabulary of 1,000. Per model it records: the fraction of parameter tensors the graph covers (``strict=False``),
the reasons for what is left untouched, whether ``strict=True`` works, seconds, the resident-memory growth, and
whether the predicted model's outputs are finite and sensibly scaled (std against default init). Writes
benchmarks/results/coverage.json.

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
SMALL = {"hidden_size": 64, "d_model": 64, "n_embd": 64, "embed_dim": 64, "intermediate_size": 128,
         "ffn_dim": 128, "encoder_ffn_dim": 128, "decoder_ffn_dim": 128, "d_ff": 128, "n_inner": 128,
         "num_hidden_layers": 2, "num_layers": 2, "n_layer": 2, "n_layers": 2, "encoder_layers": 2,
         "decoder_layers": 2, "num_attention_heads": 4, "n_head": 4, "n_heads": 4, "encoder_attention_heads": 4,
         "decoder_attention_heads": 4, "num_key_value_heads": 2, "head_dim": 16, "vocab_size": 1000,
         "max_position_embeddings": 128, "num_experts": 4, "num_local_experts": 4, "moe_intermediate_size": 64,
         "n_routed_experts": 4, "num_experts_per_tok": 2, "image_size": 32, "patch_size": 8}


def _shrink(cfg, depth: int = 0) -> None:
    for k, v in SMALL.items():
        if hasattr(cfg, k) and isinstance(getattr(cfg, k), int) and not isinstance(getattr(cfg, k), bool):
            try:
                setattr(cfg, k, v)
            except Exception:  # a read-only derived attribute
                pass
    for k in ("pad_token_id", "bos_token_id", "eos_token_id", "decoder_start_token_id", "sep_token_id",
              "cls_token_id", "mask_token_id", "unk_token_id"):
        v = getattr(cfg, k, None)
        if isinstance(v, int) and v >= SMALL["vocab_size"]:
            setattr(cfg, k, min(v, 3))  # ids must stay inside the shrunk vocabulary
    if depth < 2:
        for k in dir(cfg):
            if k.endswith("_config") and not k.startswith("_"):
                sub = getattr(cfg, k, None)
                if sub is not None and hasattr(sub, "to_dict"):
                    _shrink(sub, depth + 1)


def _inputs(model, cfg) -> dict:
    name = getattr(model, "main_input_name", "input_ids")
    if name == "pixel_values":
        c = getattr(cfg, "num_channels", 3)
        size = getattr(cfg, "image_size", 32)
        size = size if isinstance(size, int) else 32
        x = {name: torch.randn(1, c, size, size)}
    elif name == "input_values":
        x = {name: torch.randn(1, 4000)}
    elif name == "input_features":
        x = {name: torch.randn(1, getattr(cfg, "num_mel_bins", 80), 3000)}
    else:
        x = {"input_ids": torch.randint(0, 1000, (1, 8))}
    if getattr(cfg, "is_encoder_decoder", False):
        x["decoder_input_ids"] = torch.randint(0, 1000, (1, 8))
    return x


def _rss_gb() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * 4096 / 2**30


def _out_std(model, x) -> float:
    from ghn.graph import _flatten

    with torch.no_grad():
        out = model(**x)
    t = next((t for t in _flatten(out) if t.is_floating_point()), None)
    return float(t.float().std()) if t is not None else math.nan


def check(name: str, build, hyper) -> dict:
    from ghn.graph import ArchGraph, UnsupportedOpError

    row = {"model": name}
    t0, m0 = time.perf_counter(), _rss_gb()
    try:
        torch.manual_seed(0)
        model, x = build()
        model.eval()
        default_std = _out_std(model, x)
        g = ArchGraph.from_module(model, x, strict=False)
        cov = g.coverage()
        row.update(tensors=cov.total, coverage=cov.fraction, unsupported=cov.unsupported, unused=cov.unused[:5],
                   frozen=len(cov.frozen))
        try:
            ArchGraph.from_module(model, x, strict=True)
            row["strict_ok"] = True
        except UnsupportedOpError as e:
            row["strict_ok"], row["strict_error"] = False, str(e)[:300]
        hyper.initialize(model, graph=g)
        pred_std = _out_std(model, x)
        row.update(default_std=default_std, pred_std=pred_std, finite=math.isfinite(pred_std),
                   std_ratio=pred_std / default_std if default_std > 0 else math.nan)
    except Exception as e:  # recorded per model: the point is to see where it breaks
        row["error"] = f"{type(e).__name__}: {str(e)[:300]}"
    row["seconds"] = time.perf_counter() - t0
    row["rss_growth_gb"] = _rss_gb() - m0
    return row


def transformers_models(n: int):
    import transformers
    from transformers import AutoModel
    from transformers.models.auto.configuration_auto import CONFIG_MAPPING
    from transformers.models.auto.modeling_auto import MODEL_MAPPING_NAMES

    transformers.logging.set_verbosity_error()
    types = sorted(MODEL_MAPPING_NAMES)
    step = max(1, len(types) // n)
    for t in types[::step][:n]:
        def build(t=t):
            cfg = CONFIG_MAPPING[t]()
            _shrink(cfg)
            with torch.device("meta"):  # size check first: a config the shrinking missed must not eat the RAM
                n = sum(p.numel() for p in AutoModel.from_config(cfg).parameters())
            if n > MAX_PARAMS:
                raise MemoryError(f"{n / 1e6:.0f}M parameters after shrinking (limit {MAX_PARAMS / 1e6:.0f}M)")
            model = AutoModel.from_config(cfg)
            return model, _inputs(model, cfg)
        yield f"hf:{t}", build


def timm_models(n: int):
    import timm

    names = sorted(timm.list_models())
    step = max(1, len(names) // n)
    for name in names[::step][:n]:
        def build(name=name):
            model = timm.create_model(name, pretrained=False, num_classes=10)
            size = model.pretrained_cfg.get("input_size", (3, 224, 224))
            return model, {"x": torch.randn(1, *size)}
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
                   if k not in ("unsupported", "unused", "strict_error")}, flush=True)
    built = [r for r in rows if "error" not in r]
    summary = {"models": len(rows), "built": len(built),
               "fully_covered": sum(r["coverage"] == 1.0 for r in built),
               "strict_ok": sum(r.get("strict_ok", False) for r in built),
               "tensor_coverage": sum(r["coverage"] * r["tensors"] for r in built) / max(1, sum(r["tensors"]
                                                                                               for r in built)),
               "finite": sum(r.get("finite", False) for r in built),
               "std_within_4x": sum(0.25 <= r.get("std_ratio", math.nan) <= 4 for r in built)}
    print(summary)
    write_results(a.out, {"args": vars(a), "summary": summary, "rows": rows})
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
