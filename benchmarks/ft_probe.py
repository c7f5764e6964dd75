#!/usr/bin/env python
"""Why a predicted init fine-tunes worse than default init, on a few val architectures.

For each architecture and each variant (``default`` init, ``pred`` = the hypernetwork as it is, or decoding
overrides such as ``noise_share=0.5`` or ``max_pred_share=0.25+noise_share=0.25`` that keep its tensors) it reports:

- ``feat_erank``: effective rank (exp of the entropy of the normalised singular values) of the features entering
  the classifier, over 512 training images; default init gives tens, a degenerate init a handful;
- ``acc0``: top-1 with no training (BN statistics re-estimated);
- ``loss0`` / ``step_loss``: training-mode cross-entropy on 128 training images at the init, and on another 128
  after one SGD step of lr 0.2 (gradient norm clipped at 5) from it: how sharp the init is. Default init's loss
  barely moves; a predicted init whose loss jumps is kicked out of its basin by the first fine-tuning steps;
- ``ft``: top-1 after ``--steps`` SGD steps (``--lr``, 0.05 as eval.py; batch 128, the same data orders for every
  variant), the mean over ``--seeds`` data orders (one 100-step run of a LayerNorm CNN moves by several points with
  float rounding),
  and ``ft_erank``: the classifier features' effective rank at the end of those steps;
  ``--steps 0`` skips fine-tuning: a screen of many decodings in seconds per architecture.

A variant ending in ``@rms`` (``pred@rms``, ``noise_share=0.5@rms``) rescales every predicted matrix to the RMS of
its default init: the predicted direction with the default scale (under a normalisation the scale sets the
effective fine-tuning learning rate, not the function). A suffix ``@head=S`` (``pred@head=0.1``) multiplies the
classifier's weight and bias by ``S``: the same predictions with no training, softer logits to fine-tune from.
``@branch=S`` multiplies the output projections of transformer residual branches (``attn.proj``,
``mha.out_proj``, ``mlp.fc2``) by ``S``: closer to the near-identity blocks of a ViT's own init (std 0.02).
A suffix ``@reset=KIND`` (``conv``, ``norm`` or ``head``; repeatable) puts those modules back to their default
init: which part of a predicted model makes fine-tuning worse. ``--split predefined`` probes the built-in models
(index 0 is resnet18).

Every finished (architecture, variant) row is appended to ``<out>.partial.jsonl`` at once: a probe stopped midway (a
session's end; one row is a few minutes) resumes from it when run again with the same settings.

    python benchmarks/ft_probe.py --indices 1 3 --variants default pred noise_share=0.5
"""
from __future__ import annotations

import argparse
import hashlib
import json
import sys
from pathlib import Path

import torch
import torch.nn as nn
from _results import DefaultInitCache, PartialRows, ghn_fingerprint, write_results  # noqa: E402  (benchmarks/ is on sys.path when run as a script)

from ghn.training import classifier_layer

ROOT = Path(__file__).resolve().parent.parent
PROBE_DIGEST = hashlib.sha256(Path(__file__).read_bytes()).hexdigest()[:16]  # a cached row is this script's row


def effective_rank(f: torch.Tensor) -> float:
    s = torch.linalg.svdvals(f - f.mean(0))
    p = s / s.sum()
    return float(torch.exp(-(p * (p + 1e-12).log()).sum()))


