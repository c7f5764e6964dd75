"""Predict the parameters of a model (or a whole zoo) with a graph hypernetwork.

    python predict.py --model resnet18 --out resnet18.safetensors      # shipped hypernetwork
    python predict.py --model mypkg.models:MyNet --ckpt runs/x/ghn.safetensors --num-classes 100
    python predict.py --zoo data/test.jsonl.gz --out-dir out/zoo          # batch-initialize many models
    python predict.py --model resnet18 --eval fashion-mnist               # + accuracy with no training
"""
from __future__ import annotations

import argparse
import sys
import time

import torch


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--model", help="built-in name, module:Class, torchvision:/timm:/hf: name, or spec .json")
    src.add_argument("--zoo", help="file of model names / specs (.jsonl[.gz]) or a directory of spec .json files")
    p.add_argument("--ckpt", help="hypernetwork checkpoint (.safetensors); default: the shipped one")
    p.add_argument("--out", help="where to write the predicted weights (.safetensors) for --model")
    p.add_argument("--out-dir", help="where to write one .safetensors per model and summary.json for --zoo")
    p.add_argument("--num-classes", type=int, help="default: the checkpoint's training task")
    p.add_argument("--in-channels", type=int, help="default: the checkpoint's training task")
    p.add_argument("--image-size", type=int, help="default: the checkpoint's training task")
    p.add_argument("--batch-size", type=int, default=16, help="graphs per hypernetwork pass (--zoo)")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--lenient", action="store_true", help="leave unsupported layers untouched instead of failing")
    p.add_argument("--eval", metavar="DATASET", help="also report top-1 of the predicted model (no training) on "
                   "this dataset's test split: fashion-mnist | cifar10 | cifar100")
    p.add_argument("--data-root", help="dataset folder for --eval")
    p.add_argument("--example-shape", help="input shape for tracing, e.g. 2,3,64 (conv1d) or 2,16 (token ids for "
                   "an embedding-first model); default: guessed from the first layer")
    p.add_argument("--inspect", action="store_true", help="print spectrum / scale / same-layer statistics of the "
                   "predicted weights against default init (ghn.inspect): degenerate predictions show up here")
    p.add_argument("--max-dir-ratio", type=float, default=None, metavar="KAPPA",
                   help="cap each predicted direction at KAPPA times the energy of the other directions of its "
                        "matrix (e.g. 0.25): less signal with no training, closer to default init when fine-tuning "
                        "wide models (docs/DESIGN.md, 'Per-direction cap'); one cap for every model (a checkpoint "
                        "may set other caps for models whose convolutions feed BatchNorm or nothing, "
                        "max_dir_ratio_loose, and for transformers, max_dir_ratio_attn)"
                        "; 0: no cap; default: the checkpoint's")
    a = p.parse_args(argv)
    for flag in ("num_classes", "in_channels", "image_size", "batch_size"):
        v = getattr(a, flag)
        if v is not None and v < 1:
            p.error(f"--{flag.replace('_', '-')} must be >= 1, got {v}")
    shape = _parse_shape(p, a.example_shape)

    from ghn.hypernet import load_pretrained
    from ghn.zoo import check_out_path

    if a.out:
        check_out_path(a.out)  # before any work
    ghn = load_pretrained(a.ckpt, a.device)
    if a.max_dir_ratio is not None:
        try:  # the decoder owns the rule (>= 0, needs the base design)
            ghn = ghn.with_config(max_dir_ratio=a.max_dir_ratio, max_dir_ratio_loose=0.0, max_dir_ratio_attn=0.0)
        except ValueError as e:
            p.error(f"--max-dir-ratio: {e}")
    task = ghn.task.with_overrides(num_classes=a.num_classes, in_channels=a.in_channels, image_size=a.image_size)
    print(f"hypernetwork: {a.ckpt or 'shipped default'} ({ghn.num_params():,} params; trained on "
          f"{ghn.task.dataset or 'unknown'}); target task: {task.num_classes} classes, "
          f"{task.in_channels}x{task.image_size}px")

    if a.zoo:
        return _run_zoo(a, ghn, task)
    return _run_model(a, ghn, task, shape)


