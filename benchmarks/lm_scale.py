#!/usr/bin/env python
"""Output scale of predicted language models against default init, on random tokens.

For each built-in LM (``gpt_tiny``, ``gpt2_small``) and, with the ``nlp`` extra, a small Hugging Face Llama
(4 layers, width 256), the std of the logits on 2 x 16 random tokens: default init, then the same model after
``initialize`` with the hypernetwork (default: the shipped one). The issue's bar is a ratio within 4x.
Writes benchmarks/results/lm_scale.json.

    python benchmarks/lm_scale.py
"""
from __future__ import annotations

import argparse

import torch
from _results import write_results  # noqa: E402  (benchmarks/ is on sys.path when run as a script)


def small_llama():
    from transformers import LlamaConfig, LlamaForCausalLM

    cfg = LlamaConfig(vocab_size=32000, hidden_size=256, intermediate_size=688, num_hidden_layers=4,
                      num_attention_heads=4, num_key_value_heads=4)
    return LlamaForCausalLM(cfg)


def logit_std(model, tokens) -> float:
    with torch.no_grad():
        out = model(tokens)
    out = getattr(out, "logits", out)
    return float(out.float().std())


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--ckpt", default=None, help="hypernetwork (default: the shipped one)")
    p.add_argument("--out", default="benchmarks/results/lm_scale.json")
    a = p.parse_args(argv)
    from ghn.hypernet import load_pretrained
    from ghn.predefined import build_predefined

    hyper = load_pretrained(a.ckpt)
    builders = {"gpt_tiny": lambda: build_predefined("gpt_tiny"), "gpt2_small": lambda: build_predefined("gpt2_small")}
    try:
        import transformers  # noqa: F401

        builders["hf_llama_small"] = small_llama
    except ImportError:
        print("transformers not installed: the Hugging Face Llama is skipped (pip install -e .[nlp])")
    rows = []
    for name, build in builders.items():
        torch.manual_seed(0)
        model = build().eval()
        vocab = 1000 if name.startswith("gpt") else 32000
        tokens = torch.randint(0, vocab, (2, 16))
        default = logit_std(model, tokens)
        hyper.initialize(model, tokens)
        pred = logit_std(model, tokens)
        row = {"model": name, "default_std": default, "predicted_std": pred, "ratio": pred / default}
        rows.append(row)
        print(f"{name:15s} default {default:.3f}  predicted {pred:.3f}  ratio {pred / default:.2f}")
    write_results(a.out, {"args": vars(a), "rows": rows, "within_4x": sum(0.25 <= r["ratio"] <= 4 for r in rows)})
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