def classifier_features(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """The input of the last ``nn.Linear`` (the classifier) for images ``x``, in eval mode."""
    lin = classifier_layer(model)
    got = {}
    hook = lin.register_forward_hook(lambda mod, inp, out: got.__setitem__("f", inp[0].detach()))
    model.eval()
    with torch.no_grad():
        model(x)
    hook.remove()
    return got["f"].flatten(1)


def step_response(model: nn.Module, images: torch.Tensor, labels: torch.Tensor, lr: float = 0.2) -> tuple:
    """``(loss on the first half of the batch, loss on the second half after one clipped SGD step on the first)``,
    in training mode, through ``functional_call`` (``model``'s parameters are not changed)."""
    import torch.nn.functional as F

    from ghn.fastconv import fast_convs
    from ghn.training import clipped_step_scale

    half = len(labels) // 2
    model.train()
    p = {k: t.detach().clone().requires_grad_() for k, t in model.named_parameters()}
    with fast_convs(model):
        loss0 = F.cross_entropy(torch.func.functional_call(model, p, (images[:half],)), labels[:half])
        gs = torch.autograd.grad(loss0, list(p.values()), allow_unused=True)
        gs = [torch.zeros_like(t) if g is None else g for t, g in zip(p.values(), gs)]
        scale = clipped_step_scale(gs, lr)
        with torch.no_grad():
            moved = {k: t - scale * g for (k, t), g in zip(p.items(), gs)}
            loss1 = F.cross_entropy(torch.func.functional_call(model, moved, (images[half:],)), labels[half:])
    return float(loss0.detach()), float(loss1)


def parse_overrides(variant: str) -> dict:
    """``"noise_share=0.5+orth=true"`` -> config overrides, typed like the :class:`GHNConfig` fields."""
    from dataclasses import fields

    from ghn.hypernet import GHNConfig

    types = {f.name: type(f.default) for f in fields(GHNConfig)}
    out = {}
    for kv in variant.split("+"):
        k, v = kv.split("=")
        out[k] = v.lower() in ("1", "true") if types[k] is bool else types[k](v)
    return out


def summarize(rows: list) -> dict:
    """Per variant, over the architectures that also have a ``default`` row: mean ``acc0``, ``ft`` and
    ``feat_erank``, the mean paired fine-tuning gap to default init, and on how many it holds (``ft`` at least
    default init's minus half a point: ``ghn.plot.no_harm``, the rule of eval.py)."""
    from ghn.plot import no_harm

    base = {r["index"]: r.get("ft") for r in rows if r["variant"] == "default"}
    out = {}
    for v in dict.fromkeys(r["variant"] for r in rows):
        rs = [r for r in rows if r["variant"] == v and r["index"] in base]
        if not rs:
            continue
        out[v] = {"n": len(rs), "acc0": sum(r["acc0"] for r in rs) / len(rs),
                  "feat_erank": sum(r["feat_erank"] for r in rs) / len(rs)}
        if all("step_loss" in r for r in rs):
            out[v].update({k: sum(r[k] for r in rs) / len(rs) for k in ("loss0", "step_loss")})
        if all("ft" in r and base[r["index"]] is not None for r in rs):
            gaps = [r["ft"] - base[r["index"]] for r in rs]
            out[v].update(ft=sum(r["ft"] for r in rs) / len(rs), ft_gap=sum(gaps) / len(gaps),
                          holds=sum(no_harm(r["ft"], base[r["index"]]) for r in rs))
        if all("ft_erank" in r for r in rs):
            out[v]["ft_erank"] = sum(r["ft_erank"] for r in rs) / len(rs)
    return out


RESETTABLE = {"conv": (nn.modules.conv._ConvNd,),
              "norm": (nn.modules.batchnorm._NormBase, nn.LayerNorm, nn.GroupNorm, nn.RMSNorm)}


@torch.no_grad()
def apply_modifier(m: nn.Module, default: nn.Module, mod: str) -> None:
    """One ``@`` suffix of a variant on model ``m``; ``default`` is the same architecture at its default init."""
    if mod == "rms":  # every matrix rescaled to its default-init RMS: the direction predicted, the scale default
        for q, d in zip(m.parameters(), default.parameters()):
            if q.dim() >= 2:
                q.mul_(d.pow(2).mean().sqrt() / q.pow(2).mean().sqrt().clamp_min(1e-12))
    elif mod.startswith("head="):  # the classifier (weight and bias) times a factor: same argmax, other dynamics
        for q in classifier_layer(m).parameters():
            q.mul_(float(mod[5:]))
    elif mod.startswith("branch="):  # residual branches' output projections (attention proj, MLP fc2) times S
        for name, mm in m.named_modules():
            if isinstance(mm, nn.Linear) and name.endswith(("attn.proj", "mha.out_proj", "mlp.fc2")):
                for q in mm.parameters():
                    q.mul_(float(mod[7:]))
    elif mod == "reset=head":
        classifier_layer(m).load_state_dict(classifier_layer(default).state_dict())
    elif mod.startswith("reset=") and mod[6:] in RESETTABLE:
        for mm, dd in zip(m.modules(), default.modules()):
            if isinstance(mm, RESETTABLE[mod[6:]]):
                mm.load_state_dict(dd.state_dict())
    else:
        raise SystemExit(f"unknown variant suffix @{mod}: expected @rms, @head=S, @branch=S or "
                         "@reset=conv|norm|head")


def measure(m: nn.Module, fresh, train, test, a) -> dict:
    """A probe row's measurements of model ``m`` (``fresh()`` builds its architecture again; ``a``: the settings)."""
    from ghn.evaluation import batches as data_batches
    from ghn.evaluation import calibrate_norm_stats, evaluate_init, finetune

    state = {k: t.clone() for k, t in m.state_dict().items()}
    calibrate_norm_stats(m, (x for x, _ in data_batches(train, 128, 0, limit=5)))
    out = {"feat_erank": effective_rank(classifier_features(m, train.images[:512]))}
    out["loss0"], out["step_loss"] = step_response(m, train.images[:256], train.labels[:256])
    out["acc0"] = evaluate_init(m, train, test, calib_batches=5)
    fts, ft_ranks = [], []
    for seed in range(a.seeds if a.steps > 0 else 0):  # data orders: 100 steps at lr 0.05 are chaotic
        m = fresh()
        m.load_state_dict(state)
        finetune(m, train, epochs=1, lr=a.lr, max_steps=a.steps, seed=seed)
        fts.append(evaluate_init(m, train, test, calib_batches=5))
        ft_ranks.append(effective_rank(classifier_features(m, train.images[:512])))
    if fts:  # where fine-tuning ends: its accuracy and the rank of the features it ends with
        out["ft"], out["ft_erank"] = sum(fts) / len(fts), sum(ft_ranks) / len(ft_ranks)
    if len(fts) > 1:
        out["ft_seeds"] = fts
    return out


def main(argv=None) -> int:
    from ghn.data import ArchDataset
    from ghn.datasets import get_dataset
    from ghn.hypernet import load_pretrained
    from ghn.task import Task

    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--ckpt", default=None, help="hypernetwork; default: the shipped one")
    p.add_argument("--split", default="val")
    p.add_argument("--indices", type=int, nargs="+", default=[1, 3])
    p.add_argument("--variants", nargs="+", default=["default", "pred", "noise_share=0.5"])
    p.add_argument("--steps", type=int, default=100)
    p.add_argument("--test-n", type=int, default=1000)
    p.add_argument("--lr", type=float, default=0.05, help="fine-tuning learning rate (SGD, as eval.py)")
    p.add_argument("--seeds", type=int, default=1, help="fine-tuning data orders per variant; `ft` is their mean")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "ft_probe.json"))
    p.add_argument("--fresh", action="store_true", help="ignore (and overwrite) the rows of a stopped probe")
    a = p.parse_args(argv)
    torch.set_num_threads(a.threads)
    out = Path(a.out)
    partial = PartialRows(out.with_name(out.name + ".partial.jsonl"),
                          {"ghn_fingerprint": ghn_fingerprint(a.ckpt), "split": a.split, "steps": a.steps,
                           "test_n": a.test_n, "seeds": a.seeds, "threads": a.threads, "torch": torch.__version__,
                           **({"lr": a.lr} if a.lr != 0.05 else {})},  # older partial files keep resuming
                          ("index", "variant"), fresh=a.fresh)
    done = partial.rows()
    if done:
        print(f"resuming: {len(done)} rows from {partial.path}", flush=True)
    hyper = load_pretrained(a.ckpt)
    train = get_dataset("fashion-mnist", None, train=True)
    test = get_dataset("fashion-mnist", None, train=False)
    test.images, test.labels = test.images[:a.test_n], test.labels[:a.test_n]
    archs = ArchDataset(a.split)
    task = Task.of(train)
    cache = DefaultInitCache(ROOT / "benchmarks" / "results" / "default_init_cache.json", enabled=not a.fresh)
    seen = (train.labels, test.labels, train.images[:64])  # which images: a cached row is never another dataset's
    data = hashlib.sha256(b"".join(t.contiguous().numpy().tobytes() for t in seen)).hexdigest()[:16]
    rows = []
    for i in a.indices:
        def fresh(i=i):
            torch.manual_seed(i)
            return archs.build(i, **task.model_kwargs())

        for v in a.variants:
            if (i, v) in done:
                rows.append(done[(i, v)])
                continue
            m = fresh()
            name, *mods = v.split("@")
            if name != "default":
                h = hyper if name == "pred" else hyper.with_config(**parse_overrides(name))
                h.initialize(m, task.example_input())
            for mod in mods:
                apply_modifier(m, fresh(), mod)

            # default init's rows do not depend on the hypernetwork: kept across probes (and checkpoints)
            key = cache.key(m, probe=PROBE_DIGEST, data=data, split=a.split, steps=a.steps, test_n=a.test_n,
                            seeds=a.seeds, lr=a.lr)
            found = (cache.get(key, lambda: measure(m, fresh, train, test, a)) if v == "default"
                     else measure(m, fresh, train, test, a))
            row = {"index": i, "family": archs[i]["family"], "norm": archs[i].get("norm"), "variant": v, **found}
            rows.append(partial.add(row))
            print(json.dumps({k: round(x, 3) if isinstance(x, float) else x for k, x in row.items()}), flush=True)
    summary = summarize(rows)
    for v, x in summary.items():
        ft = (f"  ft {100 * x['ft']:5.1f}  gap {100 * x['ft_gap']:+5.1f}  holds {x['holds']}/{x['n']}"
              if "ft" in x else "") + (f"  erank after {x['ft_erank']:5.1f}" if "ft_erank" in x else "")
        sharp = f"  loss {x['loss0']:.2f} -> {x['step_loss']:.2f} after a step" if "step_loss" in x else ""
        print(f"{v:40s} n {x['n']:3d}  acc0 {100 * x['acc0']:5.1f}  feat_erank {x['feat_erank']:5.1f}{sharp}{ft}")
    write_results(out, {"args": vars(a), "summary": summary, "rows": rows})
    partial.path.unlink(missing_ok=True)  # every row is in the results now
    return 0


if __name__ == "__main__":
    sys.exit(main())
