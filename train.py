#!/usr/bin/env python
"""Train or fine-tune a graph hypernetwork (Hugging Face Accelerate).

    python train.py --dataset fashion-mnist --archs train --steps 2000 --out-dir runs/fmnist
    accelerate launch --multi_gpu --num_processes 4 train.py ...        # DDP
    python train.py --out-dir runs/fmnist --resume latest                # continue exactly (settings from the run)
    python train.py --init-from ghn/pretrained/ghn-fmnist.safetensors --dataset cifar10 --data-root ~/cifar

A resumed run takes its settings and hypernetwork config from the checkpoint; flags given again must agree with
them (``--steps``, ``--max-minutes``, ``--workers``, logging and checkpoint intervals may change).
"""
import sys

from ghn.cli.train import cli, main, parse_args  # noqa: F401  (the code lives in the package: also `ghn-train`)

if __name__ == "__main__":
    sys.exit(cli())