def _run_zoo(a, ghn, task) -> int:
    from ghn.zoo import initialize_zoo, read_zoo

    entries = read_zoo(a.zoo)
    inspected = []  # per-model statistics only: the models themselves are not kept
    on_model = (lambda name, model, _: inspected.append(_inspect(model, name, not a.lenient))) if a.inspect else None
    summary = initialize_zoo(entries, ghn, a.out_dir, a.batch_size, task, strict=not a.lenient, on_model=on_model)
    print(summary)
    if a.inspect:
        from ghn.inspect import zoo_summary

        print(zoo_summary(inspected))
    if summary.failed:
        print(f"error: {len(summary.failed)} of {len(entries)} zoo entries failed (listed above"
              f"{' and in ' + a.out_dir + '/summary.json' if a.out_dir else ''})", file=sys.stderr)
        return 1
    return 0


def _trace(a, model, task, shape):
    """The graph of ``model`` on ``--example-shape`` (or a guessed input); a failed forward pass is one line."""
    from ghn.graph import ArchGraph, UnsupportedOpError
    from ghn.zoo import _takes_images

    x = _example(model, shape) if shape else (task.example_input() if _takes_images(model) else None)
    try:
        return ArchGraph.from_module(model, x, strict=not a.lenient)
    except (RuntimeError, TypeError, IndexError) as e:  # the forward pass itself failed on the example input
        if isinstance(e, UnsupportedOpError):
            raise
        shape_txt = f"shape {tuple(x.shape)}" if isinstance(x, torch.Tensor) else "a guessed input"
        raise ValueError(f"{a.model}: the forward pass on {shape_txt} failed ({str(e).splitlines()[0]}); "
                         "give a fitting --example-shape") from None


def _run_model(a, ghn, task, shape) -> int:
    from ghn.zoo import get_model, save_predicted

    t0 = time.perf_counter()
    model = get_model(a.model, **task.model_kwargs())
    n_params = sum(p.numel() for p in model.parameters())
    if n_params == 0:
        raise ValueError(f"{a.model} has no parameters: nothing to predict")
    report = ghn.initialize(model, graph=_trace(a, model, task, shape))
    report.model = a.model
    print(f"{report}\n{n_params:,} parameters, predicted in {time.perf_counter() - t0:.2f}s")
    if a.inspect:
        print(_inspect(model, a.model, not a.lenient))
    if a.out:
        save_predicted(model, report, a.out)
        print(f"wrote {a.out}  (load with model.load_state_dict(safetensors.torch.load_file(path), strict=False))")
    if a.eval:
        from ghn.datasets import get_dataset
        from ghn.evaluation import evaluate_init

        test = get_dataset(a.eval, a.data_root, train=False)
        train = get_dataset(a.eval, a.data_root, train=True)
        acc = evaluate_init(model, train, test)
        print(f"top-1 on {a.eval} test with predicted parameters, no training: {100 * acc:.2f}%")
    return 0


def _parse_shape(p, text):
    if not text:
        return None
    try:
        shape = tuple(int(v) for v in text.replace("x", ",").split(","))
    except ValueError:
        shape = ()
    if len(shape) < 2 or min(shape) < 1:
        p.error(f"--example-shape {text!r}: expected positive integers like 2,3,64")
    return shape


def _example(model, shape):
    """An input of ``shape``: token ids if the model starts with an embedding, else Gaussian values."""
    first = next((m for m in model.modules() if isinstance(m, (torch.nn.Embedding, torch.nn.Linear,
                                                                 torch.nn.modules.conv._ConvNd))), None)
    if isinstance(first, torch.nn.Embedding):
        return torch.randint(0, first.num_embeddings, shape)
    return torch.randn(*shape)


def _inspect(model, name: str, strict: bool):
    """Inspection of the weights now in ``model`` (predicted) against its default init."""
    from ghn.inspect import inspect_model

    params = {k: v.detach() for k, v in model.named_parameters()}
    ins = inspect_model(model, params=params, strict=strict)
    ins.model = name
    return ins


def cli() -> int:
    from ghn.graph import UnsupportedOpError
    from ghn.hypernet import CheckpointError, NonFiniteError

    try:
        return main()
    except (CheckpointError, FileNotFoundError, KeyError, ValueError, NonFiniteError,
            UnsupportedOpError, ImportError) as e:  # bad input: one clear line
        msg = e.args[0] if isinstance(e, KeyError) and e.args else e
        print(f"error: {type(e).__name__}: {msg}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(cli())
