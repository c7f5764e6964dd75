"""Train or fine-tune a graph hypernetwork (Hugging Face Accelerate).

    python train.py --dataset fashion-mnist --archs train --steps 2000 --out-dir runs/fmnist
    accelerate launch --multi_gpu --num_processes 4 train.py ...        # DDP
    python train.py --out-dir runs/fmnist --resume latest                # continue exactly (settings from the run)
    python train.py --init-from ghn/pretrained/ghn-fmnist.safetensors --dataset cifar10 --data-root ~/cifar

A resumed run takes its settings and hypernetwork config from the checkpoint; flags given again must agree with
them (``--steps``, ``--max-minutes``, ``--workers``, logging and checkpoint intervals may change, and
``--max-dir-ratio``, a decoding cap with no weights of its own, may be switched on: the log records it).
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import sys
from pathlib import Path

from ghn.training import TrainConfig, resume_config, train


def parse_args(argv=None) -> TrainConfig:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    defaults = TrainConfig()
    for f in dataclasses.fields(TrainConfig):
        if f.name == "ghn":
            continue
        flag = "--" + f.name.replace("_", "-")
        default = getattr(defaults, f.name)
        kw = dict(default=argparse.SUPPRESS, help=f"(default: {default})")  # SUPPRESS: we see which were given
        if isinstance(default, bool):
            p.add_argument(flag, action=argparse.BooleanOptionalAction, **kw)
        else:
            p.add_argument(flag, type=type(default) if default is not None else str, **kw)
    from ghn.hypernet import add_config_arguments, pop_config_overrides

    add_config_arguments(p)
    given = vars(p.parse_args(argv))
    ghn_over = pop_config_overrides(given)
    if given.get("resume"):
        from ghn import rundir

        ck = given["resume"]
        if ck == "latest":
            found = rundir.latest_checkpoint(Path(given.get("out_dir", defaults.out_dir)))
            if found is None:
                raise FileNotFoundError(f"--resume latest: no complete checkpoint in "
                                        f"{given.get('out_dir', defaults.out_dir)}")
            ck = str(found)
        cfg = resume_config(ck, **{k: v for k, v in given.items() if k != "resume"})
        return dataclasses.replace(cfg, ghn=ghn_over)
    return TrainConfig(**given, ghn=ghn_over)


def main(argv=None) -> int:
    record = train(parse_args(argv))
    print(json.dumps(record))
    return 0


def cli(argv=None) -> int:
    """``main`` with bad input reported in one line (exit code 2), like predict.py."""
    from ghn.hypernet import CheckpointError
    from ghn.rundir import RunDirError

    try:
        return main(argv)
    except (CheckpointError, RunDirError, FileNotFoundError, KeyError, ValueError, FloatingPointError) as e:
        print(f"error: {type(e).__name__}: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(cli())
