#!/usr/bin/env python
"""Train or fine-tune a graph hypernetwork (Hugging Face Accelerate).

    python train.py --dataset fashion-mnist --archs train --steps 2000 --out-dir runs/fmnist
    accelerate launch --multi_gpu --num_processes 4 train.py ...        # DDP
    python train.py ... --resume runs/fmnist/ckpt-0001000                # continue exactly
    python train.py --init-from ghn/pretrained/ghn-fmnist.safetensors --dataset cifar10 --data-root ~/cifar
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import sys

from ghn.training import TrainConfig, train


def parse_args(argv=None) -> TrainConfig:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    defaults = TrainConfig()
    for f in dataclasses.fields(TrainConfig):
        if f.name == "ghn":
            continue
        flag = "--" + f.name.replace("_", "-")
        default = getattr(defaults, f.name)
        if isinstance(default, bool):
            p.add_argument(flag, action=argparse.BooleanOptionalAction, default=default)
        else:
            typ = type(default) if default is not None else str
            p.add_argument(flag, type=typ, default=default)
    from ghn.hypernet import add_config_arguments, pop_config_overrides

    add_config_arguments(p)
    a = vars(p.parse_args(argv))
    ghn_over = pop_config_overrides(a)
    return TrainConfig(**a, ghn=ghn_over)


def main(argv=None) -> int:
    cfg = parse_args(argv)
    if cfg.resume and cfg.init_from:
        sys.exit("--resume and --init-from are exclusive: resume continues a run, init-from starts a new one")
    record = train(cfg)
    print(json.dumps(record))
    return 0


if __name__ == "__main__":
    sys.exit(main())
