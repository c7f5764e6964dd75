#!/usr/bin/env python
"""Initialising a large language model built on the meta device (``ghn.streaming``): time and peak memory.

Builds a Llama-shaped ``transformers`` model on ``meta`` (bf16 parameters, no download: a config only), traces it,
and materialises every predicted tensor on the CPU group by group. Reports seconds, the process's peak resident
memory, the model's size, and the output std of the initialised model on random tokens against default init of a
small model of the same family (the 4x criterion of the real-model issue). Writes
benchmarks/results/stream_large.json.

    python benchmarks/stream_large.py --size 7b          # Llama-2-7B shape (needs the nlp extra)
"""
from __future__ import annotations

import argparse
import resource
import time
from pathlib import Path

import torch
from _results import write_results  # noqa: E402

SHAPES = {  # hidden, intermediate, layers, heads, kv heads, vocab
    "tiny": (256, 688, 4, 4, 4, 32000),
    "1b": (2048, 8192, 16, 32, 8, 128256),
    "7b": (4096, 11008, 32, 32, 32, 32000),
}


def llama(size: str, dtype=torch.bfloat16, device="meta"):
    from transformers import LlamaConfig, LlamaForCausalLM

    h, i, n, heads, kv, vocab = SHAPES[size]
    cfg = LlamaConfig(hidden_size=h, intermediate_size=i, num_hidden_layers=n, num_attention_heads=heads,
                      num_key_value_heads=kv, vocab_size=vocab, max_position_embeddings=2048, torch_dtype=dtype)
    with torch.device(device):
        return LlamaForCausalLM(cfg).to(dtype)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--size", default="7b", choices=sorted(SHAPES))
    p.add_argument("--ckpt", default=None, help="hypernetwork (default: the shipped one)")
    p.add_argument("--budget", type=int, default=1 << 24, help="values decoded per group")
    p.add_argument("--out", default=str(Path(__file__).parent / "results" / "stream_large.json"))
    a = p.parse_args(argv)
    from ghn.hypernet import load_pretrained
    from ghn.streaming import materialize

    hyper = load_pretrained(a.ckpt)
    t0 = time.perf_counter()
    model = llama(a.size)
    idx = torch.randint(0, 1000, (1, 8))
    rep = materialize(hyper, model, {"input_ids": idx.to("meta")}, budget=a.budget, progress=True)
    seconds = time.perf_counter() - t0
    peak_gb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20
    n = sum(p.numel() for p in model.parameters())
    row = {"size": a.size, "params": n, "param_gb": n * 2 / 2**30, "predicted_values": rep.num_predicted_values,
           "seconds": seconds, "peak_rss_gb": peak_gb, "left_on_meta": len(rep.untouched)}
    print(row)
    # output scale on random tokens: a small model of the family, predicted vs default init (float32, real)
    torch.manual_seed(0)
    small = llama("tiny", torch.float32, "cpu").eval()
    tokens = torch.randint(0, 32000, (2, 16))
    with torch.no_grad():
        default_std = small(tokens).logits.std().item()
        hyper.initialize(small, {"input_ids": tokens})
        pred_std = small(tokens).logits.std().item()
    row.update(small_default_logit_std=default_std, small_predicted_logit_std=pred_std)
    print(row)
    write_results(a.out, {"args": vars(a), **row})
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
